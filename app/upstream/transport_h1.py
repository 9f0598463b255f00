"""HTTP/1.1 to the upstream models on asyncio protocols: a keep-alive pool per host, each request's
head written with one prepared prefix per target, responses parsed by httptools (llhttp, in C)."""
from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from typing import Callable, Mapping
from urllib.parse import urlsplit

import httptools

from ..catalog.models import Target

_HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the socket pauses
_LOW_WATER = 64 * 1024
_END_WAIT = 1.0  # seconds a released stream's connection waits for its body's end to be reused


class ConnectFailed(ConnectionError):
    """No connection to the upstream could be made (refused, unresolvable, TLS, connect timeout)."""


class ProtocolFailed(ConnectionError):
    """The upstream broke HTTP/1.1: an unparsable response, or the connection ended mid-response."""


class _Route:
    """Where a target's requests go, and the part of their head that never changes."""

    __slots__ = ("key", "host", "port", "tls", "prefix")

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url + "/chat/completions")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.key = (self.host, self.port, self.tls)
        default = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default else f"{host}:{self.port}"
        path = url.path + (f"?{url.query}" if url.query else "")
        # Identity only: a compressed answer costs CPU to inflate and saves little on ~KB bodies.
        self.prefix = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nAccept-Encoding: identity\r\n".encode("latin-1")


