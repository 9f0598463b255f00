"""What an HTTP client library will not send: Content-Length mismatches, smuggling-shaped framing,
broken chunked bodies, malformed request lines and header lines, non-ASCII credentials, pipelining,
stalls. Sent on raw sockets; each answer must be a non-5xx (an error in the OpenAI envelope) or a
closed connection, and the gateway must live on."""
from __future__ import annotations

import json
import time

from tests.conftest import leaks
from tests.fuzz.harness import TALLIES, FuzzFailure, parse_raw, raw_exchange

BODY = b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}]}'
CHAT = b"/api/v1/chat/completions"


def request(headers: list[bytes], body: bytes = BODY, method: bytes = b"POST", path: bytes = CHAT,
            version: bytes = b"HTTP/1.1", key: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" " + version, b"Host: fuzz"]
    if key:
        lines.append(b"Authorization: Bearer " + key)
    lines += headers
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def cases(key: bytes) -> list[tuple[str, bytes, dict]]:
    json_ct = b"Content-Type: application/json"
    n = len(BODY)
    return [
        ("cl-short", request([json_ct, b"Content-Length: %d" % (n - 10)], key=key), {}),
        ("cl-long-eof", request([json_ct, b"Content-Length: %d" % (n + 100)], key=key), {"half_close": True}),
        ("cl-long-stall", request([json_ct, b"Content-Length: %d" % (n + 100)], key=key), {"expect": (408,)}),
        ("cl-nonnumeric", request([json_ct, b"Content-Length: abc"], key=key), {"reject": True}),
        ("cl-negative", request([json_ct, b"Content-Length: -1"], key=key), {"reject": True}),
        ("cl-plus", request([json_ct, b"Content-Length: +%d" % n], key=key), {"reject": True}),
        ("cl-huge", request([json_ct, b"Content-Length: 99999999999999999999999999"], key=key), {}),
        ("cl-over-limit", request([json_ct, b"Content-Length: 300000"], key=key), {}),
        ("cl-duplicate-conflict", request([json_ct, b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 1)], key=key), {"reject": True}),
        ("cl-duplicate-same", request([json_ct, b"Content-Length: %d" % n, b"Content-Length: %d" % n], key=key), {}),
        ("cl-list", request([json_ct, b"Content-Length: %d, %d" % (n, n)], key=key), {}),
        ("cl-and-te", request([json_ct, b"Content-Length: 4", b"Transfer-Encoding: chunked"], chunked(BODY), key=key), {"reject": True}),
        ("te-and-cl", request([json_ct, b"Transfer-Encoding: chunked", b"Content-Length: 4"], chunked(BODY), key=key), {"reject": True}),
        ("te-good-extensions", request([json_ct, b"Transfer-Encoding: chunked"],
                                       b"5;ext=1\r\n" + BODY[:5] + b"\r\n" + chunked(BODY[5:]), key=key), {}),
        ("te-bad-size", request([json_ct, b"Transfer-Encoding: chunked"], b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", key=key), {"reject": True}),
        ("te-size-overflow", request([json_ct, b"Transfer-Encoding: chunked"], b"ffffffffffffffffffff\r\n" + BODY + b"\r\n0\r\n\r\n", key=key), {"reject": True}),
        ("te-size-short", request([json_ct, b"Transfer-Encoding: chunked"], b"3\r\n" + BODY + b"\r\n0\r\n\r\n", key=key), {"reject": True}),
        ("te-unterminated-eof", request([json_ct, b"Transfer-Encoding: chunked"], b"%x\r\n" % n + BODY + b"\r\n", key=key), {"half_close": True}),
        ("te-gzip-chunked", request([json_ct, b"Transfer-Encoding: gzip, chunked"], chunked(BODY), key=key), {}),
        ("te-gzip-only", request([json_ct, b"Transfer-Encoding: gzip"], BODY, key=key), {"half_close": True}),
        ("te-CHUNKED-case", request([json_ct, b"Transfer-Encoding: CHUNKED"], chunked(BODY), key=key), {}),
        ("te-over-limit", request([json_ct, b"Transfer-Encoding: chunked"], chunked(b" " * 200_000, b" " * 100_000), key=key), {}),
        ("header-nul", request([json_ct, b"Content-Length: %d" % n, b"X-A: a\x00b"], key=key), {}),
        ("header-bare-cr", request([json_ct, b"Content-Length: %d" % n, b"X-Request-Id: a\rb"], key=key), {}),
        ("header-no-colon", request([json_ct, b"Content-Length: %d" % n, b"Garbage line"], key=key), {"reject": True}),
        ("header-space-in-name", request([b"Content Type: application/json", b"Content-Length: %d" % n], key=key), {"reject": True}),
        ("header-space-before-colon", request([b"Content-Type : application/json", b"Content-Length: %d" % n], key=key), {"reject": True}),
        ("header-obs-fold", request([json_ct, b"Content-Length: %d" % n, b"X-A: a", b" folded"], key=key), {"reject": True}),
        ("header-9000", request([json_ct, b"Content-Length: %d" % n, b"X-Big: " + b"z" * 9000], key=key), {"expect": (400, 431)}),
        ("header-empty-name", request([json_ct, b"Content-Length: %d" % n, b": value"], key=key), {}),
        ("header-ct-padded", request([b"Content-Type:    application/json   ", b"Content-Length: %d" % n], key=key), {}),
        ("header-ct-duplicated", request([b"Content-Type: text/plain", json_ct, b"Content-Length: %d" % n], key=key), {}),
        ("header-host-duplicated", request([json_ct, b"Host: other", b"Content-Length: %d" % n], key=key), {}),
        ("auth-latin1", request([json_ct, b"Content-Length: %d" % n, b"Authorization: Bearer zk-\xff\xfe"]), {"expect": (401,)}),
        ("auth-utf8", request([json_ct, b"Content-Length: %d" % n, b"Authorization: Bearer \xd0\xbf\xd1\x80"]), {"expect": (401,)}),
        ("auth-overlong-utf8", request([json_ct, b"Content-Length: %d" % n, b"Authorization: Bearer \xc0\xaf\xed\xa0\x80"]), {"expect": (401,)}),
        ("auth-trailing-space", request([json_ct, b"Content-Length: %d" % n, b"Authorization: Bearer " + key + b"   "]), {}),
        ("auth-duplicated", request([json_ct, b"Content-Length: %d" % n, b"Authorization: Bearer zk-bad", b"Authorization: Bearer " + key]), {}),
        ("request-id-latin1", request([json_ct, b"Content-Length: %d" % n, b"X-Request-Id: \xe9t\xe9"], key=key), {}),
        ("expect-100", request([json_ct, b"Content-Length: %d" % n, b"Expect: 100-continue"], key=key), {}),
        ("expect-junk", request([json_ct, b"Content-Length: %d" % n, b"Expect: 999-nope"], key=key), {}),
        ("http-9.9", request([json_ct, b"Content-Length: %d" % n], version=b"HTTP/9.9", key=key), {"reject": True}),
        ("http-1.0-no-host", b"GET /healthz HTTP/1.0\r\n\r\n", {}),
        ("http-0.9", b"GET /healthz\r\n\r\n", {"reject": True}),
        ("method-weird", request([json_ct, b"Content-Length: %d" % n], method=b"BREW", key=key), {}),
        ("method-lowercase", request([json_ct, b"Content-Length: %d" % n], method=b"post", key=key), {}),
        ("path-nul", request([], b"", method=b"GET", path=b"/\x00"), {}),
        ("path-no-slash", request([], b"", method=b"GET", path=b"healthz"), {}),
        ("path-absolute-form", request([], b"", method=b"GET", path=b"http://example.com/healthz"), {}),
        ("path-asterisk", request([], b"", method=b"OPTIONS", path=b"*"), {}),
        ("path-8k", request([], b"", method=b"GET", path=b"/" + b"a" * 9000), {}),
        ("path-latin1", request([], b"", method=b"GET", path=b"/api/v1/models/\xff\xfe"), {}),
        ("path-traversal-admin", request([], b"", method=b"GET", path=b"/api/v1/models/../../admin/v1/accounts"), {}),
        ("bare-lf", b"POST /api/v1/chat/completions HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: %d\n\n" % n + BODY, {}),
        ("leading-crlf", b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", {}),
        ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)), {"half_close": True}),
        ("random-bytes", bytes(range(256)) * 4, {"half_close": True}),
        ("pipelined", request([], b"", method=b"GET", path=b"/healthz") + request([b"Content-Length: 2"], b"{}", method=b"GET", path=b"/readyz")
         + request([json_ct, b"Content-Length: %d" % n, b"Connection: close"], key=key), {"until_close": True, "responses": 3}),
        ("slow-headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", {}),
    ]


