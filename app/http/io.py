"""The one module that reaches into Sanic's request and stream: reading a body the handler streams
itself (under the size limit; its time limit is the connection's body deadline, http/connection.py),
and writing answers straight to the connection: a whole answer as one pre-encoded head and its body
in one write, a streamed answer as its head with its first piece, then each piece with the
connection's own back-pressure. Neither goes through Sanic's response headers."""
from __future__ import annotations

import asyncio
import select
import time
from typing import Mapping

from sanic import Request
from sanic.compat import Header
from sanic.helpers import STATUS_CODES
from sanic.http import Http, Stage
from sanic.response import BaseHTTPResponse, HTTPResponse

from ..core.config import Settings
from ..core.errors import GatewayError
from ..core.ids import new_request_id
from ..gateway.pipeline import Events

# What every answer written here shares, encoded once: status lines, and the headers that close a
# head (the connection's fate, the content type), in the order Sanic writes them.
_STATUS_LINES = {status: b"HTTP/1.1 %d %b\r\n" % (status, reason) for status, reason in STATUS_CODES.items()}
_CONNECTION = {True: b"connection: keep-alive\r\n", False: b"connection: close\r\n"}
_JSON_END = b"content-type: application/json\r\n\r\n"
_STREAM_END = {keep: b"transfer-encoding: chunked\r\n" + line + b"content-type: text/event-stream\r\n\r\n"
               for keep, line in _CONNECTION.items()}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


async def receive(request: Request, settings: Settings) -> None:
    """Read the whole body into ``request.body``: taken from the connection's buffer when all of a
    Content-Length body is there (what Sanic's reading of it ends with; the app has no handler for
    its ``read_body`` signal), else read by Sanic."""
    http = request.stream
    # A streaming route lifts Sanic's size limit; the body is read here under ours.
    http.request_max_size = settings.max_body_bytes
    if isinstance(http, Http) and http.request_body is True and not http.expecting_continue and not request.body:
        left, buffer = http.request_bytes_left, http.recv_buffer
        if 0 < left <= len(buffer) and http.request_bytes <= http.request_max_size:
            request.body = bytes(buffer[:left])
            del buffer[:left]
            http.request_bytes_left = 0
            http.request_body = None
            return
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


async def answer(request: Request, body: bytes, headers: Mapping[str, str], close: bool = False,
                 status: int = 200) -> HTTPResponse | None:
    """Send a whole JSON answer with ``headers``: the head and the body in one write, straight to the
    connection (None); ``close``: the connection closes after it. Where there is no connection of
    Sanic's own (an ASGI server), the HTTPResponse that sends the same."""
    http = request.stream
    protocol = getattr(http, "protocol", None)
    transport = getattr(protocol, "transport", None)
    line = _STATUS_LINES.get(status)
    if transport is None or http.stage is not Stage.HANDLER or line is None:
        if close:
            close_after(request)
        return HTTPResponse(body, status=status, headers=headers, content_type="application/json")
    if close:
        http.keep_alive = False
    head = b"%b%bcontent-length: %d\r\n%b%b" % (
        line, _lines(headers), len(body), _CONNECTION[http.keep_alive], _JSON_END)
    await _writable(http, protocol, transport)
    transport.write(head if http.head_only else head + body)
    _sent(request, http, protocol, status)
    return None


def error_parts(request: Request | None, error: GatewayError, api: object | None) -> tuple[dict, bytes]:
    """What an error answers with: the request's headers so far (its id, its rate limits), the
    error's own, and the body in ``api``'s envelope (OpenAI's when the API has none of its own)."""
    headers = dict(getattr(getattr(request, "ctx", None), "headers", None) or ())
    headers.update(error.headers)
    request_id = headers.get("x-request-id")
    if request_id is None:
        request_id = headers["x-request-id"] = new_request_id()
    render = getattr(api, "error_body", None)
    return headers, error.body() if render is None else render(error, request_id)


async def refuse(request: Request, error: GatewayError, api: object, close: bool = False) -> HTTPResponse | None:
    """Answer a request refused before its answer began (401, 402, 429, ...) as a whole answer is
    written: the error handler's headers and body, without Sanic's exception path."""
    headers, body = error_parts(request, error, api)
    return await answer(request, body, headers, close, error.status)


