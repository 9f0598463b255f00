"""Answers the gateway writes straight to the connection (app/http/io.py), read off a raw socket: the
head is the one Sanic would write for the same headers (names, values, order, framing), keep-alive
and pipelining hold across whole and streamed answers, HEAD gets the head alone, a draining worker
closes after the answer, and errors still come from the error handler."""
from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
from sanic import Sanic
from sanic.headers import format_http1_response
from sanic.response import HTTPResponse

from app.core.config import Settings
from app.http import io
from app.http.app import GatewayErrorHandler, GatewayRouter
from app.http.connection import GatewayProtocol
from tests import support

RATE_LIMIT = ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
              "x-ratelimit-limit-requests-hour", "x-ratelimit-remaining-requests-hour", "x-ratelimit-reset-requests-hour"]


class Conn:
    """One raw HTTP/1.1 connection: send bytes, read whole answers (by length or chunked)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def answer(self, head_only: bool = False) -> tuple[bytes, list[tuple[str, str]], bytes, bytes]:
        """The next answer: its raw head, its headers in order, its body (de-chunked) and its raw body
        (``head_only``: an answer to HEAD, which has none)."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._more(), f"closed before a head: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), head
        if head.startswith(b"HTTP/1.1 100 "):
            return self.answer()
        headers = [(n.decode(), v.strip().decode()) for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])]
        fields = dict(headers)
        if head_only:
            return head, headers, b"", b""
        if "content-length" in fields:
            size = int(fields["content-length"])
            while len(self.buffer) < size:
                assert self._more(), "closed in a body"
            body, self.buffer = self.buffer[:size], self.buffer[size:]
            return head, headers, body, body
        assert fields.get("transfer-encoding") == "chunked", head
        while not (b"\r\n0\r\n\r\n" in self.buffer or self.buffer.startswith(b"0\r\n\r\n")):
            assert self._more(), "closed in a chunked body"
        end = self.buffer.index(b"0\r\n\r\n", 0 if self.buffer.startswith(b"0\r\n\r\n") else self.buffer.index(b"\r\n0\r\n\r\n") + 2) + 5
        raw, self.buffer = self.buffer[:end], self.buffer[end:]
        return head, headers, support.response_body(b"transfer-encoding: chunked\r\n\r\n" + raw), raw

    def closed(self, wait: float = 1.0) -> bool:
        """Whether the server closed the connection (within ``wait`` seconds), with nothing more sent."""
        self.sock.settimeout(wait)
        try:
            return self.buffer == b"" and not self._more()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(15)

    def close(self) -> None:
        self.sock.close()


def chat(key: str, body: dict, *extra: str, close: bool = False, version: str = "HTTP/1.1") -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST /v1/chat/completions {version}", "Host: gw", "Content-Type: application/json",
             f"Authorization: Bearer {key}", f"Content-Length: {len(payload)}", *extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def as_sanic_writes(status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool, content_type: str,
                    chunked: bool = False) -> bytes:
    """The head Sanic's own response path writes for ``status`` with these headers (the ones the
    route sets), as http1_response_header does it."""
    response = HTTPResponse(body, status=status, headers=dict(headers), content_type=content_type)
    if chunked:
        response.headers["transfer-encoding"] = "chunked"
    else:
        response.headers["content-length"] = len(body)
    response.headers["connection"] = "keep-alive" if keep_alive else "close"
    return format_http1_response(status, response.processed_headers)


