"""Upstream transport candidates that are measured but not part of the product: aiohttp tuned, and
pyreqwest and pyqwest (both reqwest/hyper in Rust). Each has the interface of app/upstream/transport.py; the gateway
runs one with ``ZOWY_UPSTREAM_TRANSPORT=bench.transports:<Class>``, the bare proxy with
``--transport``. ``SSL_CERT_FILE`` names the CA a TLS upstream is trusted by, as for the others."""
from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Callable, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from app.catalog.models import Target
from app.upstream.transport import AiohttpTransport, _Body

TRANSPORTS = {
    "aiohttp": "aiohttp",  # the gateway's fallback, app/upstream/transport.py (its default before h1)
    "aiohttp-tuned": "bench.transports:AiohttpTunedTransport",
    "pyreqwest": "bench.transports:PyreqwestTransport",
    "pyqwest": "bench.transports:PyqwestTransport",
    "h1": "h1",  # the gateway's default, app/upstream/transport_h1.py
}


class AiohttpTunedTransport(AiohttpTransport):
    """aiohttp's client with what per-request work it lets us skip: the URL parsed once per target,
    the headers handed over as a CIMultiDict, no automatic headers (User-Agent, Accept-Encoding:
    answers come uncompressed), no trace hooks; the body stays a ready payload (no registry lookup)."""

    def __init__(self, per_host: int = 256) -> None:
        super().__init__(per_host)
        self._urls: dict[str, URL] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        url = self._urls.get(target.base_url)
        if url is None:
            url = self._urls[target.base_url] = URL(target.base_url + "/chat/completions")
        timeout = self._timeouts.get(target.timeouts.connect)
        if timeout is None:
            timeout = self._timeouts[target.timeouts.connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=target.timeouts.connect
            )
        return await self._session._request(
            "POST", url, data=_Body(body, on_sent), headers=CIMultiDict(headers), timeout=timeout
        )


class _ReqwestResponse:
    """A pyreqwest streamed response behind the transport's response interface."""

    __slots__ = ("status", "headers", "content", "_request", "_response", "_read", "_closing", "_reader")

    def __init__(self, request, response) -> None:
        self.status = response.status
        self.headers = response.headers  # case-insensitive, like aiohttp's
        self.content = self
        self._request = request
        self._response = response
        self._read = response.body_reader.read_chunk
        self._closing: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None

    async def readany(self) -> bytes:
        if self._closing is not None:
            raise ConnectionResetError("the response was closed")
        # Closing the response does not end a pending read_chunk(): close() cancels the reading
        # task instead, and the cancellation becomes the connection error the caller expects.
        self._reader = asyncio.current_task()
        try:
            chunk = await self._read()
        except asyncio.CancelledError:
            if self._closing is not None and self._reader is not None and self._reader.uncancel() == 0:
                raise ConnectionResetError("the response was closed") from None
            raise
        finally:
            self._reader = None
        return b"" if chunk is None else chunk.to_bytes()

    def release(self) -> None:
        # A body read to its end has already given its connection back to hyper's pool.
        self._request = None

    def close(self) -> None:
        """Drop the connection: exiting the request's context is a coroutine, so it runs as a task."""
        if self._closing is None and self._request is not None:
            self._closing = asyncio.get_running_loop().create_task(self._request.__aexit__(None, None, None))
            if self._reader is not None and self._reader is not asyncio.current_task():
                self._reader.cancel()


