"""Sanic's HTTP/1.1 protocol with total deadlines for each request's head and body.

Sanic's request timeout restarts with every byte received, so a head or a body sent a byte at a
time (a slowloris) could hold a connection forever. Here the head must be complete
``header_timeout`` seconds after the connection opened, or after the first byte of a later request
on it; and the body, on every route, ``body_timeout`` seconds after its head (a body still arriving
then gets 408 and the connection is closed, also when it was only being read to be discarded).
"""
from __future__ import annotations

import asyncio

from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from ..core.errors import HeaderTimeout, RequestTimeout


class GatewayHttp(Http):
    """Sanic's HTTP/1.1 stream; the body a streamed answer to HEAD writes after its head is dropped
    by a coroutine, as every other writer is (Sanic's is a plain function, which ``send`` awaits)."""

    __slots__ = ()

    async def head_response_ignored(self, data: bytes, end_stream: bool) -> None:
        super().head_response_ignored(data, end_stream)


class GatewayProtocol(HttpProtocol):
    __slots__ = ("_head_timer", "_head_count", "_body_timer")
    HTTP_CLASS = GatewayHttp

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm(0)
        self.request_handler = self._handle

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)  # set once the connection task runs
        # The first bytes of another request on a kept-alive connection start its head's clock.
        if http is not None and http.stage is Stage.IDLE and self.state["requests_count"] != self._head_count:
            self._arm(self.state["requests_count"])
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        super().connection_lost(exc)

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
            self._body_timer = self.loop.call_later(
                self.app.ctx.settings.body_timeout, self._body_expired, self.state["requests_count"])
        return self.app.handle_request(request)

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