def route_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers the route gave (everything before the framing Sanic adds)."""
    framing = {"content-length", "transfer-encoding", "connection", "content-type"}
    return [(n, v) for n, v in headers if n not in framing]


@pytest.fixture(scope="module")
def served(tmp_path_factory, models_path):
    gateway = support.start_gateway(tmp_path_factory.mktemp("writer"), models_path)
    yield gateway, support.new_customer(gateway)
    gateway.stop()


def test_a_whole_answer_has_the_head_sanic_would_write(served):
    gateway, customer = served
    cases = [
        (chat(customer.key, support.chat_body("hi")), True),
        (chat(customer.key, support.chat_body("hi"), "X-Request-Id: caller-7"), True),
        (chat(customer.key, support.chat_body("hi"), "Expect: 100-continue"), True),
        (chat(customer.key, support.chat_body("hi"), close=True), False),
        (chat(customer.key, support.chat_body("hi"), version="HTTP/1.0"), False),
    ]
    for request, keep_alive in cases:
        conn = Conn(gateway.process.port)
        try:
            conn.send(request)
            head, headers, body, _ = conn.answer()
            given = route_headers(headers)
            assert head + b"\r\n\r\n" == as_sanic_writes(200, given, body, keep_alive, "application/json"), head
            names = [n for n, _ in given]
            client = ["x-client-request-id"] if b"X-Request-Id" in request else []
            assert names == ["x-request-id", *client, *RATE_LIMIT], names
            answer = json.loads(body)
            assert answer["id"] == "chatcmpl-" + dict(headers)["x-request-id"]
            assert answer["choices"][0]["message"]["content"]
            if client:
                assert dict(headers)["x-client-request-id"] == "caller-7"
            assert conn.closed() is not keep_alive
        finally:
            conn.close()


def test_a_stream_has_the_head_sanic_would_write_and_ends_its_chunks(served):
    gateway, customer = served
    conn = Conn(gateway.process.port)
    try:
        conn.send(chat(customer.key, support.chat_body("hi", stream=True)))
        head, headers, body, raw = conn.answer()
        given = route_headers(headers)
        assert [n for n, _ in given] == ["x-request-id", *RATE_LIMIT, "cache-control", "x-accel-buffering"]
        assert head + b"\r\n\r\n" == as_sanic_writes(200, given, b"", True, "text/event-stream", chunked=True)
        assert raw.endswith(b"\r\n0\r\n\r\n") and b"\r\n0\r\n\r\n" not in raw[:-7]
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and len(events) > 3
        assert all(e.startswith(b"data: ") for e in events)
        assert not conn.closed(wait=0.5) and conn.buffer == b""  # kept alive, nothing after the last chunk
    finally:
        conn.close()


def test_one_connection_serves_answers_pipelined_and_one_after_another(served):
    gateway, customer = served
    conn = Conn(gateway.process.port)
    try:
        # three at once: whole, streamed, whole; answered in order on the one connection
        conn.send(chat(customer.key, support.chat_body("one")) + chat(customer.key, support.chat_body("two", stream=True))
                  + chat(customer.key, support.chat_body("three")))
        kinds = []
        for _ in range(3):
            _, headers, body, _ = conn.answer()
            fields = dict(headers)
            assert fields["connection"] == "keep-alive"
            kinds.append("stream" if fields.get("transfer-encoding") == "chunked" else "whole")
            assert b"chatcmpl-" + fields["x-request-id"].encode() in body
        assert kinds == ["whole", "stream", "whole"]
        # an error on the same connection comes from the error handler, and the connection stays
        conn.send(chat(customer.key, {"model": "zowy-1-pro"}))
        head, headers, body, _ = conn.answer()
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert json.loads(body)["error"]["param"] == "messages" and dict(headers)["connection"] == "keep-alive"
        assert [n for n, _ in headers] == ["x-request-id", "content-length", "connection", "content-type"]
        conn.send(chat(customer.key, support.chat_body("last"), close=True))
        _, headers, body, _ = conn.answer()
        assert dict(headers)["connection"] == "close" and json.loads(body)["object"] == "chat.completion"
        assert conn.closed()
    finally:
        conn.close()


def test_a_refusal_has_the_head_the_error_handler_would_write(served):
    gateway, _ = served
    limited = support.new_customer(gateway, per_minute=1)
    support.wait_for_window(60, 5)
    statuses = []
    for _ in range(2):
        conn = Conn(gateway.process.port)
        try:
            conn.send(chat(limited.key, support.chat_body("hi")))
            head, headers, body, _ = conn.answer()
            statuses.append(int(head[9:12]))
        finally:
            conn.close()
    assert statuses == [200, 429]
    given = route_headers(headers)
    assert [n for n, _ in given] == ["x-request-id", *RATE_LIMIT, "retry-after", "retry-after-ms"]
    assert head + b"\r\n\r\n" == as_sanic_writes(429, given, body, True, "application/json"), head
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


# ---------------------------------------------------------------- io.answer on an app of its own


async def _serve_answers():
    """A Sanic app on the gateway's protocol whose GET route answers through io.answer (HEAD too, by
    the gateway's router); ``?close=1`` answers as a draining worker does."""
    Sanic.test_mode = True
    app = Sanic(f"writer_{uuid.uuid4().hex[:8]}", router=GatewayRouter(), error_handler=GatewayErrorHandler(),
                configure_logging=False)
    app.config.update(ACCESS_LOG=False, MOTD=False)
    app.ctx.settings = Settings()

    @app.get("/answer")
    async def answer(request):
        return await io.answer(request, b'{"ok":true}', {"x-request-id": "req-1"}, close=request.args.get("close") == "1")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = await app.create_server(sock=sock, protocol=GatewayProtocol, return_asyncio_server=True, access_log=False)
    await server.startup()
    await server.before_start()
    await server.after_start()
    return app, server, sock.getsockname()[1]


