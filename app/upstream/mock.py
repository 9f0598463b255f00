"""An in-process transport whose answers a handler writes: the demo model serves through it, and
tests script upstream answers with it (no sockets). A handler takes a ``MockRequest`` and returns a
``MockResponse``; the same handler can also answer behind a real socket (bench/fakes/server.py)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterable, Awaitable, Callable, Iterable, Mapping

import orjson

from ..catalog.models import Target


@dataclass
class MockRequest:
    target: Target
    body: dict
    headers: Mapping[str, str]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


class _Content:
    """What a response body reads like: ``readany()`` returns the next piece, b"" at the end.

    A piece that is an exception is raised instead; ``close()`` makes a pending read fail.
    """

    def __init__(self, body: bytes | Iterable | AsyncIterable) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._feeder: asyncio.Task | None = None
        if isinstance(body, (bytes, bytearray)):
            self._queue.put_nowait(bytes(body))
            self._queue.put_nowait(b"")
        else:
            self._feeder = asyncio.get_running_loop().create_task(self._feed(body))

    async def _feed(self, body) -> None:
        try:
            if hasattr(body, "__aiter__"):
                async for piece in body:
                    self._queue.put_nowait(piece)
            else:
                for piece in body:
                    self._queue.put_nowait(piece)
            self._queue.put_nowait(b"")
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def readany(self) -> bytes:
        piece = await self._queue.get()
        if isinstance(piece, BaseException):
            self._queue.put_nowait(piece)
            raise piece
        if piece == b"":
            self._queue.put_nowait(b"")
        return piece

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
        self._queue.put_nowait(ConnectionResetError("connection closed"))


@dataclass
class MockResponse:
    """An upstream answer: ``body`` is bytes, or pieces (an iterable or async iterable of bytes; a
    piece raised is a failure of the connection there). Header names are lowercase."""

    status: int = 200
    body: bytes | Iterable | AsyncIterable = b""
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False
    closed: bool = False
    _content: _Content | None = field(default=None, init=False, repr=False)

    @property
    def content(self) -> _Content:
        """The body as a client reads it; its pieces are taken from ``body`` from the first read on."""
        if self._content is None:
            self._content = _Content(self.body)
        return self._content

    @classmethod
    def json(cls, doc: object, status: int = 200, headers: dict[str, str] | None = None) -> "MockResponse":
        return cls(status, orjson.dumps(doc), {"content-type": "application/json", **(headers or {})})

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.content.close()  # a read still to come fails, as on a dropped connection


Handler = Callable[[MockRequest], Awaitable[MockResponse]]


class MockTransport:
    """``MockTransport(handler)``: every upstream request goes to ``await handler(request)``; what it
    raises is a transport failure (``ConnectionRefusedError`` a connect error, ``TimeoutError`` a timeout)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        request = MockRequest(target, orjson.loads(body), dict(headers))
        self.requests.append(request)
        sent = True
        try:
            return await self.handler(request)
        except ConnectionRefusedError:
            sent = False  # never reached the upstream
            raise
        finally:
            if sent:
                on_sent()

    @staticmethod
    def failure(exc: BaseException) -> str | None:
        if isinstance(exc, ConnectionRefusedError):
            return "connect"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, OSError):
            return "connection"
        return None
