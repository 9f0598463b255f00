"""Requests a connection takes directly (app/http/connection.py, app/http/direct.py), served in this
process on 127.0.0.1 with the mock transport as the upstream and read off raw connections: a plain
create request skips Sanic's request cycle and is answered as Sanic would answer it; any other form
goes through Sanic, also on a connection that was served directly before, in order; a failure gets
the error handler's answer; a caller who hangs up ends the request and is billed what it got."""
from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from sanic import Sanic
from sanic.http import Http

from app.http import client_api
from app.http.connection import GatewayProtocol
from app.http.server import Server
from tests.app.conftest import served_on_socket, user


class Served:
    """The gateway's server in this process; ``through_sanic`` lists the paths Sanic's request
    cycle handled."""

    def __init__(self, server: Server, port: int, key: str, through_sanic: list[str]) -> None:
        self.server, self.port, self.key = server, port, key
        self.through_sanic = through_sanic

    def chat(self, body: dict, *extra: str, path: str = "/v1/chat/completions", chunked: bool = False) -> bytes:
        payload = orjson.dumps(body)
        lines = [f"POST {path} HTTP/1.1", "Host: gw", "Content-Type: application/json",
                 f"Authorization: Bearer {self.key}", *extra]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload)
        else:
            lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    async def connect(self) -> "Conn":
        return Conn(*await asyncio.open_connection("127.0.0.1", self.port))


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        if status == 100:
            return await self.answer()
        headers = {n.decode().lower(): v.strip().decode()
                   for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:-2])}
        if "content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers["content-length"]))
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            piece = await self.reader.readexactly(size + 2)
            if not size:
                return status, headers, body
            body += piece[:-2]

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def served(tmp_path, monkeypatch):
    # A server started in test mode keeps Sanic's own methods beside its touched-up copies, so the
    # apps of the next tests touch up the originals again.
    monkeypatch.setattr(Sanic, "test_mode", True)
    through_sanic: list[str] = []
    handle = GatewayProtocol._handle

    def counted(protocol, request):
        through_sanic.append(request.path)
        return handle(protocol, request)

    monkeypatch.setattr(GatewayProtocol, "_handle", counted)
    async with served_on_socket(tmp_path, "direct", 1000, 100000, ZOWY_BODY_TIMEOUT="1") as (server, port, key):
        yield Served(server, port, key, through_sanic)


def completion(body: bytes) -> dict:
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"], answer
    return answer


