"""The upstream transports of the product (h1, and the aiohttp fallback) against a scripted HTTP/1.1 server on
127.0.0.1, plain and TLS: bodies by length, chunked and until close, keep-alive reuse and a server
that drops a kept-alive connection, timeouts, the body cap, the per-host limit, and every failure
mapped to the kind the upstream client expects."""
from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from dataclasses import dataclass, field

import pytest

from app.catalog.models import PublicModel, Target, Timeouts
from app.core.config import Settings
from app.core.errors import UpstreamError
from app.upstream.client import Attempts, UpstreamClient
from app.upstream.transport import AiohttpTransport
from app.upstream.transport_h1 import H1Transport
from bench.tls import make_certs
from tests.support import cyclic_garbage

HEADERS = {"Authorization": "Bearer k", "Content-Type": "application/json", "Accept": "application/json",
           "X-Request-Id": "req-1"}
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


@dataclass
class Seen:
    conn: int
    head: bytes
    body: bytes


@dataclass
class Server:
    """Answers each request with ``respond(server, writer, seen)``; True from it keeps the connection."""

    respond: object
    certs: object = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    most_open: int = 0

    async def start(self) -> "Server":
        context = self.certs.server_context() if self.certs else None
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"{'https' if self.certs else 'http'}://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        conn = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                seen = Seen(conn, head, body)
                self.seen.append(seen)
                if not await self.respond(self, writer, seen):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        self.server.close()


