"""A caller who hangs up while its request waits for the store (admission: key, rate window,
balance) stops that request on both stores: no upstream call, nothing billed, no task left behind.

The hang-ups are made to arrive in the same event-loop turn as the store's answers (the worker is
frozen while both arrive), the moment a cancellation can be lost: asyncio.wait_for on Python 3.11
returns the result of an inner call that completed in the turn its caller was cancelled
(python/cpython#86296), and store drivers wait that way."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid

import pytest

from tests import support


class Stall:
    """Makes the gateway's store stop answering for a while, without an error: SQLite by holding the
    rate-window file's write lock, MongoDB by stopping the server process (SIGSTOP)."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.env: dict[str, str] = {"ZOWY_LIMITER_TIMEOUT": "20", "ZOWY_STORE_TIMEOUT": "20"}
        self._lock: sqlite3.Connection | None = None
        if kind == "mongo":
            self.nx = support.NxServer(tmp_path / "nx").start()
            self.env |= {"ZOWY_MONGO_URL": self.nx.url, "ZOWY_MONGO_DB": "zowy"}

    def begin(self, gateway: support.Gateway) -> None:
        if self.kind == "mongo":
            os.kill(self.nx.proc.pid, signal.SIGSTOP)
        else:
            path = gateway.settings().sqlite_file
            self._lock = sqlite3.connect(path.with_name(path.stem + "-limits" + path.suffix), timeout=5)
            self._lock.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self.kind == "mongo":
            os.kill(self.nx.proc.pid, signal.SIGCONT)
        elif self._lock is not None:
            self._lock.rollback()
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        self.end()
        if self.kind == "mongo":
            self.nx.stop()


@pytest.fixture(params=["sqlite", "mongo"])
def stall(request, tmp_path):
    stall = Stall(request.param, tmp_path)
    yield stall
    stall.close()


def test_hang_up_during_admission_stops_the_request(tmp_path, models_path, upstreams, stall):
    gateway = support.start_gateway(tmp_path / "gw", models_path, **stall.env)
    try:
        customer = support.new_customer(gateway)
        port = gateway.process.port
        status, _ = asyncio.run(support.raw_chat(port, customer.key, support.chat_body("warm up")))
        assert status == 200
        time.sleep(0.6)  # the key and balance caches expire: admission asks the store again
        marker = f"gone-{uuid.uuid4().hex[:8]}"
        worker = support.children(gateway.process.popen.pid)[0]

        async def hang_ups():
            connections = []
            for i in range(48):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(support.raw_request(customer.key, support.chat_body(f"{marker} {i}", stream=i % 2 == 0)))
                await writer.drain()
                connections.append(writer)
            await asyncio.sleep(0.5)  # every request waits for the store
            os.kill(worker, signal.SIGSTOP)
            stall.end()  # the store answers ...
            await asyncio.sleep(0.5)
            for writer in connections:  # ... and every caller hangs up, before the worker runs again
                writer.transport.abort()
            await asyncio.sleep(0.1)
            os.kill(worker, signal.SIGCONT)

        stall.begin(gateway)
        try:
            asyncio.run(hang_ups())
        finally:
            stall.end()
            os.kill(worker, signal.SIGCONT)
        time.sleep(2.0)  # had any request gone on, its upstream call would be made by now
        assert support.upstream_request_ids(upstreams["openai"], marker) == set()
        assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 1
        status, _ = asyncio.run(support.raw_chat(port, customer.key, support.chat_body("still serving")))
        assert status == 200
    finally:
        gateway.stop()
    log = gateway.process.log()
    assert "Task was destroyed" not in log and "unhandled error" not in log and "did not end" not in log
