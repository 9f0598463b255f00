"""Any upstream handler behind a real socket: each HTTP request becomes a ``SocketRequest`` (a
``MockRequest`` with its method, path, query and raw body) and the handler's ``MockResponse`` goes
back on the wire piece by piece, one write per piece.

What a handler does that only a socket can show:
  * a body piece raised as ``ConnectionError`` cuts the connection there (what was written is
    flushed, then FIN: no chunked terminator, no ``[DONE]``);
  * ``OSError`` raised instead of an answer closes the connection unanswered; ``TimeoutError``
    leaves the request unanswered until the client leaves;
  * a ``content-length`` header is sent as it is (a body cut short of it is a truncated body).

The server keeps what it served, under ``/_fake/``: ``GET /_fake/requests?n=K`` (the last K
records ``{"path", "headers" (lowercased), "body" (parsed JSON, else text), "received_at"}``,
newest last, ``RECORDS_KEPT`` kept), ``GET /_fake/stats`` (``{"requests", "open", "connections",
"disconnects": [{"at", "during", "events_sent"}], "clock"}``), ``POST /_fake/reset`` (clears them,
and calls the handler's ``reset()`` when it has one). Times are ``time.monotonic()``. A disconnect
is a client that left before its answer was complete; aiohttp cancels the handler the moment the
connection is lost (``handler_cancellation=True``), so ``at`` is taken within milliseconds of it.
``control`` adds routes of the handler's own, ``{(method, path): fn(request) -> JSON document}``.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from app.upstream.mock import Handler, MockRequest, MockResponse

MAX_BODY = 64 * 1024 * 1024
RECORDS_KEPT = 200
HANG_MAX = 300.0
_JSON = {"Content-Type": "application/json"}

Control = Callable[["SocketRequest"], Any]


@dataclass
class SocketRequest(MockRequest):
    """An upstream request that came over a socket; ``target`` is None, ``body`` the parsed JSON
    (None when it is not JSON)."""

    method: str = "POST"
    path: str = "/"
    query: Mapping[str, str] = field(default_factory=dict)
    raw: bytes = b""


class _Progress:
    __slots__ = ("phase", "events", "aborted", "response")

    def __init__(self) -> None:
        self.phase = "headers"
        self.events = 0
        self.aborted = False
        self.response: web.StreamResponse | None = None


class _State:
    """What the server served: request records, counters, disconnects."""

    def __init__(self) -> None:
        self.records: collections.deque = collections.deque(maxlen=RECORDS_KEPT)
        self.total = 0
        self.open = 0
        self.disconnects: collections.deque = collections.deque(maxlen=1000)

    def reset(self) -> None:
        self.records.clear()
        self.total = 0
        self.disconnects.clear()


class HandlerServer:
    """``handler`` answering on ``host:port`` (0: a free port); ``await start()``, ``await close()``."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
                 control: Mapping[tuple[str, str], Control] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.state = _State()
        self.control: dict[tuple[str, str], Control] = {
            ("GET", "/_fake/requests"): lambda r: self.requests(int(r.query["n"]) if r.query.get("n") else None),
            ("GET", "/_fake/stats"): lambda r: self.stats(),
            ("POST", "/_fake/reset"): lambda r: self.reset() or {"ok": True},
            **(control or {}),
        }
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def start(self) -> "HandlerServer":
        self._server = web.Server(self._handle, request_factory=self._make_request,
                                  handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "HandlerServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_request(self, message, payload, protocol, writer, task) -> BaseRequest:
        return BaseRequest(message, payload, protocol, writer, task, protocol._loop, client_max_size=MAX_BODY)

    # -- introspection

    def requests(self, n: int | None = None) -> list[dict]:
        """The last ``n`` request records, newest last."""
        records = list(self.state.records)
        return records if n is None else (records[-n:] if n > 0 else [])

    def stats(self) -> dict:
        s = self.state
        return {"requests": s.total, "open": s.open,
                "connections": len(self._server.connections) if self._server else 0,
                "disconnects": list(s.disconnects), "clock": time.monotonic()}

    def reset(self) -> None:
        self.state.reset()
        reset = getattr(self.handler, "reset", None)
        if reset is not None:
            reset()

    # -- serving

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        served = SocketRequest(None, body, request.headers, request.method, request.path, request.query, raw)
        control = self.control.get((request.method, request.path))
        if control is not None:
            doc = control(served)
            if asyncio.iscoroutine(doc):
                doc = await doc
            return web.Response(body=orjson.dumps(doc), headers=_JSON)
        state = self.state
        state.records.append({
            "path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body if body is not None else raw.decode("utf-8", "replace"), "received_at": time.monotonic(),
        })
        state.total += 1
        state.open += 1
        progress = _Progress()
        try:
            try:
                answer = await self.handler(served)
            except TimeoutError:
                await asyncio.sleep(HANG_MAX)
                return await self._abort(request, progress)
            except OSError:
                return await self._abort(request, progress)
            return await self._write(request, answer, progress)
        except asyncio.CancelledError:
            if not progress.aborted:
                self._disconnected(progress)
            raise
        except ConnectionError:
            if not progress.aborted:
                self._disconnected(progress)
            return progress.response or web.Response(status=499)
        finally:
            state.open -= 1

    def _disconnected(self, progress: _Progress) -> None:
        self.state.disconnects.append({"at": time.monotonic(), "during": progress.phase, "events_sent": progress.events})

    async def _write(self, request: BaseRequest, answer: MockResponse, progress: _Progress) -> web.StreamResponse:
        body = answer.body
        if isinstance(body, (bytes, bytearray)):
            return web.Response(status=answer.status, headers=answer.headers, body=body)
        headers = dict(answer.headers)
        length = headers.pop("content-length", None)
        response = progress.response = web.StreamResponse(status=answer.status, headers=headers)
        if length is not None:
            response.content_length = int(length)
        await response.prepare(request)
        progress.phase = "body"
        write = response.write
        pieces = _each(body)
        try:
            while True:
                try:
                    piece = await pieces.__anext__()
                except StopAsyncIteration:
                    break
                except ConnectionError:
                    return await self._abort(request, progress)
                await write(piece)
                progress.events += 1
        finally:
            await pieces.aclose()
        await response.write_eof()
        return response

    async def _abort(self, request: BaseRequest, progress: _Progress) -> web.StreamResponse:
        """Close the connection under the response; aiohttp then cancels this handler."""
        progress.aborted = True
        transport = request.transport
        if transport is not None:
            transport.close()  # flushes what was written, then FIN
        await asyncio.sleep(5)
        return progress.response or web.Response(status=499)


async def _each(body) -> AsyncIterator[bytes]:
    """The pieces of a body given as an iterable or an async iterable (closed however the reading ends)."""
    if not hasattr(body, "__aiter__"):
        for piece in body:
            yield piece
        return
    pieces = body.__aiter__()
    try:
        async for piece in pieces:
            yield piece
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0, **kwargs) -> HandlerServer:
    """Start ``handler`` behind a socket in the running loop."""
    return await HandlerServer(handler, host, port, **kwargs).start()


class ServerThread:
    """A HandlerServer on an event loop of its own, in a thread: for tests that are not async."""

    def __init__(self, server: HandlerServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, timeout: float = 10.0) -> "ServerThread":
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # reported to start()'s caller
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.close())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{id(self)}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the upstream server did not start")
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
