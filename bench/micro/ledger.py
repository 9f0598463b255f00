"""``python -m bench.micro.ledger``: what a ledger batch costs per entry on the SQLite store, and how
long it keeps the event loop from serving requests, written on the loop or on the store's writer
thread, for several batch sizes. ``--ids``: what a batch costs in a ledger already holding many
entries, with the gateway's request ids (in time order) against ids at random.

Entries as a request leaves them (one account, a package, a lease to settle) are recorded batch after
batch into a fresh store; a ticker task on the same loop wakes every millisecond meanwhile, and the
time it found the loop busy beyond its own wake-up is what the batches took from requests.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from app.core.ids import new_request_id
from app.store.contracts.ledger import LedgerEntry, Package
from app.store.sqlite import SqliteStore

TICK = 0.001


def _entry(n: int, now: float) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"req{n:021d}", account_id="acct_bench", key_id="key_bench", model="zowy-1", target="gemini-flash",
        prompt_tokens=102, completion_tokens=8, total_tokens=110, estimated=False, stream=False, outcome="ok",
        status=200, latency_ms=1.5, user=None, created_at=now, lease_id="lease_bench", reserved=300, api="chat",
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _store(tmp: str) -> SqliteStore:
    """A fresh store with the account and package the entries debit."""
    store = SqliteStore(Path(tmp) / "zowy.db", timeout=5)
    await store.init()
    now = time.time()
    await store.create_account("acct_bench", "bench", now)
    await store.grant_package(Package("pkg_bench", "acct_bench", "business", 10**15, 0, now, now + 86400))
    return store


async def _run(batch: int, on_loop: bool, entries: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = await _store(tmp)
        now = time.time()
        connection = store._hot if on_loop else store._ledger

        async def record(batch_entries: list[LedgerEntry]) -> None:
            await connection.run(lambda db: store._record(db, batch_entries))

        await record([_entry(n, now) for n in range(batch)])  # warm: the file, the statements
        blocked = [0.0]
        stop = asyncio.Event()

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                due = loop.time() + TICK
                await asyncio.sleep(TICK)
                blocked[0] += max(0.0, loop.time() - due - TICK)  # beyond a tick of the loop's own slack

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        blocked[0] = 0.0
        cpu0, wall0 = _cpu(), time.perf_counter()
        written = batch
        while written < entries + batch:
            await record([_entry(n, now) for n in range(written, written + batch)])
            written += batch
            await asyncio.sleep(0)
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
        stop.set()
        await tick
        await store.close()
    count = written - batch
    return {"batch": batch, "where": "loop" if on_loop else "thread", "cpu_us_per_entry": round(cpu / count * 1e6, 1),
            "wall_us_per_entry": round(wall / count * 1e6, 1),
            "loop_blocked_ms_per_batch": round(blocked[0] / (count / batch) * 1000, 2)}


def run(batches: tuple[int, ...] = (16, 64, 256, 1024), entries: int = 8192) -> list[dict]:
    out = []
    for batch in batches:
        for on_loop in (True, False):
            out.append(asyncio.run(_run(batch, on_loop, max(entries, 4 * batch))))
    return out


def _random_id() -> str:
    return secrets.token_hex(12)


async def _ids_case(make_id, held: int, batches: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = await _store(tmp)
        for _ in range(held // 1000):
            await store.record([replace(_entry(0, time.time()), request_id=make_id()) for _ in range(1000)])
        cpu0, wall0 = _cpu(), time.perf_counter()
        for _ in range(batches):
            await store.record([replace(_entry(0, time.time()), request_id=make_id()) for _ in range(batch)])
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
        await store.close()
    count = batches * batch
    return {"held": held, "cpu_us_per_entry": round(cpu / count * 1e6, 1), "wall_us_per_entry": round(wall / count * 1e6, 1)}


def ids(held: tuple[int, ...] = (0, 100_000, 300_000), batches: int = 40, batch: int = 300) -> list[dict]:
    """Batches of ``batch`` entries into ledgers holding ``held`` entries, by the kind of request id."""
    out = []
    for kind, make_id in (("in time order", new_request_id), ("random", _random_id)):
        for n in held:
            out.append({"ids": kind, **asyncio.run(_ids_case(make_id, n, batches, batch))})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.ledger")
    p.add_argument("--entries", type=int, default=8192, help="entries written per case")
    p.add_argument("--ids", action="store_true", help="request ids in time order against random ids")
    args = p.parse_args(argv)
    if args.ids:
        print("| request ids | entries held | CPU µs / entry | wall µs / entry |")
        print("|---|---:|---:|---:|")
        for r in ids():
            print(f"| {r['ids']} | {r['held']:,} | {r['cpu_us_per_entry']} | {r['wall_us_per_entry']} |")
        return 0
    print("| batch | written on | CPU µs / entry | wall µs / entry | loop blocked ms / batch |")
    print("|---:|---|---:|---:|---:|")
    for r in run(entries=args.entries):
        print(f"| {r['batch']} | {r['where']} | {r['cpu_us_per_entry']} | {r['wall_us_per_entry']} "
              f"| {r['loop_blocked_ms_per_batch']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
