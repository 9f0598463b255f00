"""HTTP for outgoing webhooks (low-balance alerts): one aiohttp session per worker, addresses
checked at connect time, and aiohttp's exceptions turned into one failure of ours here."""
from __future__ import annotations

import ipaddress
import socket
from typing import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

MAX_ERROR_TEXT = 200


class DeliveryFailed(Exception):
    """The receiver could not be reached, or did not answer 2xx; the message says which."""


def public_address(text: str) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, ...)."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _PublicResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses hosts with a non-public address: a customer's URL
    must not reach the gateway's own network (the check sits where the connection is made, so
    a name that changes its answer after a check cannot slip by)."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        hosts = await self._resolver.resolve(host, port, family)
        for found in hosts:
            if not public_address(found["host"]):
                raise OSError(f"{host} resolves to a non-public address")
        return hosts

    async def close(self) -> None:
        await self._resolver.close()


class WebhookClient:
    """POSTs signed JSON bodies; ``post`` returns on a 2xx answer and raises DeliveryFailed otherwise."""

    def __init__(self, timeout: float, private_urls: bool = False) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._private_urls = private_urls
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = None if self._private_urls else _PublicResolver()
        connector = aiohttp.TCPConnector(limit=64, resolver=resolver, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        assert self._session is not None, "webhook client not started"
        if not self._private_urls:
            # aiohttp connects to an address literal without asking the resolver: check it here.
            host = (urlsplit(url).hostname or "").strip("[]")
            try:
                literal = public_address(host)
            except ValueError:
                literal = True
            if not literal:
                raise DeliveryFailed(f"{host} is not a public address")
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return response.status
                raise DeliveryFailed(f"HTTP {response.status} from the receiver")
        except DeliveryFailed:
            raise
        except TimeoutError:
            raise DeliveryFailed("the receiver did not answer in time") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {str(exc)[:MAX_ERROR_TEXT]}") from None
