"""Deadlines that bound what one connection or one upstream answer can hold: the request head
must be complete within ZOWY_HEADER_TIMEOUT however slowly it trickles in, and a non-stream
upstream body longer than ZOWY_MAX_UPSTREAM_BODY_BYTES ends in a 502 with the worker's memory
unchanged."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tests import support

HEADER_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, models_path):
    gw = support.start_gateway(
        tmp_path_factory.mktemp("deadlines"), models_path,
        ZOWY_HEADER_TIMEOUT=str(HEADER_TIMEOUT), ZOWY_MAX_UPSTREAM_BODY_BYTES=str(1024 * 1024),
    )
    yield gw
    gw.stop()


async def _slow_client(port: int, gap: float, silent: bool) -> tuple[float, bytes]:
    """Send a request head a few bytes at a time (or nothing); when the server closed, and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + b"".join(
        f"X-Slow-{i}: {'a' * 8}\r\n".encode() for i in range(200))
    received = b""
    try:
        async with asyncio.timeout(HEADER_TIMEOUT * 6):
            for i in range(0, len(head), 3):
                if not silent:
                    writer.write(head[i:i + 3])
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), gap)
                except TimeoutError:
                    continue
                received += chunk
                if not chunk:
                    break
                while chunk := await reader.read(4096):
                    received += chunk
                break
    except (TimeoutError, OSError):
        pass
    finally:
        writer.transport.abort()
    return time.monotonic() - started, received


def test_slow_request_heads_are_cut_at_the_header_deadline(gateway):
    customer = support.new_customer(gateway)
    port = gateway.process.port

    async def run():
        slow = [_slow_client(port, 0.25, silent=i % 5 == 0) for i in range(60)]
        tasks = [asyncio.create_task(c) for c in slow]
        await asyncio.sleep(0.5)
        served = await support.raw_chat(port, customer.key, support.chat_body("meanwhile"))
        return served, await asyncio.gather(*tasks)

    (status, _), results = asyncio.run(run())
    assert status == 200  # the slow connections do not block anyone
    held = sorted(t for t, _ in results)
    assert held[-1] < HEADER_TIMEOUT + 1.5, held[-5:]  # every one closed by the server, none by the client
    assert held[0] >= HEADER_TIMEOUT * 0.8, held[:5]
    answered = [raw for _, raw in results if raw]
    assert answered and all(raw.startswith(b"HTTP/1.1 408") for raw in answered)
    assert json.loads(support.response_body(answered[0]))["error"]["code"] == "request_timeout"


def test_each_request_on_a_kept_alive_connection_gets_its_own_head_deadline(gateway):
    async def run():
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.process.port)
        try:
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                response = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
                assert response.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(HEADER_TIMEOUT + 0.5)  # idle between requests is keep-alive, not head time
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
            started = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT * 4)
            return time.monotonic() - started, rest
        finally:
            writer.transport.abort()

    took, rest = asyncio.run(run())
    assert rest.startswith(b"HTTP/1.1 408") and HEADER_TIMEOUT - 0.1 <= took < HEADER_TIMEOUT + 1.0


def test_an_upstream_body_that_never_ends_is_a_502_in_bounded_memory(gateway, upstreams):
    customer = support.new_customer(gateway)
    worker = support.children(gateway.process.popen.pid)[0]
    rss_before = support.rss_bytes(worker)
    marker = f"flood-{uuid.uuid4().hex[:8]}"

    async def run():
        return await asyncio.gather(*(
            support.raw_chat(gateway.process.port, customer.key, support.chat_body(f"{marker} {i} [[fake:hang=flood]]"))
            for i in range(8)
        ))

    started = time.monotonic()
    results = asyncio.run(run())
    assert time.monotonic() - started < 10
    for status, raw in results:
        assert status == 502 and json.loads(support.response_body(raw))["error"]["code"] == "upstream_error"
    grown = support.rss_bytes(worker) - rss_before
    assert grown < 32 * 1024 * 1024, f"the worker grew by {grown / 2**20:.1f} MiB"
    ids = support.upstream_request_ids(upstreams["openai"], marker)
    entries = support.wait_until(
        lambda: [e for e in (support.run_store(gateway, lambda s, i=i: s.ledger_entry(i)) for i in ids) if e], timeout=10)
    assert len(ids) == 8 and len(entries) == 8 and {e.outcome for e in entries} == {"upstream_error"}