def answer(body: bytes, status: int = 200, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def ok(body: bytes = b'{"ok":true}', extra: str = ""):
    async def respond(server, writer, seen) -> bool:
        writer.write(answer(body, extra=extra))
        await writer.drain()
        return True
    return respond


def target(base_url: str, connect: float = 2.0) -> Target:
    return Target(name="t", provider="openai", base_url=base_url, model="m", api_key_env="K", api_key="k",
                  timeouts=Timeouts(connect=connect, first_byte=2.0, idle=2.0, total=10.0))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-other"))


def make(kind: str, certs=None, per_host: int = 16):
    if kind == "h1":
        return H1Transport(per_host, ssl_context=certs.client_context() if certs else None)
    return AiohttpTransport(per_host)


@pytest.fixture(params=["aiohttp", "h1"])
def kind(request) -> str:
    return request.param


async def read_all(response) -> bytes:
    parts = []
    while chunk := await response.content.readany():
        parts.append(chunk)
    return b"".join(parts)


async def exchange(transport, base_url: str, sent: list | None = None) -> tuple[int, bytes]:
    response = await transport.send(target(base_url), BODY, HEADERS, lambda: sent.append(1) if sent is not None else None)
    body = await read_all(response)
    response.release()
    return response.status, body


# ---------------------------------------------------------------- bodies and reuse


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_length_delimited_answer_and_its_connection_reused(kind, tls, certs):
    if tls and kind == "aiohttp":
        pytest.skip("aiohttp trusts only the CAs of its process start (SSL_CERT_FILE): covered by the bench's TLS runs")
    server = await Server(ok(b'{"answer":42}'), certs if tls else None).start()
    transport = make(kind, certs if tls else None)
    await transport.start()
    try:
        sent: list = []
        for _ in range(3):
            assert await exchange(transport, server.base_url, sent) == (200, b'{"answer":42}')
        assert server.connections == 1 and len(sent) == 3
        assert server.seen[0].body == BODY
    finally:
        await transport.close()
        await server.close()


async def test_h1_writes_the_gateways_headers_and_nothing_it_was_not_given():
    server = await Server(ok()).start()
    transport = make("h1")
    try:
        await exchange(transport, server.base_url)
        lines = server.seen[0].head.decode().split("\r\n")
        assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
        assert sorted(lines[1:-2]) == sorted([
            f"Host: 127.0.0.1:{server.port}", "Accept-Encoding: identity", f"Content-Length: {len(BODY)}",
            *(f"{k}: {v}" for k, v in HEADERS.items())])
    finally:
        await transport.close()
        await server.close()


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    server = await Server(ok()).start()
    transport = make("h1")
    try:
        with pytest.raises(ValueError):
            await transport.send(target(server.base_url), BODY, {**HEADERS, "X-Request-Id": "a\r\nX-Evil: 1"}, lambda: None)
        assert server.seen == []
    finally:
        await transport.close()
        await server.close()


async def test_an_h1_answer_read_and_released_is_freed_by_its_count():
    server = await Server(ok()).start()
    transport = make("h1")
    try:
        await exchange(transport, server.base_url)
        with cyclic_garbage() as found:
            for _ in range(3):
                assert await exchange(transport, server.base_url) == (200, b'{"ok":true}')
        assert "_Response" not in found and server.connections == 1
    finally:
        await transport.close()
        await server.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_chunked_answer_arrives_piece_by_piece(kind, tls, certs):
    if tls and kind == "aiohttp":
        pytest.skip("aiohttp trusts only the CAs of its process start")
    first_read = asyncio.Event()

    async def respond(server, writer, seen) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk(b"data: first\n\n"))
        await writer.drain()
        await asyncio.wait_for(first_read.wait(), 5)  # the second piece only once the first was read
        writer.write(chunk(b"data: second\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    server = await Server(respond, certs if tls else None).start()
    transport = make(kind, certs if tls else None)
    await transport.start()
    try:
        response = await transport.send(target(server.base_url), BODY, HEADERS, lambda: None)
        assert response.status == 200 and response.headers.get("content-type") == "text/event-stream"
        assert await response.content.readany() == b"data: first\n\n"
        first_read.set()
        assert await read_all(response) == b"data: second\n\n"
        response.release()
        assert await exchange(transport, server.base_url) == (200, b"data: first\n\ndata: second\n\n")
        assert server.connections == 1
    finally:
        await transport.close()
        await server.close()


async def test_a_body_delimited_by_the_close_of_the_connection(kind):
    async def respond(server, writer, seen) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":")
        await writer.drain()
        writer.write(b'"close"}')
        return False

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        assert await exchange(transport, server.base_url) == (200, b'{"until":"close"}')
        assert await exchange(transport, server.base_url) == (200, b'{"until":"close"}')
        assert server.connections == 2
    finally:
        await transport.close()
        await server.close()


async def test_connection_close_is_honoured(kind):
    server = await Server(ok(extra="Connection: close\r\n")).start()
    transport = make(kind)
    await transport.start()
    try:
        for _ in range(2):
            assert (await exchange(transport, server.base_url))[0] == 200
        assert server.connections == 2
    finally:
        await transport.close()
        await server.close()


async def test_a_gzip_answer_sent_anyway_is_inflated(kind):
    packed = gzip.compress(b'{"packed":true}')
    server = await Server(ok(packed, extra="Content-Encoding: gzip\r\n")).start()
    transport = make(kind)
    await transport.start()
    try:
        assert await exchange(transport, server.base_url) == (200, b'{"packed":true}')
    finally:
        await transport.close()
        await server.close()


# ---------------------------------------------------------------- a server that drops connections


async def test_a_kept_alive_connection_the_server_closed_is_not_reused(kind):
    async def respond(server, writer, seen) -> bool:
        writer.write(answer(b"{}"))  # no "Connection: close", then the server closes anyway
        await writer.drain()
        return False

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        sent: list = []
        assert await exchange(transport, server.base_url, sent) == (200, b"{}")
        await asyncio.sleep(0.1)  # the close reaches the client
        assert await exchange(transport, server.base_url, sent) == (200, b"{}")
        assert server.connections == 2 and len(sent) == 2 and len(server.seen) == 2
    finally:
        await transport.close()
        await server.close()


async def test_a_connection_dropped_after_the_request_was_sent_is_a_connection_failure(kind):
    async def respond(server, writer, seen) -> bool:
        return len(server.seen) == 1 and (writer.write(answer(b"{}")) or True)

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        await exchange(transport, server.base_url)
        sent: list = []
        with pytest.raises(Exception) as info:
            await exchange(transport, server.base_url, sent)  # read, then closed unanswered
        assert transport.failure(info.value) == "connection"
        assert sent == [1]  # it went out: billable, and not silently sent twice
        assert len(server.seen) == 2
    finally:
        await transport.close()
        await server.close()


# ---------------------------------------------------------------- timeouts and the cap


async def test_headers_that_never_come_time_out_and_the_connection_is_not_reused(kind):
    async def respond(server, writer, seen) -> bool:
        if len(server.seen) == 1:
            await asyncio.sleep(30)
        writer.write(answer(b"{}"))
        return True

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        with pytest.raises(TimeoutError) as info:
            async with asyncio.timeout(0.3):
                await transport.send(target(server.base_url), BODY, HEADERS, lambda: None)
        assert transport.failure(info.value) == "timeout"
        assert await exchange(transport, server.base_url) == (200, b"{}")
        assert server.connections == 2
    finally:
        await transport.close()
        await server.close()


async def test_closing_a_stalled_response_fails_the_pending_read(kind):
    async def respond(server, writer, seen) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk(b"data: "))
        await writer.drain()
        await asyncio.sleep(30)
        return False

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        response = await transport.send(target(server.base_url), BODY, HEADERS, lambda: None)
        assert await response.content.readany() == b"data: "
        pending = asyncio.ensure_future(response.content.readany())
        await asyncio.sleep(0.05)
        response.close()  # what the idle timer and the drain deadline do
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(pending, 2)
        assert transport.failure(info.value) == "connection"
    finally:
        await transport.close()
        await server.close()


