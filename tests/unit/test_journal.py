"""The journal on its own: started and settled lines, segments that rotate and go away once settled,
and what recovery bills of a dead process's records (here: a journal whose file lock was released)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from app.billing import journal
from app.billing.journal import Journal
from app.store.sqlite import SqliteStore
from tests.support import ROOT


def start(j: Journal, rid: str, prompt_bytes: int = 400) -> None:
    j.started(rid, "acct_1", "key_1", "zowy-1", "gemini-flash", True, prompt_bytes, "end-user")


def test_settled_requests_leave_no_file(tmp_path):
    j = Journal(tmp_path, "1-aa", segment_bytes=300)
    for i in range(10):
        start(j, f"r{i}")
    assert j.pending == 10 and len(list(tmp_path.glob("*.journal"))) > 1  # rotated at 300 bytes
    assert journal.census(tmp_path) == journal.Census(in_flight=10, unrecovered=0)
    j.settle([f"r{i}" for i in range(9)])
    assert j.pending == 1 and journal.census(tmp_path).in_flight == 1
    assert len(list(tmp_path.glob("*.journal"))) == 1  # older segments, fully settled, are gone
    j.settle(["r9", "unknown"])
    j.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.processes  # a real process that dies
async def test_a_dead_process_s_unsettled_requests_are_billed_once(tmp_path):
    # A real process starts three requests, settles one and dies without closing its journal.
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from app.billing.journal import Journal
        j = Journal(Path({str(tmp_path / 'journal')!r}), "4242-dead")
        for rid, size in (("a", 400), ("b", 4000), ("c", 40)):
            j.started(rid, "acct_1", "key_1", "zowy-1", "gemini-flash", rid == "b", size, None)
        j.settle(["c"])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    assert journal.census(tmp_path / "journal") == journal.Census(in_flight=0, unrecovered=2)

    store = SqliteStore(tmp_path / "zowy.db")
    await store.init()
    try:
        # Its spool is replayed first: while one is left, the journal waits.
        (tmp_path / "spool").mkdir()
        (tmp_path / "spool" / "4242-dead.spool").write_bytes(b"")
        assert await journal.recover(tmp_path / "journal", store, tmp_path / "spool") == 0
        os.unlink(tmp_path / "spool" / "4242-dead.spool")

        assert await journal.recover(tmp_path / "journal", store, tmp_path / "spool") == 2
        assert list((tmp_path / "journal").iterdir()) == []
        a, b = await store.ledger_entry("a"), await store.ledger_entry("b")
        assert (a.outcome, a.status, a.estimated, a.prompt_tokens, a.completion_tokens) == ("worker_lost", 502, True, 100, 0)
        assert b.total_tokens == 1000 and b.stream and await store.ledger_entry("c") is None
        assert await store.ledger_count(outcome="worker_lost") == 2
        # Billing again (another worker racing, a crash after the write) adds nothing.
        old = journal._lost_entry(["a", "acct_1", "key_1", "zowy-1", "t", False, 400, None, 1.0])
        assert old.api == "chat"  # a started record of nine fields, as written before the API was kept
        again = await store.record([old])
        assert again == 0
    finally:
        await store.close()


def test_a_lost_request_is_billed_to_the_api_it_came_through(tmp_path):
    j = journal.Journal(tmp_path, "4243-test")
    j.started("r1", "acct_1", "key_1", "zowy-1", "gemini-flash", True, 300, None, "messages")
    (record,) = journal._unsettled(next(tmp_path.iterdir())).values()
    lost = journal._lost_entry(record)
    assert (lost.request_id, lost.api, lost.outcome, lost.prompt_tokens) == ("r1", "messages", "worker_lost", 75)
    j.close()


async def test_a_live_process_s_journal_is_left_alone(tmp_path):
    j = Journal(tmp_path / "journal", "1-live")
    start(j, "r1")
    store = SqliteStore(tmp_path / "zowy.db")
    await store.init()
    try:
        assert await journal.recover(tmp_path / "journal", store, tmp_path / "spool") == 0
        assert await store.ledger_count() == 0
        assert journal.census(tmp_path / "journal") == journal.Census(in_flight=1, unrecovered=0)
    finally:
        await store.close()
        j.settle(["r1"])
        j.close()
