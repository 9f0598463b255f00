"""HTTP for outgoing webhooks (low-balance alerts): one aiohttp session per worker, receivers
checked by address (every IPv4 spelling, special-purpose ranges) where the connection is made, and
aiohttp's exceptions turned here into one failure whose text tells a customer nothing of our network."""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

MAX_ERROR_TEXT = 200
UNREACHABLE = "the receiver could not be reached"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DeliveryFailed(Exception):
    """Not delivered. ``str()`` is what the customer may see (the receiver's HTTP status, or one text
    for every other failure); ``detail`` says what happened, for the server's log only."""

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(public)
        self.detail = detail or public


def _networks(table: tuple[tuple[str, str], ...]) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(cidr), name) for cidr, name in table)


# IANA's special-purpose registries, and what else no webhook receiver is: checked in order.
_SPECIAL_V4 = _networks((
    ("0.0.0.0/8", "this network"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"), ("192.0.2.0/24", "documentation"), ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"), ("192.88.99.0/24", "6to4 relay anycast"), ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112"), ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
))
_SPECIAL_V6 = _networks((
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("64:ff9b::/96", "NAT64"), ("64:ff9b:1::/48", "NAT64"),
    ("100::/64", "discard-only"), ("2001::/32", "Teredo"), ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"), ("2002::/16", "6to4"), ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"), ("fe80::/10", "link-local"), ("fec0::/10", "site-local"), ("ff00::/8", "multicast"),
))
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_LOCAL_NAMES = ("localhost", ".localhost", ".local", ".internal", ".home.arpa", ".localdomain")
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def ipv4_literal(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``inet_aton`` reads from ``text`` — ``127.1``, ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1`` are all 127.0.0.1 — or None when it reads none."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p, 16) if p[:2] in ("0x", "0X") else int(p, 8) if p.startswith("0") else int(p) for p in parts]
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for i, v in enumerate(leading):
        value |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def address_literal(host: str) -> Address | None:
    """The address a URL's host names literally (IPv4 in any spelling, or IPv6), or None for a name."""
    host = host.strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return ipv4_literal(host.rstrip("."))


def refusal(address: Address) -> str | None:
    """Why no webhook may go to ``address`` (the special-purpose range it is in), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped address"
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        table = _SPECIAL_V6
        if address not in _GLOBAL_UNICAST:
            return next((name for net, name in table if address in net), "not global unicast")
    else:
        table = _SPECIAL_V4
    named = next((name for net, name in table if address in net), None)
    if named is None and not address.is_global:
        named = "not globally reachable"
    return named


def host_refusal(host: str) -> str | None:
    """Why a URL's host (lower case) can receive no webhook, known without resolving it: an address
    literal that is not public, or a name of the local network; None otherwise."""
    literal = address_literal(host)
    if literal is not None:
        return refusal(literal)
    name = host.rstrip(".")
    if "." not in name:
        return "a name without a domain"
    if name.endswith(_LOCAL_NAMES):
        return "a local name"
    return None


class _CheckedResolver(AbstractResolver):
    """Resolves a receiver's name once per connection and gives aiohttp only addresses that passed the
    check. aiohttp connects to exactly these (TLS still verifies the certificate against the name), so a
    name cannot answer one address to the check and another to the connection; one non-public answer
    refuses the name."""

    def __init__(self, private_urls: bool, resolver: AbstractResolver | None = None) -> None:
        self._private_urls = private_urls
        self._resolver = resolver or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        hosts = await self._resolver.resolve(host, port, family)
        if not self._private_urls:
            for found in hosts:
                why = refusal(ipaddress.ip_address(found["host"]))
                if why is not None:
                    raise OSError(f"{host} resolves to {found['host']} ({why})")
        return hosts

    async def close(self) -> None:
        await self._resolver.close()


class WebhookClient:
    """POSTs signed JSON bodies; ``post`` returns on a 2xx answer and raises DeliveryFailed otherwise."""

    def __init__(self, timeout: float, private_urls: bool = False, resolver: AbstractResolver | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._private_urls = private_urls
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = _CheckedResolver(self._private_urls, self._resolver)
        connector = aiohttp.TCPConnector(limit=64, resolver=resolver, use_dns_cache=False, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        assert self._session is not None, "webhook client not started"
        host = urlsplit(url).hostname or ""
        literal = address_literal(host)
        if literal is not None and not self._private_urls:
            # aiohttp connects to an address literal without asking the resolver: judged here.
            why = refusal(literal)
            if why is not None:
                raise DeliveryFailed(UNREACHABLE, f"{host} is {why}")
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return response.status
                raise DeliveryFailed(f"HTTP {response.status} from the receiver")
        except DeliveryFailed:
            raise
        except TimeoutError:
            raise DeliveryFailed(UNREACHABLE, f"{host} did not answer within {self._timeout.total} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            cause = exc.__cause__ or exc  # aiohttp wraps the resolver's or the socket's error
            raise DeliveryFailed(UNREACHABLE, f"{host}: {type(exc).__name__}: {str(cause)[:MAX_ERROR_TEXT]}") from None
