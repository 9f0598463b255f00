"""Exactly-once metering under client disconnects and store outages: every request that reached the
upstream has exactly one ledger entry, and packages agree with the ledger afterwards."""
from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
import urllib.request
import uuid

import pytest

from tests import support


def upstream_count(upstream: support.Process, marker: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_fake/requests?n=200") as r:
        return sum(1 for req in json.loads(r.read()) if marker in json.dumps(req.get("body")))


async def _stream_and_drop(port: int, key: str, content: str, keep_bytes: int | None, path: str = "/api/v1/chat/completions",
                           body: dict | None = None) -> str | None:
    """One streamed request over a raw connection, closed after ``keep_bytes`` (None: read it all);
    a chat request unless ``body`` (to ``path``) says otherwise."""
    body = body or {"model": "zowy-1-pro", "stream": True, "messages": [{"role": "user", "content": content}]}
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\n".encode() + b"Host: gw\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    await writer.drain()
    received = b""
    try:
        while keep_bytes is None or len(received) < keep_bytes:
            chunk = await asyncio.wait_for(reader.read(4096), 20)
            if not chunk:
                break
            received += chunk
    finally:
        writer.transport.abort()
    if b"x-request-id: " in received:
        return received.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    return None


def drive(port: int, key: str, content: str, drops: list[int | None]) -> list[str | None]:
    async def run():
        return await asyncio.gather(*(_stream_and_drop(port, key, content, d) for d in drops))

    return asyncio.run(run())


def settle(gateway: support.Gateway, account_id: str, expected: int) -> None:
    try:
        support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_count(account_id)) == expected, timeout=20)
    except AssertionError:
        found = support.run_store(gateway, lambda s: s.ledger_count(account_id))
        raise AssertionError(f"ledger has {found} entries, expected {expected}") from None
    time.sleep(0.3)
    assert support.run_store(gateway, lambda s: s.ledger_count(account_id)) == expected


def test_clients_dropping_streams_at_random_points(gateway, upstreams):
    customer = support.new_customer(gateway)
    marker = f"drop-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    drops = [rng.choice([0, 50, 200, 400, 700, 1200, 2500, 5000, None]) for _ in range(40)]
    ids = drive(gateway.process.port, customer.key, f"{marker} [[fake:chunks=40,delay=0.01]]", drops)
    time.sleep(0.5)
    reached = upstream_count(upstreams["openai"], marker)
    assert reached >= len([d for d in drops if d is None or d > 700])
    settle(gateway, customer.account_id, reached)
    entries = [support.run_store(gateway, lambda s, i=i: s.ledger_entry(i)) for i in ids if i]
    outcomes = {e.outcome for e in entries if e}
    assert "client_disconnected" in outcomes and "ok" in outcomes
    assert support.run_store(gateway, lambda s: s.reconcile()) == []


class Outage:
    """Makes one store backend unavailable to the gateway and brings it back."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.env: dict[str, str] = {"ZOWY_STORE_TIMEOUT": "0.5"}
        self._lock: sqlite3.Connection | None = None
        if kind == "mongo":
            self.nx = support.NxServer(tmp_path / "nx").start()
            self.env |= {"ZOWY_MONGO_URL": self.nx.url, "ZOWY_MONGO_DB": "zowy"}

    def begin(self, gateway: support.Gateway) -> None:
        if self.kind == "mongo":
            self.nx.stop()
        else:
            self._lock = sqlite3.connect(gateway.settings().sqlite_file, timeout=5, check_same_thread=False)
            self._lock.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self.kind == "mongo":
            self.nx.start()
        elif self._lock is not None:
            self._lock.rollback()
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        self.end() if self._lock is not None else None
        if self.kind == "mongo":
            self.nx.stop()


@pytest.fixture(params=["sqlite", "mongo"])
def outage(request, tmp_path):
    outage = Outage(request.param, tmp_path)
    yield outage
    outage.close()


def test_store_outage_spools_and_replays_exactly_once(tmp_path, models_path, upstreams, outage):
    gateway = support.start_gateway(tmp_path / "gw", models_path, **outage.env)
    try:
        customer = support.new_customer(gateway)
        marker = f"outage-{uuid.uuid4().hex[:8]}"
        content = f"{marker} [[fake:chunks=25,delay=0.06]]"
        result: list = []
        worker = threading.Thread(target=lambda: result.extend(drive(gateway.process.port, customer.key, content, [None] * 20)))
        worker.start()
        support.wait_until(lambda: upstream_count(upstreams["openai"], marker) == 20, timeout=10)
        outage.begin(gateway)  # every stream is in flight; all of them end while the store is down
        worker.join(30)
        time.sleep(1.0)
        spool = gateway.data_dir / "spool"
        assert sum(p.stat().st_size for p in spool.glob("*.spool")) > 0, "entries were not spooled"
        outage.end()
        settle(gateway, customer.account_id, 20)
        assert support.run_store(gateway, lambda s: s.reconcile()) == []
        assert all(r for r in result)
        assert support.wait_until(lambda: sum(p.stat().st_size for p in spool.glob("*.spool")) == 0, timeout=10)

        # Stopped while the store is down: the shutdown flush spools; the next start replays it.
        marker = f"restart-{uuid.uuid4().hex[:8]}"
        content = f"{marker} [[fake:chunks=10,delay=0.05]]"
        worker = threading.Thread(target=lambda: drive(gateway.process.port, customer.key, content, [None] * 10))
        worker.start()
        support.wait_until(lambda: upstream_count(upstreams["openai"], marker) == 10, timeout=10)
        outage.begin(gateway)
        worker.join(30)
        assert gateway.stop() == 0
        assert sum(p.stat().st_size for p in spool.glob("*.spool")) > 0
        outage.end()
        gateway = support.start_gateway(tmp_path / "gw", models_path, **outage.env)
        settle(gateway, customer.account_id, 30)
        assert support.run_store(gateway, lambda s: s.reconcile()) == []
    finally:
        gateway.stop()
