"""A streamed answer has two writers (app/http/io.py): straight to Sanic's own connection, and the
plain ``response.send`` under any other server (the ASGI client of tests/app). Both send the same
events; the first is taken on a socket of Sanic's, served here in this process on 127.0.0.1 with
the mock transport as the upstream."""
from __future__ import annotations

import httpx
import orjson
import pytest
from sanic import Sanic

from app.http import io
from app.http.connection import GatewayProtocol
from bench.fakes.provider import reply_text
from tests.app.conftest import chunks, served_on_socket, text_of, user
from tests.conftest import record

BODY = user("stream me [[fake:chunks=40]]", "zowy-1-pro", stream=True, stream_options={"include_usage": True})


@pytest.fixture
def writers(monkeypatch) -> list[str]:
    """Which writer sent each stream's rest: "connection" or "send"."""
    used: list[str] = []
    write, send = io._write, io.send_events

    async def straight(protocol, chunks, relayed, upstream):
        used.append("connection")
        return await write(protocol, chunks, relayed, upstream)

    async def send_events(request, events):
        used.append("any")
        await send(request, events)

    monkeypatch.setattr(io, "_write", straight)
    monkeypatch.setattr(io, "send_events", send_events)
    return used


async def test_on_sanic_s_connection_the_stream_is_written_straight_to_it(tmp_path, writers, monkeypatch):
    # A server started in test mode keeps Sanic's own methods beside its touched-up copies, so the
    # apps of the next tests touch up the originals again.
    monkeypatch.setattr(Sanic, "test_mode", True)
    async with served_on_socket(tmp_path, "writer", 100, 1000) as (_, port, key):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = await client.post("/v1/chat/completions", content=orjson.dumps(BODY),
                                  headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    record(r.content)
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    stream = chunks(r)
    assert text_of(stream) == reply_text(40) and stream[-1]["choices"] == [] and stream[-1]["usage"]
    assert {c["model"] for c in stream} == {"zowy-1-pro"}
    assert writers == ["any", "connection"]


async def test_elsewhere_the_same_events_go_through_send(gateway, customer, writers):
    r = await gateway.chat(customer, BODY)
    assert r.status_code == 200
    stream = chunks(r)
    assert text_of(stream) == reply_text(40) and stream[-1]["choices"] == [] and stream[-1]["usage"]
    assert writers == ["any"]  # the ASGI server has no connection of Sanic's: the plain writer


class _Recorded:
    """A connection's transport that keeps what each write sent."""

    def __init__(self, transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


@pytest.fixture
def writes(monkeypatch) -> list[bytes]:
    """What each write of the connections of a server started in the test sent, in order."""
    monkeypatch.setattr(Sanic, "test_mode", True)
    sent: list[bytes] = []
    made = GatewayProtocol.connection_made
    monkeypatch.setattr(GatewayProtocol, "connection_made", lambda self, transport: made(self, _Recorded(transport, sent)))
    return sent


async def test_a_stream_s_last_piece_goes_out_with_the_body_s_end(tmp_path, writes):
    """The piece that carries [DONE] and the chunked body's end are one write, for a stream that
    comes in many reads and for one whose first read holds it all."""
    async with served_on_socket(tmp_path, "ending", 100, 1000) as (_, port, key):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for body in (BODY, user("one piece [[fake:chunks=1]]", "zowy-1", stream=True)):
                writes.clear()
                r = await client.post("/v1/chat/completions", content=orjson.dumps(body),
                                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
                assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
                assert writes[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
                assert b"".join(writes).count(b"\r\n0\r\n\r\n") == 1 and b"0\r\n\r\n" not in writes


async def test_a_responses_stream_not_stored_ends_as_chat_s_does(tmp_path, writes):
    """Not stored, a Responses stream is relayed as chat's is: its terminal event and the body's end
    are one write. Stored, the terminal event waits for the store and still ends the body."""
    async with served_on_socket(tmp_path, "responses-ending", 100, 1000) as (_, port, key):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for text, store in (("many [[fake:chunks=40]]", False), ("one [[fake:chunks=1]]", False),
                                ("stored [[fake:chunks=5]]", True)):
                writes.clear()
                body = {"model": "zowy-1", "input": text, "stream": True, "store": store}
                r = await client.post("/v1/responses", content=orjson.dumps(body),
                                      headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
                assert r.status_code == 200
                last = r.text.rstrip("\n").rpartition("\n\n")[2]
                assert last.startswith("event: response.completed\n")
                assert orjson.loads(last.partition("data: ")[2])["response"]["store"] is store
                assert b"".join(writes).count(b"\r\n0\r\n\r\n") == 1
                if store:
                    assert writes[-1] == b"0\r\n\r\n"
                else:
                    assert writes[-1].endswith(b"}\n\n\r\n0\r\n\r\n") and b"response.completed" in writes[-1]


async def test_an_exchange_on_sanic_s_connection_holds_its_request_s_task(tmp_path, monkeypatch):
    """The exchange is told the connection's loop (no lookup) and still holds the task serving it,
    which a hang-up during admission cancels."""
    import asyncio

    from app.gateway.exchange import Exchange

    monkeypatch.setattr(Sanic, "test_mode", True)
    seen = []
    made = Exchange.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        loop = args[4] if len(args) > 4 else kwargs.get("loop")
        seen.append((self.task, asyncio.current_task(), loop is asyncio.get_running_loop()))

    monkeypatch.setattr(Exchange, "__init__", init)
    async with served_on_socket(tmp_path, "exchange-task", 100, 1000) as (_, port, key):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = await client.post("/v1/chat/completions", content=orjson.dumps(user("hi", "zowy-1")),
                                  headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    assert r.status_code == 200
    [(task, current, told)] = seen
    assert told and task is current and task is not None
