"""The requests a connection serves without Sanic's request cycle: a POST to a client API's create
route whose head comes whole in one read, in the plainest form of HTTP/1.1 (its body may follow in
later reads). Anything else, or anything in doubt, goes through Sanic (http/connection.py)."""
from __future__ import annotations

from typing import NamedTuple

from sanic.compat import Header

_POST = b"POST "
_VERSION = " HTTP/1.1"
_END = b"\r\n\r\n"
# Headers whose presence sends a request Sanic's way: a body framed otherwise, an interim answer owed,
# a protocol switch.
_ELSEWHERE = frozenset(("transfer-encoding", "expect", "upgrade"))


class Routes(NamedTuple):
    """Where requests may be taken directly: the routes by path, and the limits of the server."""

    by_path: dict
    paths: frozenset[str]
    max_head: int
    max_body: int
    keep_alive: bool


class Head(NamedTuple):
    """A request taken directly: its target, its head as Sanic keeps it, its headers, the body bytes
    that came with the head, and the body's length."""

    target: bytes
    path: str
    head: bytes
    headers: Header
    body: bytes
    length: int
    keep_alive: bool


def take(data: bytes, paths: frozenset[str], max_head: int, max_body: int) -> Head | None:
    """The request ``data`` begins, if it is a POST to one of ``paths`` whose head ``data`` holds
    whole, with a Content-Length body of at most ``max_body`` bytes and nothing after that body;
    else None.

    Headers are read as Sanic reads them (names lower-cased, values stripped on the left), so the
    handler sees the same request either way."""
    if not data.startswith(_POST):
        return None
    end = data.find(_END, 0, max_head)
    if end < 0:
        return None
    head = data[:end]
    lines = head.decode(errors="surrogateescape").split("\r\n")
    line = lines[0]
    if not line.endswith(_VERSION):
        return None
    target = line[5:-9]
    path = target.partition("?")[0]
    if path not in paths or " " in target or not target.isascii():
        return None
    headers = []
    length = None
    keep_alive = True
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            return None  # not a header line of RFC 9112 (a folded line, a name with spaces)
        name, value = name.lower(), value.lstrip()
        if name == "content-length":
            if length is not None or not value.isdigit() or not value.isascii():
                return None
            length = int(value)
        elif name in _ELSEWHERE:
            return None
        elif name == "connection":
            keep_alive = value.lower() == "keep-alive"
        headers.append((name, value))
    start = end + 4
    if length is None or length > max_body or len(data) - start > length:
        return None
    return Head(target.encode(), path, head, Header(headers), data[start:], length, keep_alive)
