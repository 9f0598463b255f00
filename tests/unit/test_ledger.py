"""The ledger writer in process on a real SQLite store: batches, the spool while the store is down,
replay exactly once when it is back (and by the next process), torn spool lines."""
from __future__ import annotations

import time

import pytest

from app.billing.ledger_writer import LedgerWriter
from app.billing.spool import Spool
from app.core.errors import StoreUnavailable
from app.store.contracts.ledger import LedgerEntry, Package
from app.store.sqlite import SqliteStore


def entry(n: int, tokens: int = 10) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"r{n}", account_id="acct_1", key_id="key_1", model="zowy-1", target="t",
        prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, total_tokens=tokens, estimated=False,
        stream=False, outcome="ok", status=200, latency_ms=1.0, user=None, created_at=time.time(),
    )


class Flaky:
    """A store that is down while ``down`` is set, and otherwise the real one."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.down = False

    async def record(self, entries):
        if self.down:
            raise StoreUnavailable()
        return await self.store.record(entries)

    async def ping(self):
        if self.down:
            raise StoreUnavailable()

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "zowy.db", timeout=1)
    await store.init()
    now = time.time()
    await store.create_account("acct_1", "acme", now)
    await store.grant_package(Package("pkg_1", "acct_1", "pro", 1000, 0, now, now + 86400))
    yield store
    await store.close()


async def used(store) -> int:
    return (await store.packages("acct_1"))[0].used


async def test_entries_are_written_in_batches_and_debited_once(store, tmp_path):
    meter = LedgerWriter(store, tmp_path / "spool", batch=3, interval=10)
    for n in range(7):
        meter.record(entry(n))
    await meter.flush()
    assert await store.ledger_count() == 7 and await used(store) == 70
    meter.record(entry(3))  # the same request again: no second entry, no second debit
    await meter.flush()
    assert await store.ledger_count() == 7 and await used(store) == 70
    await meter.close()


async def test_an_outage_spools_then_replays_exactly_once(store, tmp_path):
    flaky = Flaky(store)
    meter = LedgerWriter(flaky, tmp_path / "spool", batch=2, interval=10)
    flaky.down = True
    for n in range(5):
        meter.record(entry(n))
    await meter.flush()
    assert await store.ledger_count() == 0
    assert meter.spool.size() > 0 and meter.depth == 0
    meter.record(entry(5))
    await meter.flush()  # still down: straight to the spool
    flaky.down = False
    await meter.flush()
    assert await store.ledger_count() == 6 and await used(store) == 60
    assert meter.spool.size() == 0
    await meter.close()


class Slow(Flaky):
    """The real store, each write held until ``go`` is set; counts the writes."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        import asyncio

        self.go = asyncio.Event()
        self.writing = asyncio.Event()
        self.writes = 0

    async def record(self, entries):
        self.writes += 1
        self.writing.set()
        await self.go.wait()
        return await self.store.record(entries)


async def test_entries_handed_over_during_a_write_wait_for_the_next_flush(store, tmp_path):
    """A steady trickle of requests makes one store write per flush, not one every few requests."""
    import asyncio

    slow = Slow(store)
    meter = LedgerWriter(slow, tmp_path / "spool", batch=100, interval=10)
    meter.record(entry(0))
    flushing = asyncio.create_task(meter.flush())
    await slow.writing.wait()
    for n in range(1, 4):
        meter.record(entry(n))
    slow.go.set()
    await flushing
    assert slow.writes == 1 and await store.ledger_count() == 1 and meter.depth == 3
    await meter.flush()
    assert slow.writes == 2 and await store.ledger_count() == 4 and await used(store) == 40
    await meter.close()


async def test_a_flush_cancelled_mid_write_loses_nothing(store, tmp_path):
    """The batch in the store when the flush is cancelled goes to the spool; the batches after it
    stay queued, first in line: every entry is billed once."""
    import asyncio

    slow = Slow(store)
    meter = LedgerWriter(slow, tmp_path / "spool", batch=2, interval=10)
    for n in range(5):
        meter.record(entry(n))
    flushing = asyncio.create_task(meter.flush())
    await slow.writing.wait()
    meter.record(entry(5))
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert meter.spool.size() > 0 and meter.depth == 4
    slow.go.set()
    await meter.spool.replay(store, 100)
    await meter.flush()
    assert await store.ledger_count() == 6 and await used(store) == 60
    await meter.close()


async def test_the_next_process_replays_what_a_stopped_one_spooled(store, tmp_path):
    spool = Spool(tmp_path / "spool", "gone-1")
    spool.append([entry(1), entry(2)])
    spool.close()
    # A torn last write: never acknowledged, so never billed.
    path = next((tmp_path / "spool").glob("*.spool"))
    with open(path, "ab") as f:
        f.write(b'{"request_id": "r9", "acc')
    meter = LedgerWriter(store, tmp_path / "spool", interval=10)
    await meter.start()
    assert await store.ledger_count() == 2 and await store.ledger_entry("r9") is None
    assert not path.exists()
    await meter.close()


async def test_a_spool_file_held_by_a_live_process_is_left_alone(store, tmp_path):
    live = Spool(tmp_path / "spool", "live-1")
    live.append([entry(1)])  # the file stays locked while ``live`` is open
    other = Spool(tmp_path / "spool", "other-1")
    assert await other.replay(store, 100) == 0
    assert await live.replay(store, 100) == 1
    live.close()


async def test_a_batch_is_written_off_the_event_loop_which_serves_meanwhile(store, monkeypatch):
    """The SQLite store writes a ledger batch on a thread of its own: the loop keeps running while
    the batch is in SQLite."""
    import asyncio
    import threading

    real = SqliteStore._record
    seen = {}

    def record(self, db, entries):
        seen["thread"] = threading.get_ident()
        seen["loop_ran"] = ticks[0]
        time.sleep(0.05)  # a batch that takes a while (a checkpoint, a busy file)
        seen["loop_ran_meanwhile"] = ticks[0] - seen["loop_ran"]
        return real(self, db, entries)

    ticks = [0]

    async def tick():
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.001)

    monkeypatch.setattr(SqliteStore, "_record", record)
    ticker = asyncio.create_task(tick())
    try:
        assert await store.record([entry(1), entry(2)]) == 2
    finally:
        ticker.cancel()
    assert seen["thread"] != threading.get_ident() and seen["loop_ran_meanwhile"] > 5
    assert await used(store) == 20
