"""The one module that reaches into Sanic's request and stream: reading a body the handler streams
itself (under the size limit; its time limit is the connection's body deadline, http/connection.py),
and writing a streamed answer straight to the connection with the connection's own back-pressure."""
from __future__ import annotations

import asyncio
import select
import time

from sanic import Request

from ..core.config import Settings
from ..core.errors import GatewayError
from ..gateway.pipeline import Events


async def receive(request: Request, settings: Settings) -> None:
    """Read the whole body into ``request.body``."""
    # A streaming route lifts Sanic's size limit; the body is read here under ours.
    request.stream.request_max_size = settings.max_body_bytes
    await request.receive_body()


# A request that has run this long since its handler began has waited on something (the store): the
# caller may have left meanwhile.
WAITED = 0.001
_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR
_poll: select.poll | None = None


def gone(request: Request) -> bool:
    """Whether the caller has hung up. After a wait the socket is asked too: a hang-up that came
    while the request waited reaches the kernel before the loop reads it, and the upstream request
    that follows would otherwise go out in the same step."""
    conn_info = request.conn_info
    if conn_info is None:
        return False
    if conn_info.lost:
        return True
    stream = request.stream
    started = getattr(stream, "perft0", None)
    if started is None or time.perf_counter() - started < WAITED:
        return False
    return _hung_up(request.transport)


def _hung_up(transport) -> bool:
    global _poll
    try:
        fd = transport.get_extra_info("socket").fileno()
    except (AttributeError, OSError):
        return False  # no socket of its own (an ASGI server, a test transport)
    if _poll is None:
        _poll = select.poll()
    _poll.register(fd, select.POLLIN | select.POLLRDHUP)
    try:
        return any(events & _HUNG_UP for _, events in _poll.poll(0))
    finally:
        _poll.unregister(fd)


def close_after(request: Request) -> None:
    """Close the connection once this response is sent (the worker is draining)."""
    if request.stream is not None:
        request.stream.keep_alive = False


async def send_events(request: Request, events: Events) -> None:
    """Send a streamed answer: its headers with its first piece, then the rest as it comes; a failure
    after it began goes out as its error event."""
    try:
        response = await request.respond(headers=events.headers, content_type=events.content_type)
        chunks = events.chunks
        try:
            await response.send(await anext(chunks))  # the headers go out with the first event
            protocol = getattr(request.stream, "protocol", None)
            if getattr(protocol, "transport", None) is not None:
                await _write(protocol, chunks)
            else:
                async for chunk in chunks:  # no connection of Sanic's own (an ASGI server): its send
                    await response.send(chunk)
        except GatewayError as failure:
            await response.send(events.fail(failure))
        if not events.keep_alive:
            close_after(request)  # a stream that began before SIGTERM
        await response.eof()
    finally:
        events.close()


async def _write(protocol, chunks) -> None:
    """The rest of the stream, each piece written as one HTTP chunk straight to the connection, with
    the connection's own back-pressure: what Sanic's ``response.send`` does, minus its per-call
    signal dispatch and layers (measured: bench ``long-stream``)."""
    transport = protocol.transport
    can_write = protocol._can_write
    async for chunk in chunks:
        if transport.is_closing():
            raise asyncio.CancelledError("the client closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if not can_write.is_set():
            await can_write.wait()
