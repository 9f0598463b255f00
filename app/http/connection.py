"""Sanic's HTTP/1.1 protocol with total deadlines for each request's head and body, which serves
a client API's plainest requests itself (http/direct.py) and hands every other to Sanic.

Sanic's request timeout restarts with every byte received, so a head or a body sent a byte at a
time (a slowloris) could hold a connection forever. Here the head must be complete
``header_timeout`` seconds after the connection opened, or after the first byte of a later request
on it; and the body, on every route, ``body_timeout`` seconds after its head (a body still arriving
then gets 408 and the connection is closed, also when it was only being read to be discarded).

A request taken directly skips Sanic's head parsing, routing and request cycle: its handler runs on
Sanic's own stream (``Http``) set up as Sanic sets it, so it answers, fails and is cut as any other.
"""
from __future__ import annotations

import asyncio
from time import monotonic, perf_counter

from sanic.exceptions import BadRequest, PayloadTooLarge, RequestCancelled, ServerError
from sanic.http import Http, Stage
from sanic.response import BaseHTTPResponse
from sanic.server.protocols.http_protocol import HttpProtocol

from ..core.errors import HeaderTimeout, RequestTimeout
from . import direct


class GatewayHttp(Http):
    """Sanic's HTTP/1.1 stream; the body a streamed answer to HEAD writes after its head is dropped
    by a coroutine, as every other writer is (Sanic's is a plain function, which ``send`` awaits)."""

    __slots__ = ()

    async def head_response_ignored(self, data: bytes, end_stream: bool) -> None:
        super().head_response_ignored(data, end_stream)


