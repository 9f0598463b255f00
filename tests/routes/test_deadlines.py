"""Deadlines that bound what one connection or one upstream answer can hold: the request head
must be complete within ZOWY_HEADER_TIMEOUT however slowly it trickles in, the body within
ZOWY_BODY_TIMEOUT after it on every route, and a non-stream upstream body longer than
ZOWY_MAX_UPSTREAM_BODY_BYTES ends in a 502 with the worker's memory unchanged."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tests import support

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, models_path):
    gw = support.start_gateway(
        tmp_path_factory.mktemp("deadlines"), models_path,
        ZOWY_HEADER_TIMEOUT=str(HEADER_TIMEOUT), ZOWY_BODY_TIMEOUT=str(BODY_TIMEOUT),
        ZOWY_MAX_UPSTREAM_BODY_BYTES=str(1024 * 1024), ZOWY_TOPUP_SECRET="topup-secret-for-tests-0123456789",
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


async def _slow_body(port: int, path: str, headers: dict[str, str], gap: float, chunked: bool = False,
                     pieces: int = 200) -> tuple[float, bytes]:
    """Send a complete head, then the body a byte every ``gap`` seconds (``pieces`` bytes of a longer
    declared body); when the server closed the connection, and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": "1000"}
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {"Content-Type": "application/json", **headers, **framing}.items())
    writer.write(head.encode() + b"\r\n")

    async def trickle() -> None:
        for i in range(pieces):
            writer.write(b"1\r\n{\r\n" if chunked else b"{ "[i % 2:i % 2 + 1])
            await asyncio.sleep(gap)

    feeder = asyncio.create_task(trickle())
    received = b""
    try:
        async with asyncio.timeout(BODY_TIMEOUT * 5):
            while chunk := await reader.read(4096):
                received += chunk
    except (TimeoutError, OSError):
        pass
    finally:
        feeder.cancel()
        writer.transport.abort()
    return time.monotonic() - started, received


def test_slow_bodies_meet_the_body_deadline_on_every_route(gateway):
    customer = support.new_customer(gateway)
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    timeout = (408, "request_timeout")
    routes = [
        ("/api/v1/auth/sessions", {}, False, timeout),
        ("/api/v1/auth/invite/accept", {}, False, timeout),
        ("/webhooks/topup", {"X-Zowy-Timestamp": str(int(time.time())), "X-Zowy-Signature": "v1=00"}, False, timeout),
        ("/console/api/operator/session", {}, False, timeout),
        ("/admin/v1/accounts", admin, False, timeout),
        ("/api/v1/chat/completions", {"Authorization": f"Bearer {customer.key}"}, False, timeout),
        ("/api/v1/auth/sessions", {}, True, timeout),
        ("/admin/v1/accounts", admin, True, timeout),
        # Without the admin token: cut at the same deadline, where the token check answers first.
        ("/admin/v1/accounts", {}, False, (401, "invalid_admin_token")),
    ]

    async def run():
        return await asyncio.gather(*(_slow_body(gateway.process.port, path, headers, 0.3, chunked)
                                      for path, headers, chunked, _ in routes))

    results = asyncio.run(run())
    for (path, _, chunked, (status, code)), (took, raw) in zip(routes, results):
        where = f"{path} (chunked: {chunked}) after {took:.1f} s: {raw[:60]!r}"
        assert BODY_TIMEOUT - 0.2 <= took < BODY_TIMEOUT + 1.5, where
        assert raw.startswith(f"HTTP/1.1 {status}".encode()) and b"connection: close" in raw.lower(), where
        assert json.loads(support.response_body(raw))["error"]["code"] == code, where


def test_slow_bodies_of_messages_get_anthropics_envelope(gateway):
    customer = support.new_customer(gateway)
    routes = ["/v1/messages", "/v1/messages/count_tokens", "/api/v1/messages?beta=true"]

    async def run():
        return await asyncio.gather(*(_slow_body(gateway.process.port, path, {"x-api-key": customer.key}, 0.3)
                                      for path in routes))

    for path, (took, raw) in zip(routes, asyncio.run(run())):
        where = f"{path} after {took:.1f} s: {raw[:60]!r}"
        assert BODY_TIMEOUT - 0.2 <= took < BODY_TIMEOUT + 1.5, where
        assert raw.startswith(b"HTTP/1.1 408") and b"connection: close" in raw.lower(), where
        body = json.loads(support.response_body(raw))
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", where
        assert body["error"]["message"] == "The request body was not received in time.", where


def test_a_slow_body_after_an_early_answer_is_cut_at_the_deadline(gateway):
    # Answered at once (no such route), then the body the server reads only to discard it.
    took, raw = asyncio.run(_slow_body(gateway.process.port, "/api/v1/no-such-route", {}, 0.3))
    assert raw.startswith(b"HTTP/1.1 404") and took < BODY_TIMEOUT + 1.5, (took, raw[:60])


def test_a_body_that_arrives_in_time_is_served(gateway):
    async def run():
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.process.port)
        body = json.dumps({"email": "nobody@example.com", "password": "not the password"}).encode()
        writer.write(b"POST /api/v1/auth/sessions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        try:
            for i in range(0, len(body), 12):  # slowly, but complete well within the deadline
                writer.write(body[i:i + 12])
                await asyncio.sleep(BODY_TIMEOUT / 10)
            return await asyncio.wait_for(reader.readuntil(b"}}"), 10)
        finally:
            writer.transport.abort()

    raw = asyncio.run(run())
    assert raw.startswith(b"HTTP/1.1 401"), raw[:80]


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
        lambda: (e := [e for e in (support.run_store(gateway, lambda s, i=i: s.ledger_entry(i)) for i in ids) if e])
        and len(e) == len(ids) and e, timeout=10)
    assert len(ids) == 8 and len(entries) == 8 and {e.outcome for e in entries} == {"upstream_error"}
