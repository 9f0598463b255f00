"""``python -m bench.micro.limiter [--calls N]``: what the rate limiter adds to a request.

Times ``Admission.limit`` (one atomic window update) on the embedded SQLite store and on MongoDB over
the wire: ``ZOWY_MONGO_URL`` when set, else an nx-27017 server started for the run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from app.core.config import Settings
from app.gateway.admission import Admission
from app.store import Store
from app.store.contracts.keys import KeyRecord


async def _time(store: Store, calls: int) -> tuple[float, float]:
    await store.init()
    admission = Admission(Settings(), store)
    key = KeyRecord("key_bench", "acct_bench", "zk-", 0.0, per_minute=10**9, per_hour=10**9)
    samples = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            await admission.limit(key)
            samples.append(time.perf_counter() - started)
    finally:
        await store.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.limiter")
    p.add_argument("--calls", type=int, default=5000)
    args = p.parse_args(argv)
    from app.store.mongo import MongoStore
    from app.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        p50, p99 = asyncio.run(_time(SqliteStore(Path(tmp) / "zowy.db"), args.calls))
        print(f"sqlite   limiter: p50 {p50 * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us   ({args.calls} calls)")
        url = os.environ.get("ZOWY_MONGO_URL")
        server = None
        if not url:
            from tests.support import NxServer

            server = NxServer(Path(tmp) / "nx").start()
            url = server.url
        try:
            calls = min(args.calls, 2000)
            p50, p99 = asyncio.run(_time(MongoStore(url, "zowy_bench_limiter", timeout=2.0), calls))
            where = "nx-27017" if server else "mongodb "
            print(f"{where:9s}limiter: p50 {p50 * 1e3:8.3f} ms   p99 {p99 * 1e3:8.3f} ms   ({calls} calls)")
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
