"""Sanic's HTTP/1.1 protocol with a total deadline for each request head.

Sanic's request timeout restarts with every byte received, so a head sent a byte at a time (a
slowloris) could hold a connection forever; here the head must be complete ``header_timeout``
seconds after the connection opened, or after the first byte of a later request on it.
"""
from __future__ import annotations

import asyncio

from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from .errors import HeaderTimeout


class GatewayHttp(Http):
    """Sanic's HTTP/1.1 stream; the body a streamed answer to HEAD writes after its head is dropped
    by a coroutine, as every other writer is (Sanic's is a plain function, which ``send`` awaits)."""

    __slots__ = ()

    async def head_response_ignored(self, data: bytes, end_stream: bool) -> None:
        super().head_response_ignored(data, end_stream)


class GatewayProtocol(HttpProtocol):
    __slots__ = ("_head_timer", "_head_count")
    HTTP_CLASS = GatewayHttp

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm(0)

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)  # set once the connection task runs
        # The first bytes of another request on a kept-alive connection start its head's clock.
        if http is not None and http.stage is Stage.IDLE and self.state["requests_count"] != self._head_count:
            self._arm(self.state["requests_count"])
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
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