async def test_head_gets_the_head_alone_and_a_draining_answer_closes():
    app, server, port = await _serve_answers()
    loop = asyncio.get_running_loop()
    try:
        def head_then_get():
            conn = Conn(port)
            try:
                conn.send(b"HEAD /answer HTTP/1.1\r\nHost: x\r\n\r\nGET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
                return conn.answer(head_only=True), conn.answer()
            finally:
                conn.close()

        (head, _, body, _), (_, headers, got, _) = await loop.run_in_executor(None, head_then_get)
        assert head + b"\r\n\r\n" == as_sanic_writes(200, [("x-request-id", "req-1")], b'{"ok":true}', True, "application/json")
        assert body == b""
        assert got == b'{"ok":true}' and dict(headers)["content-length"] == "11"

        def draining():
            conn = Conn(port)
            try:
                conn.send(b"GET /answer?close=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                _, headers, body, _ = conn.answer()
                return headers, body, conn.closed()
            finally:
                conn.close()

        headers, body, closed = await loop.run_in_executor(None, draining)
        assert dict(headers)["connection"] == "close" and body == b'{"ok":true}' and closed
    finally:
        await server.close()
        await server.after_stop()


def responses(key: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    lines = ["POST /v1/responses HTTP/1.1", "Host: gw", "Content-Type: application/json",
             f"Authorization: Bearer {key}", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def test_the_responses_api_answers_with_the_same_heads_on_one_connection(served):
    gateway, customer = served
    conn = Conn(gateway.process.port)
    try:
        conn.send(responses(customer.key, {"model": "zowy-1", "input": "hi"})
                  + responses(customer.key, {"model": "zowy-1", "input": "hi", "stream": True, "store": False})
                  + chat(customer.key, support.chat_body("after")))
        head, headers, body, _ = conn.answer()
        given = route_headers(headers)
        assert [n for n, _ in given] == ["x-request-id", *RATE_LIMIT]
        assert head + b"\r\n\r\n" == as_sanic_writes(200, given, body, True, "application/json"), head
        answer = json.loads(body)
        assert answer["object"] == "response" and answer["status"] == "completed"
        assert [part["text"] for item in answer["output"] if item["type"] == "message" for part in item["content"]]

        head, headers, body, raw = conn.answer()
        given = route_headers(headers)
        assert [n for n, _ in given] == ["x-request-id", *RATE_LIMIT, "cache-control", "x-accel-buffering"]
        assert head + b"\r\n\r\n" == as_sanic_writes(200, given, b"", True, "text/event-stream", chunked=True)
        assert raw.endswith(b"\r\n0\r\n\r\n") and b"\r\n0\r\n\r\n" not in raw[:-7]
        kinds = [e.split(b"\n", 1)[0] for e in body.split(b"\n\n") if e]
        assert kinds[:2] == [b"event: response.created", b"event: response.in_progress"], kinds
        assert kinds[-1] == b"event: response.completed" and b"event: response.output_text.delta" in kinds
        sequence = [json.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in body.split(b"\n\n") if e]
        assert sequence == list(range(len(sequence)))

        _, headers, body, _ = conn.answer()
        assert dict(headers)["connection"] == "keep-alive" and json.loads(body)["object"] == "chat.completion"
    finally:
        conn.close()


def messages(key: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    lines = ["POST /v1/messages HTTP/1.1", "Host: gw", "Content-Type: application/json",
             f"x-api-key: {key}", "anthropic-version: 2023-06-01", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def test_the_messages_api_answers_with_the_same_heads_on_one_connection(served):
    gateway, customer = served
    conn = Conn(gateway.process.port)
    ask = {"model": "zowy-1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    try:
        conn.send(messages(customer.key, ask) + messages(customer.key, {**ask, "stream": True})
                  + chat(customer.key, support.chat_body("after")))
        head, headers, body, _ = conn.answer()
        given = route_headers(headers)
        assert [n for n, _ in given] == ["x-request-id", "request-id", *RATE_LIMIT]
        assert head + b"\r\n\r\n" == as_sanic_writes(200, given, body, True, "application/json"), head
        answer = json.loads(body)
        assert answer["type"] == "message" and answer["stop_reason"] == "end_turn" and answer["content"][0]["text"]

        head, headers, body, raw = conn.answer()
        given = route_headers(headers)
        assert [n for n, _ in given][:2 + len(RATE_LIMIT)] == ["x-request-id", "request-id", *RATE_LIMIT]
        assert head + b"\r\n\r\n" == as_sanic_writes(200, given, b"", True, "text/event-stream", chunked=True)
        assert raw.endswith(b"\r\n0\r\n\r\n") and b"\r\n0\r\n\r\n" not in raw[:-7]
        kinds = [e.split(b"\n", 1)[0] for e in body.split(b"\n\n") if e]
        assert kinds[0] == b"event: message_start" and kinds[-1] == b"event: message_stop", kinds
        assert b"event: content_block_delta" in kinds

        _, headers, body, _ = conn.answer()
        assert dict(headers)["connection"] == "keep-alive" and json.loads(body)["object"] == "chat.completion"
    finally:
        conn.close()
