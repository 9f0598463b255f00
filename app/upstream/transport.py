"""The transport a worker sends upstream requests with (``make_transport``): h1, our HTTP/1.1 client
(transport_h1.py), unless ``ZOWY_UPSTREAM_TRANSPORT`` names another; and the aiohttp client it
replaced, kept as a fallback, with the one place its exceptions are told apart (the other user of
aiohttp is alert delivery, alerts/delivery.py)."""
from __future__ import annotations

import importlib
from typing import Callable, Mapping

import aiohttp
from aiohttp.payload import BytesPayload

from ..catalog.models import Target
from ..core.config import ConfigError
from .transport_h1 import H1Transport


class _Body(BytesPayload):
    """The request body, calling ``on_sent`` the moment it is written to the upstream."""

    def __init__(self, value: bytes, on_sent: Callable[[], None]) -> None:
        super().__init__(value, content_type="application/json")
        self._on_sent = on_sent

    async def write(self, writer) -> None:
        self._on_sent()
        await super().write(writer)

    async def write_with_length(self, writer, content_length: int | None) -> None:
        self._on_sent()
        await super().write_with_length(writer, content_length)


class AiohttpTransport:
    """Sends chat requests over aiohttp's pooled client, one session per worker (the fallback of
    ``ZOWY_UPSTREAM_TRANSPORT=aiohttp``); a response has ``status``, ``headers``, ``content.readany()``,
    ``release()`` (back to the pool) and ``close()`` (drop the connection)."""

    def __init__(self, per_host: int = 256) -> None:
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]):
        assert self._session is not None, "transport not started"
        timeout = self._timeouts.get(target.timeouts.connect)
        if timeout is None:
            timeout = self._timeouts[target.timeouts.connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=target.timeouts.connect
            )
        return await self._session.post(
            target.base_url + "/chat/completions", data=_Body(body, on_sent), headers=headers, timeout=timeout
        )

    @staticmethod
    def failure(exc: BaseException) -> str | None:
        """The kind of transport failure ``exc`` is (``connect``, ``timeout``, ``connection``), or
        None when it is not one."""
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            return "connect"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return "connection"
        return None


def make_transport(name: str, per_host: int):
    """The transport ``ZOWY_UPSTREAM_TRANSPORT`` names: ``h1`` (the default: our HTTP/1.1 client,
    transport_h1.py), ``aiohttp`` (the client it replaced), or ``package.module:Class`` (a candidate
    the bench measures, built with ``per_host``)."""
    if name == "h1":
        return H1Transport(per_host)
    if name == "aiohttp":
        return AiohttpTransport(per_host)
    module, _, cls = name.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(per_host)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"ZOWY_UPSTREAM_TRANSPORT={name!r} names no transport: use aiohttp, h1 or module:Class ({exc})") from None
