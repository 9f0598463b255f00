"""Which requests a connection takes directly (app/http/direct.py): a POST to a create route in plain
HTTP/1.1 whose head came whole (its body may follow), its headers read as Sanic reads them; every
other form is left to Sanic."""
from __future__ import annotations

import pytest

from app.http.direct import take

PATHS = frozenset(("/v1/chat/completions", "/v1/messages"))
BODY = b'{"model":"zowy-1","messages":[]}'


def request(*headers: str, line: str = "POST /v1/chat/completions HTTP/1.1", body: bytes = BODY,
            length: bool = True) -> bytes:
    lines = [line, "Host: gw", *headers] + ([f"Content-Length: {len(body)}"] if length else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sanic_headers(data: bytes) -> list[tuple[str, str]]:
    """The headers as Sanic's own head parsing makes them (sanic/http/http1.py)."""
    head = data[:data.index(b"\r\n\r\n")].decode(errors="surrogateescape")
    return [(name.lower(), value.lstrip()) for name, value in (h.split(":", 1) for h in head.split("\r\n")[1:])]


def test_a_plain_request_is_taken_with_its_headers_as_sanic_reads_them():
    data = request("Authorization:   Bearer zk-1 ", "X-Request-Id: caller-7", "X-Note: caf\u00e9 \u2713",
                   "x-dup: one", "X-Dup: two")
    taken = take(data, PATHS, 8192, 1 << 20)
    assert taken is not None
    assert taken.body == BODY and taken.length == len(BODY) and taken.path == "/v1/chat/completions"
    assert taken.keep_alive
    assert taken.head == data[:data.index(b"\r\n\r\n")]
    assert list(taken.headers.items()) == sanic_headers(data)
    assert taken.headers.get("authorization") == "Bearer zk-1 "
    assert taken.headers.getall("x-dup") == ["one", "two"]


@pytest.mark.parametrize("cut", [1, len(BODY) // 2, len(BODY)])
def test_a_head_whose_body_is_still_coming_is_taken_with_the_part_that_came(cut):
    data = request()[:-cut]
    taken = take(data, PATHS, 8192, 1 << 20)
    assert taken is not None and taken.length == len(BODY) and BODY.startswith(taken.body)
    assert len(taken.body) == max(0, len(BODY) - cut)


def test_a_cut_head_is_left_to_sanic():
    data = request()
    assert take(data[:data.index(b"\r\n\r\n") + 2], PATHS, 8192, 1 << 20) is None


def test_the_query_is_kept_and_the_path_alone_routes():
    taken = take(request(line="POST /v1/messages?beta=true HTTP/1.1"), PATHS, 8192, 1 << 20)
    assert taken is not None and taken.path == "/v1/messages" and taken.target == b"/v1/messages?beta=true"


@pytest.mark.parametrize("value, keep_alive", [("close", False), ("Keep-Alive", True), ("upgrade", False)])
def test_the_connection_header_decides_keep_alive_as_in_sanic(value, keep_alive):
    taken = take(request(f"Connection: {value}"), PATHS, 8192, 1 << 20)
    assert taken is not None and taken.keep_alive is keep_alive


@pytest.mark.parametrize("data", [
    request(line="GET /v1/chat/completions HTTP/1.1", body=b"", length=False),
    request(line="POST /v1/models HTTP/1.1"),
    request(line="POST /v1/chat/completions/ HTTP/1.1"),
    request(line="POST /v1/chat/completions HTTP/1.0"),
    request(line="POST  /v1/chat/completions HTTP/1.1"),
    request(line="POST /v1/chat/completions HTTP/1.1 x"),
    request(line="POST /v1/chat/completions\u00e9 HTTP/1.1"),
    request("Transfer-Encoding: chunked", length=False),
    request("Expect: 100-continue"),
    request("Upgrade: websocket"),
    request("Content-Length: 3"),
    request("Content-Length: +3", length=False),
    request("Content-Length: \u0661", length=False),
    request(length=False),
    request("no colon here"),
    request(" folded: value"),
    request("Bad Name: value"),
    request(": empty name"),
    request() + b"POST",
    request() + request(),
    b"\r\n" + request(),
], ids=["get", "other-route", "trailing-slash", "http-1.0", "double-space", "extra-word", "non-ascii-target",
        "chunked", "expect", "upgrade", "two-lengths", "signed-length", "non-ascii-digit", "no-length", "no-colon",
        "folded", "name-with-space", "empty-name", "bytes-after", "pipelined", "leading-crlf"])
def test_every_other_form_is_left_to_sanic(data):
    assert take(data, PATHS, 8192, 1 << 20) is None


def test_a_body_over_the_limit_or_a_head_over_its_size_is_left_to_sanic():
    assert take(request(), PATHS, 8192, len(BODY)) is not None
    assert take(request(), PATHS, 8192, len(BODY) - 1) is None
    big = request("X-Big: " + "a" * 9000)
    assert take(big, PATHS, 8192, 1 << 20) is None
    assert take(big, PATHS, 16384, 1 << 20) is not None