async def test_a_connect_that_never_completes_is_a_connect_failure():
    # A listening socket whose backlog is full: the handshake is never answered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(listener.getsockname())
            except BlockingIOError:
                pass
            fillers.append(s)
        transport = make("h1")
        sent: list = []
        t = target(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", connect=0.3)
        with pytest.raises(Exception) as info:
            async with asyncio.timeout(3):
                await transport.send(t, BODY, HEADERS, lambda: sent.append(1))
        assert transport.failure(info.value) == "connect" and sent == []
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_a_huge_body_stops_at_the_cap_with_reading_paused_meanwhile(kind):
    size = 64 * 1024 * 1024

    async def respond(server, writer, seen) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        return True

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    settings = Settings(max_upstream_body_bytes=1024 * 1024, upstream_attempts=1)
    up = UpstreamClient(settings, transport=transport)
    model = PublicModel(id="zowy-1", created=1, targets=(target(server.base_url),))
    try:
        if kind == "h1":
            response = await transport.send(target(server.base_url), BODY, HEADERS, lambda: None)
            await asyncio.sleep(0.3)  # nobody reads: the socket is paused, memory stays bounded
            assert response._size < 2 * 1024 * 1024
            response.close()
        with pytest.raises(UpstreamError) as info:
            await up.complete(model, {"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}]},
                              "rid", Attempts(), "chatcmpl-x")
        assert "larger" in info.value.message
    finally:
        await transport.close()
        await server.close()


# ---------------------------------------------------------------- limits and failures


async def test_the_per_host_limit_holds_and_a_waiter_gets_the_freed_connection(kind):
    gate = asyncio.Event()

    async def respond(server, writer, seen) -> bool:
        await gate.wait()
        writer.write(answer(b"{}"))
        await writer.drain()
        return True

    server = await Server(respond).start()
    transport = make(kind, per_host=2)
    await transport.start()
    try:
        tasks = [asyncio.ensure_future(exchange(transport, server.base_url)) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert server.open == 2 and len(server.seen) == 2  # the third waits for a connection
        gate.set()
        assert await asyncio.gather(*tasks) == [(200, b"{}")] * 3
        assert server.connections == 2 and server.most_open == 2
    finally:
        await transport.close()
        await server.close()


async def test_a_refused_connection_is_a_connect_failure_and_nothing_was_sent(kind):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = make(kind)
    await transport.start()
    try:
        sent: list = []
        with pytest.raises(Exception) as info:
            await transport.send(target(f"http://127.0.0.1:{port}/v1"), BODY, HEADERS, lambda: sent.append(1))
        assert transport.failure(info.value) == "connect" and sent == []
    finally:
        await transport.close()


async def test_a_certificate_not_trusted_is_a_connect_failure(kind, other_certs):
    server = await Server(ok(), other_certs).start()  # signed by a CA the client does not trust
    transport = make(kind)
    await transport.start()
    try:
        sent: list = []
        with pytest.raises(Exception) as info:
            await transport.send(target(server.base_url), BODY, HEADERS, lambda: sent.append(1))
        assert transport.failure(info.value) == "connect" and sent == [] and server.seen == []
    finally:
        await transport.close()
        await server.close()


async def test_an_unreadable_answer_is_a_connection_failure(kind):
    async def respond(server, writer, seen) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        return False

    server = await Server(respond).start()
    transport = make(kind)
    await transport.start()
    try:
        with pytest.raises(Exception) as info:
            await exchange(transport, server.base_url)
        assert transport.failure(info.value) == "connection"
    finally:
        await transport.close()
        await server.close()


def test_failure_kinds_of_foreign_exceptions():
    assert H1Transport.failure(ValueError("a bug")) is None
    assert H1Transport.failure(TimeoutError()) == "timeout"
    assert H1Transport.failure(ConnectionResetError()) == "connection"
    assert H1Transport.failure(ssl.SSLError()) == "connection"  # mid-response; at connect it is wrapped


# ---------------------------------------------------------------- through the upstream client, over TLS


async def test_the_upstream_client_over_h1_and_tls_completes_and_streams(certs):
    from app.wire.rewrite import OPENAI, StreamRewriter
    from bench.tls_upstream import start_tls

    upstream = await start_tls(certs)
    transport = H1Transport(8, ssl_context=certs.client_context())
    up = UpstreamClient(Settings(), transport=transport)
    model = PublicModel(id="zowy-1", created=1, targets=(target(upstream.base_url),))
    try:
        out, usage, _ = await up.complete(model, {"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}]},
                                          "rid", Attempts(), "chatcmpl-ours")
        assert b'"chatcmpl-ours"' in out and usage.completion_tokens == 8
        stream = await up.stream(model, {"model": "zowy-1", "stream": True,
                                         "messages": [{"role": "user", "content": "hi [[fake:chunks=5]]"}]},
                                 "rid", Attempts(), lambda dialect: StreamRewriter("zowy-1", "chatcmpl-ours", False, dialect))
        relayed = b"".join([piece async for piece in stream])
        assert relayed.count(b"data: ") == 8 and relayed.endswith(b"data: [DONE]\n\n")
        assert b"gpt" not in relayed and OPENAI is not None
    finally:
        await up.close()
        await upstream.close()


# ---------------------------------------------------------------- choosing the transport


def test_the_transport_setting_chooses_the_client():
    from app.core.config import ConfigError
    from app.upstream.transport import make_transport

    chosen = UpstreamClient(Settings()).transport
    assert isinstance(chosen, H1Transport) and chosen.per_host == 256
    assert isinstance(UpstreamClient(Settings(upstream_transport="aiohttp")).transport, AiohttpTransport)
    assert type(make_transport("bench.transports:AiohttpTunedTransport", 8)).__name__ == "AiohttpTunedTransport"
    with pytest.raises(ConfigError, match="ZOWY_UPSTREAM_TRANSPORT"):
        make_transport("no.such:Transport", 8)
    assert Settings.from_env({"ZOWY_DEMO": "on"}).upstream_transport == "h1"
    assert Settings.from_env({"ZOWY_UPSTREAM_TRANSPORT": "aiohttp", "ZOWY_DEMO": "on"}).upstream_transport == "aiohttp"
