"""Balance reservations on a real SQLite store: leases sized by the balance, refusals that say what
is left, settlement by the ledger, returns, expiry, and two workers sharing one balance."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from app.config import Settings
from app.errors import InsufficientQuota
from app.metering import LedgerEntry, lease_size, request_need
from app.reservations import Reservations
from app.store import Package
from app.store.sqlite import SqliteStore

SETTINGS = Settings(reserve_slice=1000, reserve_share=4, reserve_floor=500, reserve_ttl=60, reserve_idle=0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Counting:
    """The store, counting lease operations."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.leased = 0

    async def lease(self, *args, **kwargs):
        self.leased += 1
        return await self.store.lease(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "zowy.db", timeout=1)
    await store.init()
    await store.create_account("acct_1", "acme", time.time())
    yield store
    await store.close()


async def grant(store, tokens: int, expires_in: float = 86400, pid: str = "pkg_1") -> None:
    now = time.time()
    await store.grant_package(Package(pid, "acct_1", "pro", tokens, 0, now, now + expires_in))


async def held(store) -> int:
    return sum(l.tokens for l in await store.leases("acct_1") if l.expires_at > time.time())


def test_lease_size_rule():
    assert lease_size(100, 99, 1000, 4, 500) == 0
    assert lease_size(100, 400, 1000, 4, 500) == 100  # what would remain is below the floor: exact
    assert lease_size(100, 2100, 1000, 4, 500) == 100 + 500
    assert lease_size(100, 100_000, 1000, 4, 500) == 1100  # capped by the slice


def test_request_need_counts_prompt_guard_images_and_completion():
    assert request_need(3000, 0, 0, 300, 100) == 1100 + 100
    assert request_need(1_000_300, 1_000_000, 1, 0, 10, choices=2) == 100 + 1500 + 20


async def test_no_active_package_is_refused_saying_what_is_left(store):
    reservations = Reservations(store, SETTINGS)
    with pytest.raises(InsufficientQuota) as info:
        await reservations.reserve("acct_1", 10)
    assert "has 0 tokens left" in info.value.message
    await grant(store, 100, expires_in=-1, pid="pkg_old")
    with pytest.raises(InsufficientQuota):
        await reservations.reserve("acct_1", 10)


async def test_an_ample_balance_costs_one_store_operation_for_many_requests(store):
    await grant(store, 100_000)
    counting = Counting(store)
    reservations = Reservations(counting, SETTINGS)
    taken = [await reservations.reserve("acct_1", 100) for _ in range(10)]
    assert counting.leased == 1 and await held(store) == 1100
    assert sum(r.tokens for r in taken) == 1000


async def test_near_the_end_each_request_reserves_exactly_its_own(store):
    await grant(store, 1000)
    reservations = Reservations(store, SETTINGS)
    for _ in range(3):
        await reservations.reserve("acct_1", 300)
    assert await held(store) == 900
    with pytest.raises(InsufficientQuota) as info:
        await reservations.reserve("acct_1", 300)
    assert "has 100 tokens left (900 more are reserved" in info.value.message
    assert (await reservations.reserve("acct_1", 100)).tokens == 100  # what is covered still passes


async def test_the_ledger_settles_a_reservation_and_unbilled_ones_come_back(store):
    await grant(store, 1000)
    reservations = Reservations(store, SETTINGS)
    billed = await reservations.reserve("acct_1", 400)
    unbilled = await reservations.reserve("acct_1", 400)
    assert reservations.finish(unbilled, 0) == 0  # never reached an upstream: all of it comes back
    settles = reservations.finish(billed, 250)  # cost 250: the other 150 come back at once
    assert settles == 250 and reservations._leases["acct_1"].left == 550
    entry = LedgerEntry(
        request_id="r1", account_id="acct_1", key_id="k", model="zowy-1", target="t", prompt_tokens=100,
        completion_tokens=150, total_tokens=250, estimated=False, stream=False, outcome="ok", status=200,
        latency_ms=1, user=None, created_at=time.time(), lease_id=billed.lease_id, reserved=settles,
    )
    assert await held(store) == 800
    await store.record([entry])
    await store.record([entry])  # written twice: settled once
    assert (await store.packages("acct_1"))[0].used == 250
    assert await held(store) == 550  # what the worker holds in hand, no more
    await reservations.upkeep()  # idle (or low balance): handed back to the balance
    assert await held(store) == 0


async def test_two_workers_never_reserve_more_than_the_balance(store):
    await grant(store, 10_000)
    settings = replace(SETTINGS, reserve_floor=0, reserve_share=2, reserve_slice=100_000)
    a, b = Reservations(store, settings), Reservations(store, settings)
    taken = 0
    for worker in (a, b, a, b, a, b) * 10:
        try:
            taken += (await worker.reserve("acct_1", 700)).tokens
        except InsufficientQuota:
            pass
    assert taken <= 10_000 and await held(store) <= 10_000
    await a.close()
    await b.close()
    assert await held(store) == taken  # what is in flight stays reserved; the rest went back


async def test_a_dead_workers_lease_expires(store):
    await grant(store, 1000)
    clock = Clock()
    dead = Reservations(store, SETTINGS, clock)
    await dead.reserve("acct_1", 900)
    alive = Reservations(store, SETTINGS, clock)
    with pytest.raises(InsufficientQuota):
        await alive.reserve("acct_1", 900)
    clock.now += 61
    assert [l.tokens for l in await store.expired_leases(clock.now)] == [900]
    assert (await alive.reserve("acct_1", 900)).tokens == 900
    assert [l.id for l in await store.leases("acct_1")] == [alive._leases["acct_1"].id]