async def test_plain_requests_skip_sanic_s_cycle_and_the_connection_serves_every_other_after_them(served):
    conn = await served.connect()
    try:
        await conn.send(served.chat(user("one")))
        status, headers, body = await conn.answer()
        assert status == 200 and completion(body)["id"] == "chatcmpl-" + headers["x-request-id"]
        await conn.send(served.chat(user("two", stream=True)))
        status, headers, body = await conn.answer()
        assert status == 200 and headers["transfer-encoding"] == "chunked" and body.endswith(b"data: [DONE]\n\n")
        assert served.through_sanic == []
        # A GET on the same connection goes through Sanic, then a plain request is taken again.
        await conn.send(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %b\r\n\r\n" % served.key.encode())
        status, _, body = await conn.answer()
        assert status == 200 and json.loads(body)["object"] == "list"
        await conn.send(served.chat(user("three"), path="/api/v1/chat/completions"))
        status, _, body = await conn.answer()
        assert status == 200 and completion(body)
        assert served.through_sanic == ["/v1/models"]
    finally:
        conn.close()


@pytest.mark.parametrize("extra, chunked", [
    (("Expect: 100-continue",), False),
    ((), True),
    (("Content-Length: 5", "X: y"), False),
])
async def test_other_forms_of_the_same_request_go_through_sanic_with_the_same_answer(served, extra, chunked):
    conn = await served.connect()
    try:
        request = served.chat(user("hi"), *extra, chunked=chunked)
        await conn.send(request)
        status, headers, body = await conn.answer()
        if "Content-Length: 5" in extra:
            assert status == 400 and served.through_sanic == []  # two lengths: Sanic's own refusal
            return
        assert status == 200 and completion(body)
        assert served.through_sanic == ["/v1/chat/completions"]
        await conn.send(served.chat(user("again")))
        status, _, body = await conn.answer()
        assert status == 200 and completion(body) and len(served.through_sanic) == 1
    finally:
        conn.close()


async def test_a_body_that_follows_its_head_is_read_on_the_direct_path(served):
    conn = await served.connect()
    try:
        whole = served.chat(user("body later " + "x" * 3000))
        body_at = whole.index(b"\r\n\r\n") + 4
        for piece in (whole[:body_at], whole[body_at:body_at + 1000], whole[body_at + 1000:]):
            await conn.send(piece)
            await asyncio.sleep(0.05)
        status, _, body = await conn.answer()
        assert status == 200 and completion(body)
        assert served.through_sanic == []
        # A body that stops coming gets 408 at the body deadline, and the connection closes.
        await conn.send(whole[:body_at + 10])
        status, headers, body = await conn.answer()
        assert status == 408 and headers["connection"] == "close" and json.loads(body)["error"]["code"]
        assert await conn.closed()
        assert served.through_sanic == []
    finally:
        conn.close()


async def test_a_body_already_buffered_is_taken_from_the_buffer_and_one_still_coming_is_read_by_sanic(served, monkeypatch):
    reads = []
    read = Http.read
    monkeypatch.setattr(Http, "read", lambda self: reads.append(self) or read(self))
    conn = await served.connect()
    try:
        await conn.send(served.chat(user("whole")) + served.chat(user("pipelined")))
        for _ in range(2):
            status, _, body = await conn.answer()
            assert status == 200 and completion(body)
        assert reads == []
        whole = served.chat(user("body later"))
        body_at = whole.index(b"\r\n\r\n") + 4
        await conn.send(whole[:body_at])
        await asyncio.sleep(0.05)
        await conn.send(whole[body_at:])
        status, _, body = await conn.answer()
        assert status == 200 and completion(body) and reads
    finally:
        conn.close()


async def test_a_request_whose_head_comes_in_pieces_or_pipelined_goes_through_sanic_in_order(served):
    conn = await served.connect()
    try:
        whole = served.chat(user("split"))
        await conn.send(whole[:40])
        await asyncio.sleep(0.05)
        await conn.send(whole[40:])
        status, _, body = await conn.answer()
        assert status == 200 and completion(body)
        assert served.through_sanic == ["/v1/chat/completions"]
        await conn.send(served.chat(user("first")) + served.chat(user("second", stream=True)))
        kinds = []
        for _ in range(2):
            status, headers, body = await conn.answer()
            assert status == 200
            kinds.append(headers.get("transfer-encoding", "whole"))
        assert kinds == ["whole", "chunked"]
    finally:
        conn.close()


async def test_bytes_sent_while_a_request_is_served_directly_wait_for_its_answer(served):
    conn = await served.connect()
    try:
        await conn.send(served.chat(user("slow [[fake:think=0.3,chunks=3]]")))
        await asyncio.sleep(0.1)  # the first is being served directly meanwhile
        await conn.send(served.chat(user("next [[fake:chunks=5]]")))
        status, _, first = await conn.answer()
        assert status == 200 and completion(first)["usage"]["completion_tokens"] == 3
        status, _, second = await conn.answer()
        assert status == 200 and completion(second)["usage"]["completion_tokens"] == 5
        assert served.through_sanic == ["/v1/chat/completions"]  # the second, read after the first
    finally:
        conn.close()


async def test_connection_close_and_a_draining_worker_close_after_the_answer(served):
    conn = await served.connect()
    try:
        await conn.send(served.chat(user("bye"), "Connection: close"))
        status, headers, body = await conn.answer()
        assert status == 200 and headers["connection"] == "close" and completion(body)
        assert await conn.closed()
    finally:
        conn.close()
    served.server.services.draining = True
    try:
        conn = await served.connect()
        await conn.send(served.chat(user("drain")))
        status, headers, _ = await conn.answer()
        assert status == 200 and headers["connection"] == "close" and await conn.closed()
        conn.close()
    finally:
        served.server.services.draining = False
    assert served.through_sanic == []


async def test_a_failure_in_the_handler_gets_the_error_handler_s_answer(served, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(client_api, "create", broken)
    conn = await served.connect()
    try:
        await conn.send(served.chat(user("hi")))
        status, headers, body = await conn.answer()
        assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
        assert headers["connection"] == "keep-alive" and headers["x-request-id"]
        # The connection goes on: the same failure through Sanic's cycle answers the same.
        await conn.send(served.chat(user("hi"), chunked=True))
        status, _, again = await conn.answer()
        assert status == 500 and json.loads(again)["error"] == json.loads(body)["error"]
        assert served.through_sanic == ["/v1/chat/completions"]
    finally:
        conn.close()


async def test_the_messages_route_with_its_query_and_its_own_errors(served):
    conn = await served.connect()
    try:
        body = {"model": "zowy-1", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        await conn.send(served.chat(body, "anthropic-version: 2023-06-01", path="/v1/messages?beta=true"))
        status, headers, answer = await conn.answer()
        assert status == 200 and json.loads(answer)["type"] == "message"
        assert headers["request-id"] == headers["x-request-id"]
        await conn.send(served.chat({"model": "zowy-1"}, path="/v1/messages?beta=true"))
        status, _, answer = await conn.answer()
        assert status == 400 and json.loads(answer)["type"] == "error"  # Anthropic's envelope
        # count_tokens answers with a response object of Sanic's, sent as Sanic's cycle sends it.
        await conn.send(served.chat(body, path="/v1/messages/count_tokens?beta=true"))
        status, headers, answer = await conn.answer()
        assert status == 200 and json.loads(answer)["input_tokens"] > 0
        assert headers["request-id"] == headers["x-request-id"] and headers["content-type"] == "application/json"
        await conn.send(served.chat(body, path="/v1/messages/count_tokens", chunked=True))
        status, again_headers, again = await conn.answer()
        assert status == 200 and json.loads(again) == json.loads(answer)
        assert list(again_headers) == list(headers)  # the same head through Sanic's cycle
        assert served.through_sanic == ["/v1/messages/count_tokens"]
    finally:
        conn.close()


async def test_the_responses_route_is_taken_directly_too(served):
    conn = await served.connect()
    try:
        await conn.send(served.chat({"model": "zowy-1", "input": "hi", "store": False}, path="/v1/responses"))
        status, headers, answer = await conn.answer()
        body = json.loads(answer)
        assert status == 200 and body["object"] == "response" and body["status"] == "completed"
        assert body["id"].endswith(headers["x-request-id"])
        assert served.through_sanic == []
    finally:
        conn.close()


async def test_a_caller_who_hangs_up_mid_stream_ends_the_request(served):
    before = served.server.services.inflight
    conn = await served.connect()
    await conn.send(served.chat(user("long [[fake:chunks=400,delay=0.01]]", stream=True)))
    await asyncio.wait_for(conn.reader.readuntil(b"data: "), 10)
    conn.writer.transport.abort()
    for _ in range(200):
        if served.server.services.inflight == before:
            break
        await asyncio.sleep(0.02)
    assert served.server.services.inflight == before
    assert not [c for c in served.server.connections if c.transport is not None and not c.transport.is_closing()]
    assert served.through_sanic == []


async def test_the_connection_s_wait_for_more_bytes_is_woken_by_them():
    from app.http.connection import _Arrival

    arrival = _Arrival(asyncio.get_running_loop())
    waiting = asyncio.create_task(arrival.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done() and not arrival.is_set()
    arrival.set()
    assert await asyncio.wait_for(waiting, 1) is True
    assert await asyncio.wait_for(arrival.wait(), 1) is True  # still set: no wait
    arrival.clear()
    waiting = asyncio.create_task(arrival.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()
    arrival.set()  # a cancelled waiter is not woken twice
    assert arrival.is_set()