class PyreqwestTransport:
    """pyreqwest's async client (reqwest over hyper, rustls, on its own tokio thread).

    What it cannot keep: the connect timeout is the client's (the first target's, 5 s), not each
    target's; its connection limit counts requests in flight over all hosts, not connections per
    host; ``on_sent`` is called when the request did not fail to connect (hyper gives no hook at
    the moment the body is written). Proxy variables are ignored (``no_proxy``), as aiohttp ignores them."""

    def __init__(self, per_host: int = 256, connect_timeout: float = 5.0) -> None:
        self._per_host = per_host
        self._connect = connect_timeout
        self._client = None

    async def start(self) -> None:
        from pyreqwest.client import ClientBuilder

        builder = (ClientBuilder().no_proxy().follow_redirects(False).error_for_status(False)
                   .connect_timeout(timedelta(seconds=self._connect)).pool_idle_timeout(timedelta(seconds=60))
                   .pool_max_idle_per_host(self._per_host).max_connections(self._per_host)
                   .gzip(False).brotli(False).zstd(False).deflate(False))
        ca = os.environ.get("SSL_CERT_FILE")
        if ca:
            with open(ca, "rb") as f:
                builder = builder.add_root_certificate_pem(f.read())
        self._client = builder.build()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        from pyreqwest.exceptions import ConnectError, ConnectTimeoutError

        # Its streamed response waits until this many body bytes are buffered (64 KiB by default)
        # or the body ends: a stream must be handed over at its first byte.
        limit = 1 if headers.get("Accept") == "text/event-stream" else 65536
        request = (self._client.post(target.base_url + "/chat/completions").headers(headers)
                   .body_bytes(body).streamed_read_buffer_limit(limit).build_streamed())
        try:
            response = await request.__aenter__()
        except (ConnectError, ConnectTimeoutError):
            raise
        except BaseException:
            on_sent()
            raise
        on_sent()
        return _ReqwestResponse(request, response)

    @staticmethod
    def failure(exc: BaseException) -> str | None:
        from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, RequestError

        if isinstance(exc, (ConnectError, ConnectTimeoutError)):
            return "connect"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, (RequestError, OSError)):
            return "connection"
        return None


class _QwestResponse:
    """A pyqwest response behind the transport's response interface."""

    __slots__ = ("status", "headers", "content", "_response", "_next", "_closing")

    def __init__(self, response) -> None:
        self.status = response.status
        self.headers = response.headers  # case-insensitive
        self.content = self
        self._response = response
        self._next = response.content.__aiter__().__anext__
        self._closing: asyncio.Task | None = None

    async def readany(self) -> bytes:
        try:
            return bytes(await self._next())  # pieces come as memoryviews
        except StopAsyncIteration:
            return b""

    def release(self) -> None:
        self._response = None  # a body read to its end has given its connection back

    def close(self) -> None:
        """Drop the connection (a coroutine, run as a task); a pending read then fails (ReadError)."""
        if self._closing is None and self._response is not None:
            self._closing = asyncio.ensure_future(self._response.aclose())


class PyqwestTransport:
    """pyqwest's transport (reqwest over hyper, rustls, on a tokio thread).

    What it cannot keep: proxy variables (HTTP(S)_PROXY) are honoured and cannot be switched off
    short of naming a proxy (aiohttp ignores them); the connect timeout is the transport's (5 s),
    not each target's; its connection limit is per resolved address; ``on_sent`` is called when
    the request did not fail to connect."""

    def __init__(self, per_host: int = 256, connect_timeout: float = 5.0) -> None:
        self._per_host = per_host
        self._connect = connect_timeout
        self._transport = None

    async def start(self) -> None:
        from pyqwest import HTTPTransport, HTTPVersion

        ca = os.environ.get("SSL_CERT_FILE")
        pem = None
        if ca:
            with open(ca, "rb") as f:
                pem = f.read()
        self._transport = HTTPTransport(
            tls_ca_cert=pem, tls_include_system_certs=True, http_version=HTTPVersion.HTTP1,
            connect_timeout=self._connect, pool_idle_timeout=60.0, pool_max_idle_per_host=self._per_host,
            max_connections_per_address=self._per_host, enable_gzip=False, enable_brotli=False,
            enable_zstd=False, follow_redirects=False, enable_otel=False,
        )

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        from pyqwest import Headers, Request

        try:
            response = await self._transport.execute(
                Request("POST", target.base_url + "/chat/completions", headers=Headers(headers), content=body))
        except BaseException as exc:
            if self.failure(exc) != "connect":
                on_sent()
            raise
        on_sent()
        return _QwestResponse(response)

    @staticmethod
    def failure(exc: BaseException) -> str | None:
        from pyqwest import ReadError, RemoteProtocolError, WriteError

        if isinstance(exc, ConnectionError) and not isinstance(exc, (ReadError, WriteError)):
            return "connect"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, (ReadError, WriteError, RemoteProtocolError, OSError)):
            return "connection"
        return None
