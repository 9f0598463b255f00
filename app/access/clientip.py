"""Who is calling: the client address behind trusted proxies, and IP/CIDR allow-lists."""
from __future__ import annotations

import ipaddress
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDRs (``10.0.0.0/8, ::1``); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


@lru_cache(maxsize=4096)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """A key's allow-list, parsed once per worker however many requests use it."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address, nets: tuple[Network, ...]) -> bool:
    return any(address.version == n.version and address in n for n in nets)


MEMO_HEADER = 256


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The peer address, or, when the peer is a trusted proxy, the rightmost address of
    ``X-Forwarded-For`` that is not one of the trusted proxies."""
    # Memoised per worker, so a busy client costs a dictionary lookup instead of parsing addresses
    # on every request; headers past a usual length are not kept (the memo stays small).
    if forwarded_for is not None and len(forwarded_for) > MEMO_HEADER:
        return _client_address(peer, forwarded_for, trusted)
    return _memo_client_address(peer, forwarded_for, trusted)


def _client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    address = _address(peer)
    if address is None or not trusted or not forwarded_for or not _within(address, trusted):
        return str(address) if address is not None else peer
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            # An unreadable hop ends what the trusted proxies vouch for: stop at the last good one.
            break
        address = hop_address
        if not _within(hop_address, trusted):
            break
    return str(address)


_memo_client_address = lru_cache(maxsize=65536)(_client_address)


def throttle_source(address: str) -> str:
    """What sign-in throttling counts as one address: an IPv4 address, or the /64 of an IPv6 one
    (what one subscriber usually holds, so its many addresses are not many guessers)."""
    parsed = _address(address)
    if parsed is None:
        return address
    if parsed.version == 6:
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed)


@lru_cache(maxsize=65536)
def allowed(address: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ``address`` falls in one of ``cidrs``."""
    parsed = _address(address)
    return parsed is not None and _within(parsed, networks(cidrs))