def test_fuzz_raw_sockets(fuzz):
    key = fuzz.key.encode()
    tally = TALLIES["raw-sockets"]
    before = fuzz.ledger_snapshot()
    outcomes, served = {}, 0
    for name, data, options in cases(key):
        started = time.perf_counter()
        received = raw_exchange(fuzz.gateway.process.port, data, timeout=6.0, half_close=options.get("half_close", False),
                                until_close=options.get("until_close", False))
        tally.seconds += time.perf_counter() - started
        tally.cases += 1
        status, headers, body = parse_raw(received)
        tally.statuses[status] += 1  # 0: the connection closed without an answer
        outcomes[name] = status
        where = f"[raw {name}] -> {received[:600]!r}"
        if status >= 500:
            raise FuzzFailure(f"5xx: {where}")
        if leaks(received, fuzz.hosts):
            raise FuzzFailure(f"leak: {where}")
        if "expect" in options and status not in options["expect"]:
            raise FuzzFailure(f"expected {options['expect']}: {where}")
        if options.get("reject") and 200 <= status < 300:
            raise FuzzFailure(f"served a request whose framing is ambiguous or invalid: {where}")
        if status and b"x-request-id" not in headers:
            raise FuzzFailure(f"no x-request-id: {where}")
        if status >= 400:
            error = json.loads(body).get("error")
            if set(error) != {"message", "type", "param", "code"}:
                raise FuzzFailure(f"not the OpenAI envelope: {where}")
        if "responses" in options and received.count(b"HTTP/1.1 ") != options["responses"]:
            raise FuzzFailure(f"expected {options['responses']} responses: {where}")
        served += received.count(b'"object":"chat.completion"')
        fuzz.alive()
    # What was served went upstream once each; nothing else left a ledger trace.
    expected = (before[0] + served, before[1] + served)
    deadline = time.monotonic() + 5
    while fuzz.ledger_snapshot() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fuzz.ledger_snapshot() == expected, (before, fuzz.ledger_snapshot(), served, outcomes)
