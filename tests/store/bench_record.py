"""Cost of ``record()`` per entry, batches of 200, on SQLite and nx-27017 (and MongoDB with TEST_MONGO_URL).

Run: ``python tests/store/bench_record.py [runs]``. Not collected by pytest.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from storekit import T, entry, package  # noqa: E402
from tests.support import NxServer  # noqa: E402

from app.store import Store  # noqa: E402
from app.store.mongo import MongoStore  # noqa: E402
from app.store.sqlite import SqliteStore  # noqa: E402

BATCH = 200


async def bench(store: Store, accounts: int, runs: int) -> float:
    await store.init()
    for a in range(accounts):
        await store.create_account(f"acc_{a}", f"name-{a}", T)
        await store.grant_package(package(f"pkg_{a}", f"acc_{a}", 10**9, T))
    per_entry = []
    for run in range(runs):
        batch = [entry(f"r{run}-{i}", f"acc_{i % accounts}", 100 + i, T + run + i / 1000) for i in range(BATCH)]
        started = time.perf_counter()
        assert await store.record(batch) == BATCH
        per_entry.append((time.perf_counter() - started) / BATCH * 1e6)
    await store.close()
    return statistics.median(per_entry)


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NxServer(Path(tmp) / "nx")
        server.start()
        try:
            backends = {
                "sqlite": lambda: SqliteStore(Path(tmp) / f"{uuid.uuid4().hex}.db"),
                "mongo-nx": lambda: MongoStore(server.url, f"bench_{uuid.uuid4().hex[:8]}", timeout=10),
            }
            if os.environ.get("TEST_MONGO_URL"):
                backends["mongo-real"] = lambda: MongoStore(os.environ["TEST_MONGO_URL"], f"bench_{uuid.uuid4().hex[:8]}", timeout=10)
            for name, make in backends.items():
                for accounts in (1, 20, 200):
                    us = await bench(make(), accounts, runs)
                    print(f"{name:10} batch={BATCH} accounts={accounts:3}  {us:7.1f} us/entry  ({us * BATCH / 1000:.1f} ms/batch)")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
