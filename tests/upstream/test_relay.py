"""A stream relayed in the upstream connection's own callback (``UpstreamStream.relay`` over the h1
transport): the same bytes as iterating it, the connection reused after it, and every way it can
stop (the caller's buffer full, an error event, an upstream gone quiet, a body that ends without
[DONE], the caller's task cancelled) handed back to iterating, which reads it as ever. The upstream
is a scripted HTTP/1.1 server on 127.0.0.1 that sends each event in its own chunk."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from app.catalog.models import PublicModel, Target, Timeouts
from app.core.config import Settings
from app.core.errors import UpstreamError, UpstreamTimeout
from app.upstream.client import Attempts, UpstreamClient
from app.upstream import transport_h1
from app.upstream.transport_h1 import H1Transport
from app.wire.rewrite import StreamRewriter
from tests.upstream.test_transports import Server, chunk

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
REQUEST = {"model": "zowy-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def event(text: str, finish: str | None = None) -> bytes:
    doc = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
           "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


EVENTS = [event(f"word{i} ") for i in range(12)] + [event("", "stop"), b"data: [DONE]\n\n"]


def scripted(events: list[bytes], end: bool = True, gap: float = 0.005, stall: float = 0.0, end_after: float = 0.0):
    """Each event in its own chunk, ``gap`` apart, the last with the body's end (``end_after``
    seconds after it when set; unless not ``end``: silence for ``stall`` seconds, then the
    connection drops)."""

    async def respond(server, writer, seen) -> bool:
        writer.write(HEAD)
        for data in events[:-1]:
            writer.write(chunk(data))
            await writer.drain()
            await asyncio.sleep(gap)
        if not end:
            writer.write(chunk(events[-1]))
            await asyncio.sleep(stall)
            return False
        if end_after:
            writer.write(chunk(events[-1]))
            await writer.drain()
            await asyncio.sleep(end_after)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(chunk(events[-1]) + b"0\r\n\r\n")
        await writer.drain()
        return True

    return respond


def target(base_url: str, idle: float = 2.0) -> Target:
    return Target(name="t", provider="openai", base_url=base_url, model="gpt-up", api_key_env="K", api_key="k",
                  timeouts=Timeouts(connect=2.0, first_byte=2.0, idle=idle, total=10.0))


class Upstream:
    """A scripted server and the upstream client over the h1 transport."""

    def __init__(self, respond, idle: float = 2.0) -> None:
        self.server = Server(respond)
        self.idle = idle

    async def __aenter__(self) -> "Upstream":
        await self.server.start()
        self.client = UpstreamClient(Settings(), transport=H1Transport(8))
        self.model = PublicModel(id="zowy-1", created=1, targets=(target(self.server.base_url, self.idle),))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()
        await self.server.close()

    async def open(self):
        stream = await self.client.stream(self.model, REQUEST, "rid", Attempts(),
                                          lambda dialect: StreamRewriter("zowy-1", "chatcmpl-ours", False, dialect))
        return stream, await anext(stream)


class Writes:
    """The ``write`` a relay is given: keeps each piece; says stop after ``room`` pieces."""

    def __init__(self, room: int = 10**6) -> None:
        self.pieces: list[bytes] = []
        self.last: list[bool] = []
        self.room = room

    def __call__(self, piece: bytes, last: bool) -> bool:
        self.pieces.append(piece)
        self.last.append(last)
        return len(self.pieces) < self.room


async def iterated(upstream: Upstream) -> bytes:
    stream, first = await upstream.open()
    return first + b"".join([piece async for piece in stream])


async def test_a_relayed_stream_writes_what_iterating_gives_and_its_connection_is_reused():
    async with Upstream(scripted(EVENTS)) as upstream:
        expected = await iterated(upstream)
        stream, first = await upstream.open()
        writes = Writes()
        assert await stream.relay(writes) is True  # its last read, with the body's end, relayed too
        assert [piece async for piece in stream] == []  # the stream ended: iterating closes it cleanly
        assert first + b"".join(writes.pieces) == expected
        assert len(writes.pieces) > 5  # a piece per read, as the events came
        assert writes.last[-1] and not any(writes.last[:-1])
        assert b"gpt-up" not in expected and expected.endswith(b"data: [DONE]\n\n")
        await iterated(upstream)
        assert upstream.server.connections == 1


async def test_a_full_buffer_hands_the_stream_back_and_nothing_is_lost():
    async with Upstream(scripted(EVENTS)) as upstream:
        expected = await iterated(upstream)
        stream, first = await upstream.open()
        writes = Writes(room=3)
        assert await stream.relay(writes) is False
        assert len(writes.pieces) == 3
        rest = [piece async for piece in stream]
        assert first + b"".join(writes.pieces + rest) == expected


async def test_an_error_event_while_relayed_raises_as_iterating_would():
    error = b'data: {"error":{"message":"overloaded","code":503}}\n\n'
    async with Upstream(scripted(EVENTS[:3] + [error] + EVENTS[3:])) as upstream:
        stream, _ = await upstream.open()
        writes = Writes()
        with pytest.raises(UpstreamError, match="failed while streaming"):
            await stream.relay(writes)
        assert b"overloaded" not in b"".join(writes.pieces)
        assert stream.relay(Writes()) is None  # closed
        again, _ = await upstream.open()
        again.close()
        assert upstream.server.connections == 2  # the failed stream's connection was dropped


async def test_an_upstream_gone_quiet_while_relayed_times_out():
    async with Upstream(scripted(EVENTS[:4], end=False, stall=3.0), idle=0.3) as upstream:
        stream, _ = await upstream.open()
        writes = Writes()
        assert await asyncio.wait_for(stream.relay(writes), 2.0) is False
        assert len(writes.pieces) >= 2
        with pytest.raises(UpstreamTimeout):
            await anext(stream)


async def test_a_body_that_ends_without_done_while_relayed_fails_after_what_it_completed():
    async with Upstream(scripted(EVENTS[:5])) as upstream:
        stream, _ = await upstream.open()
        writes = Writes()
        assert await stream.relay(writes) is False
        rest = []
        with pytest.raises(UpstreamError, match="ended the stream early"):
            async for piece in stream:
                rest.append(piece)
        assert b"".join(writes.pieces + rest).count(b"data: ") == 4


async def test_a_cancelled_relay_writes_nothing_more():
    async with Upstream(scripted(EVENTS, gap=0.02)) as upstream:
        stream, _ = await upstream.open()
        writes = Writes()

        async def relay() -> bool:
            try:
                return await stream.relay(writes)
            finally:
                stream.unrelay()

        task = asyncio.ensure_future(relay())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        written = len(writes.pieces)
        assert 0 < written < len(EVENTS) - 1
        await asyncio.sleep(0.1)
        assert len(writes.pieces) == written
        rest = [piece async for piece in stream]  # iterating goes on from where the relay stopped
        assert (b"".join(writes.pieces + rest)).count(b"data: ") == len(EVENTS) - 1


@pytest.mark.parametrize("relayed", [True, False])
async def test_a_stream_whose_body_ends_after_its_last_event_keeps_its_connection(relayed):
    async with Upstream(scripted(EVENTS, end_after=0.05)) as upstream:
        for _ in range(3):
            stream, first = await upstream.open()
            if relayed:
                assert await stream.relay(Writes()) is True
            assert [piece async for piece in stream][-1:] == ([] if relayed else [b"data: [DONE]\n\n"])
            await asyncio.sleep(0.1)  # the body's end comes 50 ms after [DONE]
        assert upstream.server.connections == 1


async def test_a_stream_whose_body_never_ends_after_its_last_event_loses_its_connection(monkeypatch):
    monkeypatch.setattr(transport_h1, "_END_WAIT", 0.1)
    async with Upstream(scripted(EVENTS, end=False, stall=1.0)) as upstream:
        stream, _ = await upstream.open()
        assert b"".join([piece async for piece in stream]).endswith(b"data: [DONE]\n\n")
        await asyncio.sleep(0.3)
        again, _ = await upstream.open()
        again.close()
        assert upstream.server.connections == 2