class _Response:
    """One upstream answer: ``status``, ``headers`` (lowercase names), the body through
    ``content.readany()`` (b"" at its end), then ``release()`` or ``close()``."""

    __slots__ = ("status", "headers", "_conn", "_chunks", "_size", "_waiter", "_done", "_error",
                 "_inflate", "_open", "_sink", "_sink_end", "_ending")

    def __init__(self, conn: "_Connection", status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future | None = None
        self._done = False
        self._error: BaseException | None = None
        self._inflate = None
        self._open = True
        self._sink: Callable[[bytes], None] | None = None
        self._sink_end: Callable[[], None] | None = None
        self._ending: asyncio.TimerHandle | None = None

    @property
    def content(self) -> "_Response":
        """The body's reader: the answer itself (a property, not a field: a field would make every
        answer a reference cycle, left to the cycle collector)."""
        return self

    # -- fed by the connection

    def _feed(self, data: bytes) -> None:
        if self._inflate is not None:
            data = self._inflate.decompress(data)
            if not data:
                return
        waiter = self._waiter
        if waiter is not None and not self._chunks:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(data)
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()

    def _deliver(self) -> None:
        self._sink(self._take())

    def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        if error is None and self._inflate is not None:
            rest = self._inflate.flush()
            if rest:
                self._chunks.append(rest)
        self._error = error
        if self._sink_end is not None:
            if self._chunks:
                self._deliver()  # the read that ended the body
            sink_end, self._sink, self._sink_end = self._sink_end, None, None
            if sink_end is not None:
                sink_end()
        if self._ending is not None:
            self._ending.cancel()
            self._ending = None
            self._conn.finish(self, reuse=error is None and not self._chunks)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self._chunks:
                waiter.set_result(self._take())
            elif error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(b"")

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._size > _LOW_WATER:
            self._conn.resume()
        self._size = 0
        return data

    # -- read by the caller

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some), b"" once it has ended."""
        if self._chunks:
            return self._take()
        if self._done:
            if self._error is not None:
                raise self._error
            return b""
        if not self._open:
            raise ProtocolFailed("the response was closed")
        waiter = self._waiter = self._conn.loop.create_future()
        return await waiter

    def attach(self, on_data: Callable[[bytes], None], on_end: Callable[[], None]) -> bool:
        """Hand what each socket read brings of the body to ``on_data``, in the connection's own
        callback, instead of keeping it for ``readany()``; until ``detach()``, or the body's end or
        failure (then ``on_end()``, and ``readany()`` reads that end). False, and nothing attached,
        when bytes or the end are already waiting for ``readany()``."""
        if self._chunks or self._done or not self._open or self._waiter is not None:
            return False
        self._sink, self._sink_end = on_data, on_end
        return True

    def detach(self) -> None:
        self._sink = self._sink_end = None

    def release(self) -> None:
        """Give the connection back to the pool when the whole body was read; when only the body's
        end is still to come (a stream's last event arrives before the chunked body's end), once it
        has come, within _END_WAIT; else drop it."""
        if self._open:
            self._open = False
            self.detach()
            if not self._done and not self._chunks:
                self._ending = self._conn.loop.call_later(_END_WAIT, self._abandon)
                return
            self._conn.finish(self, reuse=self._done and self._error is None and not self._chunks)

    def _abandon(self) -> None:
        self._ending = None
        self._conn.finish(self, reuse=False)

    def close(self) -> None:
        """Drop the connection; a pending ``readany()`` fails."""
        if self._open:
            self._open = False
            self._end(ProtocolFailed("the response was closed"))
            self._conn.finish(self, reuse=False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one host, carrying one request at a time."""

    __slots__ = ("pool", "loop", "transport", "parser", "response", "_headers", "_head", "_lost", "_keep",
                 "_idle_since", "_paused", "_until_eof", "_counted")

    def __init__(self, pool: "_Pool") -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: _Response | None = None
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future | None = None
        self._lost = False
        self._keep = True
        self._idle_since = 0.0
        self._paused = False
        self._until_eof = False
        self._counted = True

    # -- asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._head is None and self.response is None:
            self._keep = False  # bytes nobody asked for: this connection cannot be trusted again
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolFailed("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"unreadable response from the upstream: {exc}"))
        response = self.response
        if response is not None and response._sink is not None and response._chunks:
            response._deliver()  # the body's pieces of one read (one per HTTP chunk) go on as one

    def eof_received(self):
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._keep = False
        response = self.response
        if response is not None and self._until_eof and exc is None and self._head is None:
            response._end(None)  # a body delimited by the end of the connection
        else:
            error = exc if isinstance(exc, OSError) else ProtocolFailed("the upstream closed the connection")
            if self._head is not None and not self._head.done():
                self._head.set_exception(error)
            if response is not None:
                response._end(error)
        self.pool.lost(self)

    def pause_writing(self) -> None:  # the request is in the transport's buffer whole: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._headers = {}
            return
        headers, self._headers = self._headers, {}
        if self._head is None:
            self._fail(ProtocolFailed("the upstream answered a request it was not sent"))
            return
        response = self.response = _Response(self, status, headers)
        self._until_eof = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        encoding = headers.get("content-encoding")
        if encoding and encoding != "identity":
            if encoding in ("gzip", "x-gzip"):
                response._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                response._inflate = zlib.decompressobj()
            else:
                self._fail(ProtocolFailed(f"the upstream sent a {encoding!r} body, which we did not ask for"))
                return
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            try:
                response._feed(body)
            except zlib.error:
                self._fail(ProtocolFailed("the upstream sent a body that does not inflate"))

    def on_message_complete(self) -> None:
        if self._head is not None:  # interim answer ended; keep waiting for the final one
            return
        self._keep = self.parser.should_keep_alive()
        if self.response is not None:
            self.response._end(None)

    # -- the request

    def _fail(self, error: Exception) -> None:
        self._keep = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self.response is not None:
            self.response._end(error)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future:
        """Write a whole request; the future resolves with the response once its head has arrived."""
        self.response = None
        self._until_eof = False
        head = self._head = self.loop.create_future()
        self.transport.write(data)
        return head

    def pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and not self._lost:
            self._paused = False
            self.transport.resume_reading()

    def finish(self, response: _Response, reuse: bool) -> None:
        """The caller is done with ``response``: keep the connection for the next request or drop it."""
        if self.response is response:
            self.response = None
        if reuse and self._keep and not self._lost:
            if self._paused:
                self.resume()
            self.pool.put(self)
        else:
            self.abandon()

    def abandon(self) -> None:
        self._keep = False
        self._head = None
        if self.transport is not None and not self._lost:
            self.transport.close()
        self.pool.lost(self)

    @property
    def usable(self) -> bool:
        return not self._lost and self._keep and not self.transport.is_closing()


class _Pool:
    """The connections to one host: idle ones reused newest first, at most ``limit`` open at once."""

    def __init__(self, transport: "H1Transport", route: _Route) -> None:
        self.loop = asyncio.get_running_loop()
        self.owner = transport
        self.route = route
        self.limit = transport.per_host
        self.keepalive = transport.keepalive
        self.idle: dict[_Connection, None] = {}
        self.open = 0
        self.waiters: deque[asyncio.Future] = deque()

    async def acquire(self, connect_timeout: float) -> _Connection:
        now = self.loop.time()
        idle = self.idle
        while idle:
            conn, _ = idle.popitem()  # the most recently used: the least likely to have been closed
            if conn.usable and now - conn._idle_since < self.keepalive:
                return conn
            conn.abandon()
        if self.open >= self.limit:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    if waiter.result() is not None:
                        self.put(waiter.result())
                    else:  # the slot reserved for this waiter goes to the next one
                        self.open -= 1
                        self._wake()
                raise
            if conn is not None:
                return conn
        else:
            self.open += 1  # a waiter woken with None had its slot reserved by _wake
        try:
            return await self._connect(connect_timeout)
        except BaseException:
            self.open -= 1
            self._wake()
            raise

    async def _connect(self, timeout: float) -> _Connection:
        route = self.route
        conn = _Connection(self)
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(
                    lambda: conn, route.host, route.port,
                    ssl=self.owner.ssl_context() if route.tls else None,
                    server_hostname=route.host if route.tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"connecting to {route.host}:{route.port} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {route.host}:{route.port}: {exc}") from exc
        return conn

    def put(self, conn: _Connection) -> None:
        """A connection is free again: to the first waiter, else to the idle set."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn._idle_since = self.loop.time()
        self.idle[conn] = None

    def lost(self, conn: _Connection) -> None:
        """A connection is gone (once per connection): its slot goes to a waiter."""
        if not conn._counted:
            return
        conn._counted = False
        self.idle.pop(conn, None)
        self.open -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.open < self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.open += 1  # the slot is the waiter's: it connects
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self.idle):
            conn.abandon()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the transport is closed"))
        self.waiters.clear()


class H1Transport:
    """Sends chat requests over pooled HTTP/1.1 connections; a response has ``status``, ``headers``,
    ``content.readany()``, ``release()`` (back to the pool) and ``close()`` (drop the connection).

    Only the connect timeout is the transport's; the first-byte, idle and total deadlines are the
    caller's. Proxy variables (HTTP(S)_PROXY) are not read, as the aiohttp transport never read them."""

    def __init__(self, per_host: int = 256, keepalive: float = 60.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.per_host = per_host
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._routes: dict[str, _Route] = {}
        self._pools: dict[tuple, _Pool] = {}

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR honoured)
        return self._ssl

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        route = self._routes.get(target.base_url)
        if route is None:
            route = self._routes[target.base_url] = _Route(target.base_url)
        pool = self._pools.get(route.key)
        if pool is None:
            pool = self._pools[route.key] = _Pool(self, route)
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header value holds a line break")
        head = b"%b%bContent-Length: %d\r\n\r\n" % (route.prefix, lines.encode("latin-1"), len(body))
        data = head + body if len(body) < 65536 else None
        while True:
            conn = await pool.acquire(target.timeouts.connect)
            if conn.usable:
                break
            conn.abandon()  # closed while it was handed over: nothing was sent on it, so try another
        if data is not None:
            future = conn.send(data)
        else:
            future = conn.send(head)
            conn.transport.write(body)
        on_sent()
        try:
            return await future
        except BaseException:
            conn.abandon()
            raise

    @staticmethod
    def failure(exc: BaseException) -> str | None:
        """The kind of transport failure ``exc`` is (``connect``, ``timeout``, ``connection``), or
        None when it is not one."""
        if isinstance(exc, ConnectFailed):
            return "connect"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, OSError):
            return "connection"
        return None
