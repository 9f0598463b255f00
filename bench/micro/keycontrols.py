"""``python -m bench.micro.keycontrols [--calls N]``: what per-key controls add to a request.

Times the key checks a chat request makes with warm per-worker caches (``Admission.key`` with the
caller's address, the model allow-list) and its reservation (``Admission.reserve`` and its end, on the
balance, and on the key's cap when it has one; ample, so served from the worker's slices) for a key
without controls and for one with an expiry, a model allow-list, an IP allow-list (the client behind a
trusted proxy) and a token cap.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from app.core.config import Settings
from app.core.digests import key_hash
from app.gateway.admission import Admission
from app.store.contracts.keys import KeyRecord
from app.store.contracts.ledger import Package
from app.store.sqlite import SqliteStore

KEYS = {
    "no controls": KeyRecord("key_plain", "acct_bench", "zk-", 0.0),
    "expiry + models + IP allow-list + token cap": KeyRecord(
        "key_controls", "acct_bench", "zk-", 0.0, expires_at=time.time() + 86400 * 365, models=("zowy-1",),
        token_cap=10**15, ips=("10.0.0.0/8", "203.0.113.0/24"),
    ),
}


async def _run(calls: int) -> dict[str, float]:
    store = SqliteStore(Path(tempfile.mkdtemp()) / "bench.db")
    await store.init()
    now = time.time()
    await store.create_account("acct_bench", "bench", now)
    await store.grant_package(Package("pkg_bench", "acct_bench", "pro", 10**15, 0, now, now + 86400))
    settings = Settings(trusted_proxies="127.0.0.1/32", key_cache_ttl=3600)
    admission = Admission(settings, store)
    out = {}
    try:
        for label, record in KEYS.items():
            await store.create_key(record, key_hash(record.id, ""))
            header = f"Bearer {record.id}"
            for _ in range(2):  # the first round warms the caches
                started = time.perf_counter()
                for _ in range(calls):
                    key = await admission.key(header, "127.0.0.1", "203.0.113.9")
                    key.allows("zowy-1")
                    reservation = await admission.reserve(key, 300, 100)
                    admission.reservations.finish(reservation, 150)
                elapsed = time.perf_counter() - started
            out[label] = elapsed / calls * 1e9
    finally:
        await store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.keycontrols")
    p.add_argument("--calls", type=int, default=100_000)
    args = p.parse_args(argv)
    for label, ns in asyncio.run(_run(args.calls)).items():
        print(f"{label:<45} {ns / 1000:6.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