async def send_events(request: Request, events: Events) -> None:
    """Send a streamed answer: its headers with its first piece, then the rest as it comes; a failure
    after it began goes out as its error event."""
    try:
        http = request.stream
        protocol = getattr(http, "protocol", None)
        transport = getattr(protocol, "transport", None)
        if transport is None or http.stage is not Stage.HANDLER:
            await _send_events_through_sanic(request, events)
            return
        failed = False
        try:
            first = await anext(events.chunks)
        except GatewayError as failure:
            first, failed = events.fail(failure), True
        if not events.keep_alive:
            http.keep_alive = False  # began while the worker drains
        head = _STATUS_LINES[200] + _lines(events.headers) + _STREAM_END[http.keep_alive]
        await _writable(http, protocol, transport)
        if http.head_only:
            transport.write(head)
            _sent(request, http, protocol, 200)
            return
        relayed = events.relayed
        ended = not failed and relayed is not None and relayed.done
        if first:
            head += b"%x\r\n%b\r\n" % (len(first), first)
        transport.write(head + _LAST_CHUNK if ended else head)
        http.stage = Stage.RESPONSE  # from here on a failure can only end the stream
        _sent(request, http, protocol, 200, done=False)
        if not failed:
            try:
                ended = await _write(protocol, events.chunks, relayed, events.upstream) or ended
            except GatewayError as failure:
                event = events.fail(failure)
                transport.write(b"%x\r\n%b\r\n" % (len(event), event))
        if not events.keep_alive:
            http.keep_alive = False  # a stream that began before SIGTERM
        if not ended:
            transport.write(_LAST_CHUNK)
        http.stage = Stage.IDLE
        protocol._time = time.monotonic()
    finally:
        events.close()


async def _send_events_through_sanic(request: Request, events: Events) -> None:
    """The same stream through Sanic's ``response.send``, for a server whose connection is not Sanic's."""
    response = await request.respond(headers=events.headers, content_type=events.content_type)
    try:
        await response.send(await anext(events.chunks))  # the headers go out with the first event
        async for chunk in events.chunks:
            await response.send(chunk)
    except GatewayError as failure:
        await response.send(events.fail(failure))
    if not events.keep_alive:
        close_after(request)
    await response.eof()


async def _write(protocol, chunks, relayed, upstream) -> bool:
    """The rest of the stream, each piece written as one HTTP chunk straight to the connection, with
    the connection's own back-pressure: what Sanic's ``response.send`` does, minus its per-call
    signal dispatch and layers (measured: bench ``long-stream``). While the caller's buffer has
    room, ``upstream`` (whose pieces ``chunks`` gives first, unchanged) relays its reads itself; the
    rest goes through ``chunks``. The last piece goes out with the body's end when ``relayed`` (the
    rewriter of relayed upstream pieces) says it is the last (then True)."""
    transport = protocol.transport
    can_write = protocol._can_write
    chunks = aiter(chunks)
    write = _relay_writer(transport, can_write, relayed is not None)
    ended = False
    while True:
        if can_write.is_set() and (relay := upstream.relay(write)) is not None:
            try:
                ended = await relay and relayed is not None
            finally:
                upstream.unrelay()
        if transport.is_closing():
            raise asyncio.CancelledError("the client closed the connection")
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return ended
        ended = relayed is not None and relayed.done
        write(chunk, ended)
        if not can_write.is_set():
            await can_write.wait()


def _relay_writer(transport, can_write: asyncio.Event, relayed: bool):
    """What a relayed upstream read is written with: one HTTP chunk, the body's end with the last
    piece when the upstream's pieces are the whole body; False once the caller's buffer is full or
    the caller left."""

    def write(piece: bytes, last: bool) -> bool:
        if transport.is_closing():
            return False
        end = last and relayed
        if piece:  # an empty HTTP chunk would end the body
            framed = b"%x\r\n%b\r\n" % (len(piece), piece)
            transport.write(framed + _LAST_CHUNK if end else framed)
        elif end:
            transport.write(_LAST_CHUNK)
        return can_write.is_set()

    return write


def _lines(headers: Mapping[str, str]) -> bytes:
    """``name: value`` lines of the headers that vary per answer (request id, rate limits)."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError("a response header holds a line break")
    return text.encode()


async def _writable(http, protocol, transport) -> None:
    """Wait, as Sanic's own send does, while the connection's buffer is full; a caller gone ends here."""
    if not protocol._can_write.is_set():
        await protocol._can_write.wait()
    if transport.is_closing():
        raise asyncio.CancelledError("the client closed the connection")
    if http.expecting_continue:  # the body was not read: the interim answer Sanic owes first
        http.expecting_continue = False
        transport.write(_CONTINUE)


class _Sent(BaseHTTPResponse):
    """An answer written here: what Sanic's request cycle finds of it (nothing left to send)."""

    __slots__ = ()

    def __init__(self, status: int, stream) -> None:
        self.asgi = False
        self.body = None
        self.content_type = None
        self.stream = stream
        self.status = status
        self.headers = Header()
        self._cookies = None


def _sent(request: Request, http, protocol, status: int, done: bool = True) -> None:
    """Tell Sanic's stream that the answer is out (``done``), or its head (the rest is written here)."""
    http.response = _Sent(status, http)
    http.response_func = None
    request.responded = True
    if done:
        http.stage = Stage.IDLE
        protocol._time = time.monotonic()