class _Arrival:
    """What Sanic's protocol waits on for more bytes (an ``asyncio.Event`` there, with one waiter:
    the connection's task), bound to the connection's loop: an Event looks the running loop up on
    every wait, a system call on CPython 3.11 (its check of the process id)."""

    __slots__ = ("_loop", "_set", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiter: asyncio.Future | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            waiter = self._waiter = self._loop.create_future()
            await waiter
        return True


class GatewayProtocol(HttpProtocol):
    __slots__ = ("_head_timer", "_head_count", "_body_timer", "_direct", "_taken")
    HTTP_CLASS = GatewayHttp

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._data_received = _Arrival(self.loop)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm(0)
        self.request_handler = self._handle
        self._direct = direct_routes(self.app)
        self._taken: tuple | None = None

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)  # set once the connection task runs
        if http is not None and http.stage is Stage.IDLE:
            # Sanic's stream waits for a request (no request yet, nothing buffered): take it directly.
            if http.request is None and not self.recv_buffer and self._take(http, data):
                return
            # The first bytes of another request on a kept-alive connection start its head's clock.
            if self.state["requests_count"] != self._head_count:
                self._arm(self.state["requests_count"])
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        super().connection_lost(exc)

    async def receive_more(self) -> None:
        """Sanic's wait for more bytes. Where Sanic's stream waits for its next request, a request
        taken directly meanwhile is served here, in the connection's own task; then the wait goes on,
        or Sanic's stream reads what came after it."""
        await super().receive_more()
        while (taken := self._taken) is not None:
            self._taken = None
            if not await self._serve_directly(*taken):
                self.close()
                raise asyncio.CancelledError  # Sanic's stream ends, as for an idle connection closed
            if self.recv_buffer:
                return
            await super().receive_more()

    def _take(self, http: Http, data: bytes) -> bool:
        """Take the request ``data`` begins directly, if it is one of those (http/direct.py): Sanic's
        stream set up as Sanic's head parsing and routing would, its body (or what came of it yet)
        buffered for the handler to read, and the connection's task woken to serve it."""
        routes = self._direct
        taken = direct.take(data, routes.paths, routes.max_head, routes.max_body)
        if taken is None:
            return False
        route, handler = routes.by_path[taken.path]
        self._time = monotonic()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        count = self.state["requests_count"] = self.state["requests_count"] + 1
        http.keep_alive = taken.keep_alive and routes.keep_alive
        http.head_only = False
        http.url = taken.target.decode()
        request = self.request_class(url_bytes=taken.target, headers=taken.headers, head=taken.head, version="1.1",
                                     method="POST", transport=self.transport, app=self.app)
        request.conn_info = self.conn_info
        request.route = route
        request._match_info = {}
        request.stream, http.request = http, request
        http.request_body = True
        http.request_bytes_left = http.request_bytes = taken.length
        self.recv_buffer += taken.body
        if len(taken.body) < taken.length:
            self._start_body_clock(count)
        http.response_func = http.http1_response_header
        http.stage = Stage.HANDLER
        http.perft0 = perf_counter()
        self._taken = (http, request, handler)
        self._data_received.set()
        return True

    async def _serve_directly(self, http: Http, request, handler) -> bool:
        """What Sanic's request cycle does for a request once routed (``Sanic.handle_request``, then
        the rest of ``Http.http1``'s turn), for one taken directly. True when the connection may
        serve another request."""
        try:
            try:
                response = await handler(request)
                if request.responded:
                    response = http.response
                elif response is not None:
                    response = await request.respond(response)
                else:
                    response = http.response
                if not isinstance(response, BaseHTTPResponse):
                    raise ServerError(f"Invalid response type {response!r} (need HTTPResponse)")
                await response.send(end_stream=True)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await self.app.handle_exception(request, error, run_middleware=False)
            if http.stage is Stage.HANDLER:
                raise ServerError("Handler produced no response")
            if http.stage is Stage.RESPONSE:
                await http.response.send(end_stream=True)
        except asyncio.CancelledError as cancelled:
            if self.transport is None:
                raise
            error = RequestCancelled() if self.conn_info.lost else (http.exception or cancelled)
            http.exception = None
            http.keep_alive = False
            await http.error_response(error)
        except Exception as error:
            await http.error_response(error)
        if http.request_body:
            # The body the handler left unread is read and dropped, as Sanic does, under its limits.
            http.request_max_size = min(http.request_max_size, self.request_max_size)
            try:
                async for _ in http:
                    pass
            except (BadRequest, PayloadTooLarge):
                http.keep_alive = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        request.stream = None
        if http.response is not None:
            http.response.stream = None
        keep_alive = http.keep_alive and http.stage is Stage.IDLE
        http.init_for_request()
        return keep_alive

    def _arm(self, count: int) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_count = count
        self._head_timer = self.loop.call_later(self.app.ctx.settings.header_timeout, self._head_expired, count)

    def _head_expired(self, count: int) -> None:
        self._head_timer = None
        http, task = getattr(self, "_http", None), self._task
        if http is None or task is None or self.state["requests_count"] != count:
            return  # closed, or the head arrived
        if http.stage is Stage.REQUEST:
            http.exception = HeaderTimeout()  # answered 408, then closed
        elif http.stage is not Stage.IDLE:
            return
        task.cancel()

    def _handle(self, request):
        """Sanic's request handler, with the body's clock started when the head is complete."""
        # Not a coroutine of its own: it returns the app's, so a request costs no extra frame.
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        http = self._http
        body = http.request_body  # inlined _body_pending: most bodies are in with their head
        if body and (body == "chunked" or http.request_bytes_left > len(self.recv_buffer)):
            self._start_body_clock(self.state["requests_count"])
        return self.app.handle_request(request)

    def _start_body_clock(self, count: int) -> None:
        self._body_timer = self.loop.call_later(self.app.ctx.settings.body_timeout, self._body_expired, count)

    def _body_pending(self) -> bool:
        """Whether some of the request's body has still to arrive."""
        http = self._http
        return bool(http.request_body) and (http.request_body == "chunked" or http.request_bytes_left > len(self.recv_buffer))

    def _body_expired(self, count: int) -> None:
        self._body_timer = None
        http, task = getattr(self, "_http", None), self._task
        if http is None or task is None or self.state["requests_count"] != count or not self._body_pending():
            return  # closed, a later request, or the body is in
        if http.stage is Stage.RESPONSE:
            # A handler answering while the body still comes: look again once it has answered.
            self._body_timer = self.loop.call_later(self.app.ctx.settings.body_timeout, self._body_expired, count)
            return
        if http.stage is Stage.HANDLER:
            http.exception = RequestTimeout()  # answered 408, then closed
        # Nothing more of this body is read, not even to discard it after an answer.
        http.request_body = None
        http.keep_alive = False
        task.cancel()


def direct_routes(app) -> direct.Routes:
    """The routes a request may be taken directly to (``ctx_direct=True``: POST only, no path
    parameters, no request middleware), and the limits it is taken under; found once per app."""
    found = getattr(app.ctx, "direct_routes", None)
    if found is None:
        by_path = {}
        for route in app.router.routes:
            if getattr(route.ctx, "direct", False) and set(route.methods) == {"POST"} and not route.params \
                    and not route.extra.request_middleware:
                by_path["/" + route.path] = (route, route.handler)
        # The head's limit as Sanic applies it (the least of the header size, the buffer and the body limits).
        found = app.ctx.direct_routes = direct.Routes(by_path, frozenset(by_path), Http.HEADER_MAX_SIZE,
                                                      app.ctx.settings.max_body_bytes, bool(app.config.KEEP_ALIVE))
    return found
