"""Generated headers, methods and paths (admin API included) against a running gateway.

Headers: Content-Type and Authorization variants (no key, broken keys, the admin token, duplicates),
junk X-Request-Id, odd, duplicated and oversized headers, chunked uploads. Routes: every method on
every route and on junk paths, with no key, the fuzzing key, the admin token or junk. Admin bodies:
documents from the admin schemas the gateway serves, mutated, with the admin token.
"""
from __future__ import annotations

import base64
import copy
import re
import urllib.parse

import httpx2
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.fuzz import strategies as fs
from tests.fuzz.conftest import batch, fuzz_settings
from tests.fuzz.harness import FuzzFailure

_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
HEADER_VALUE_JUNK = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def header_value(text: str) -> bytes:
    """Bytes h11 will put on the wire as a header value (raw sockets cover the rest)."""
    return HEADER_VALUE_JUNK.sub(b"", text.encode("utf-8", "surrogatepass")).strip(b" \t")


def token(text: str) -> bytes:
    return re.sub(rb"[^A-Za-z0-9!#$%&'*+.^_`|~-]", b"", text.encode("utf-8", "surrogatepass"))


CONTENT_TYPES = (
    None, b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON", b"Application/Json;charset=UTF-8",
    b"application/json; charset=latin-1", b"application/json; charset=utf-16", b"application/jsonp", b"application/json-seq",
    b"text/json", b"text/plain", b"", b"*/*", b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded",
    b"application/octet-stream", b"application/json, text/plain", b"application/json;;;", b"application/json; charset=\xff",
)


def authorizations(key: str, admin: str) -> st.SearchStrategy[list[bytes]]:
    k = key.encode()
    single = st.sampled_from((
        b"Bearer " + k, b"bearer " + k, b"BEARER " + k, b"Bearer  " + k, b"Bearer " + k + b" ", b"Bearer\t" + k,
        b"Bearer " + k + b"x", b"Bearer " + k[:-1], b"Bearer " + k.upper(), b"Bearer", b"Bearer ", b"Bearer  ", k,
        b"Token " + k, b"Basic " + base64.b64encode(b"user:" + k), b"Bearer zk-" + b"A" * 40, b"Bearer " + b"A" * 256,
        b"Bearer " + b"A" * 257, b"Bearer " + b"zk-" * 1000, b"Bearer zk-\xff\xfe", b"Bearer \xd0\xbf\xd1\x80\xd0\xb8",
        b"Bearer " + admin.encode(), b"Bearer " + k + b", Bearer " + k, b"Bearer null", b"Bearer undefined", b"Bearer ''",
    ))
    junk = st.builds(lambda t: b"Bearer " + header_value(t), fs.texts)
    one = st.one_of(st.just(b"Bearer " + k), single, single, junk)
    return st.one_of(st.just([]), st.lists(one, min_size=1, max_size=1), st.lists(one, min_size=1, max_size=1),
                     st.lists(one, min_size=2, max_size=3))


REQUEST_IDS = (b"trace-1", b"a" * 128, b"a" * 129, b"with space", b"", b"../../etc/passwd", b"id;drop", b"\xc3\xa9t\xc3\xa9",
               b"x" * 4000, b"0", b"-", b"trace:1.2_3-4", b"%0d%0aSet-Cookie:x", b"<script>")


def test_fuzz_headers(fuzz):
    """A valid body under generated headers: the key, content type, request id and junk headers vary."""
    body = fs.dumps({"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}]})
    stream_body = fs.dumps({"model": "zowy-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    junk_header = st.tuples(st.text(st.characters(codec="ascii"), min_size=1, max_size=20).map(token).filter(bool),
                            fs.texts.map(header_value))
    headers = st.fixed_dictionaries({
        "authorization": authorizations(fuzz.key, fuzz.gateway.admin_token),
        "content_type": st.one_of(st.just([b"application/json"]), st.lists(st.sampled_from(CONTENT_TYPES), min_size=1, max_size=2)),
        "request_ids": st.lists(st.one_of(st.sampled_from(REQUEST_IDS), fs.texts.map(header_value)), max_size=2),
        "junk": st.lists(junk_header, max_size=4),
        "bulk": st.sampled_from((0,) * 9 + (1, 2, 3)),
        "chunked": st.booleans(),
        "stream": st.booleans(),
    })

    @fuzz_settings(0.16)
    @given(h=headers)
    def run(h):
        sent: list[tuple[bytes, bytes]] = [(b"Authorization", a) for a in h["authorization"]]
        sent += [(b"Content-Type", c) for c in h["content_type"] if c is not None]
        sent += [(b"X-Request-Id", r) for r in h["request_ids"]]
        sent += h["junk"]
        sent = [(name, value.strip(b" \t")) for name, value in sent]  # h11 refuses edge whitespace: see test_fuzz_raw
        if h["bulk"] == 1:
            sent.append((b"X-Big", b"z" * 9000))  # over the header limit
        elif h["bulk"] == 2:
            sent += [(b"X-Many-%d" % i, b"v" * 60) for i in range(150)]
        elif h["bulk"] == 3:
            sent.append((b"X-Near", b"n" * 7000))  # under it
        payload = stream_body if h["stream"] else body
        response = fuzz.send("headers", "POST", "/api/v1/chat/completions", sent, payload, chunked=h["chunked"])
        echoed = response.headers.get("x-client-request-id")
        if echoed is not None:
            raw = echoed.encode("latin-1")
            if not _CLIENT_ID.fullmatch(raw) or raw not in h["request_ids"]:
                raise FuzzFailure(f"x-client-request-id {echoed!r} echoed from {h['request_ids']!r}")

    with batch(fuzz):
        run()


METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO", "get")
ROUTES = (
    "/api/v1/chat/completions", "/v1/chat/completions", "/api/v1/chat/completions/", "/api/v1/chat", "/api/v1/chat/completions?stream=true",
    "/API/V1/CHAT/COMPLETIONS", "/api/v1/chat/completions;x=1", "/api/v1/chat/completions%00", "//api/v1/chat/completions",
    "/api/v1/models", "/v1/models", "/api/v1/models/{junk}", "/v1/models/{junk}", "/api/v1/models/zowy-1", "/api/v1/models/zowy-1/x",
    "/api/v1/models/..%2F..%2Fadmin%2Fv1%2Faccounts", "/api/v1/usage", "/v1/usage", "/api/v1/usage?since={junk}&until={junk}",
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/openapi.json/x", "/", "/{junk}", "/{junk}/{junk}", "/{long}",
    "/admin", "/admin/v1", "/admin/v1/", "/admin/v1/accounts", "/admin/v1/accounts/{account}", "/admin/v1/accounts/{account}/keys",
    "/admin/v1/accounts/{account}/packages", "/admin/v1/accounts/{account}/usage?since={junk}&until={junk}",
    "/admin/v1/keys/{key}/revoke", "/admin/v1/keys/{key}/limits", "/admin/v1/reconcile", "/admin/v1/reconcile?x={junk}",
    "/api/v1/../admin/v1/accounts", "/static/../../etc/passwd", "/api/v1/models?{junk}={junk}",
    "/api/v1/auth/invite/accept", "/api/v1/auth/sessions", "/api/v1/auth/sessions/current", "/api/v1/account",
    "/api/v1/account/alerts", "/api/v1/keys", "/api/v1/keys/{key}", "/api/v1/keys/{key}/revoke", "/api/v1/redeem",
    "/api/v1/ledger?cursor={junk}&limit={junk}&since={junk}", "/api/v1/ledger.csv?until={junk}", "/webhooks/topup",
    "/admin/v1/keys/{key}", "/admin/v1/accounts/{account}/owners", "/admin/v1/accounts/{account}/invites",
    "/admin/v1/accounts/{account}/alerts", "/admin/v1/codes", "/admin/v1/codes/{junk}",
    "/admin/v1/audit?account={account}&cursor={junk}&limit={junk}&since={junk}",
)
TIMES = ("0", "-1", "1e308", "1e400", "nan", "inf", "-inf", "2024-01-01", "2024-13-45", "0001-01-01T00:00:00+23:59",
         "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59.999999+00:00", "2024-01-01T00:00:00Z", "1_000", "0x10", "", " ",
         "2024-01-01T25:00", "\u0661\u0662", "２０２４-01-01")


def test_fuzz_routes(fuzz):
    """Every method on every route and on junk paths, under every kind of credential."""
    segment = st.one_of(
        fs.texts.map(lambda t: urllib.parse.quote(t, safe="")),
        st.sampled_from(("%ff", "%00", "%2e%2e", "..", ".", "%", "%zz", "zowy-1", "key_0000", "acct_0000", "%252e")),
        st.sampled_from(TIMES).map(lambda t: urllib.parse.quote(t, safe="")),
    )
    cases = st.fixed_dictionaries({
        "method": st.one_of(st.sampled_from(("GET", "POST")), st.sampled_from(METHODS)),
        "route": st.sampled_from(ROUTES),
        "junk": segment,
        "auth": st.sampled_from(("none", "key", "admin", "junk", "admin-lower")),
        "victim": st.booleans(),
        "body": st.one_of(st.none(), st.just(b"{}"), st.builds(fs.dumps, fs.json_values), st.binary(max_size=64)),
    })

    @fuzz_settings(0.14)
    @given(case=cases)
    def run(case):
        path = case["route"].format(
            junk=case["junk"], long="a" * 6000,
            account=fuzz.victim["account"] if case["victim"] else case["junk"],
            key=fuzz.victim["key_id"] if case["victim"] else case["junk"],
        )
        headers = {"Content-Type": "application/json"}
        token = {"key": fuzz.key, "admin": fuzz.gateway.admin_token, "junk": "zk-junk",
                 "admin-lower": fuzz.gateway.admin_token.upper()}.get(case["auth"])
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            httpx2.URL(fuzz.gateway.url + path)
        except httpx2.InvalidURL:
            assume(False)
        fuzz.send("routes", case["method"], path, headers, case["body"] if case["method"] not in ("GET", "HEAD") else None)

    with batch(fuzz):
        run()


ADMIN_BODIES = {
    "AdminAccount": ("POST", "/admin/v1/accounts"),
    "AdminKey": ("POST", "/admin/v1/accounts/{account}/keys"),
    "AdminLimits": ("PUT", "/admin/v1/keys/{key}/limits"),
    "AdminPackage": ("POST", "/admin/v1/accounts/{account}/packages"),
    "KeyControls": ("PATCH", "/admin/v1/keys/{key}"),
    "AdminOwner": ("POST", "/admin/v1/accounts/{account}/owners"),
    "AdminInvite": ("POST", "/admin/v1/accounts/{account}/invites"),
    "AdminCodes": ("POST", "/admin/v1/codes"),
    "AlertSettings": ("PUT", "/admin/v1/accounts/{account}/alerts"),
    # Public bodies: the admin token they carry is ignored.
    "SignIn": ("POST", "/api/v1/auth/sessions"),
    "AcceptInvite": ("POST", "/api/v1/auth/invite/accept"),
}


def test_fuzz_admin_bodies(fuzz):
    """Admin API bodies from the served admin schemas, mutated, with the admin token (on a victim
    account, never the fuzzing key)."""
    schemas = fuzz.client.get("/openapi.json").json()["components"]["schemas"]
    per_kind = st.sampled_from(sorted(ADMIN_BODIES)).flatmap(lambda name: st.tuples(st.just(name), fs.from_schema(schemas[name])))

    @fuzz_settings(0.10)
    @given(pick=per_kind, data=st.data(), mutations=st.sampled_from((0, 0, 1, 2)), raw_steps=st.sampled_from((0, 0, 0, 1)))
    def run(pick, data, mutations, raw_steps):
        name, doc = pick[0], copy.deepcopy(pick[1])  # mutated in place below: never an object a strategy hands out again
        for _ in range(mutations):
            path = data.draw(st.sampled_from(fs.paths(doc)))
            try:
                doc = fs.mutate(doc, path, data.draw(st.sampled_from(fs.MUTATIONS)), copy.deepcopy(data.draw(fs.hostile_values)))
            except (KeyError, IndexError, TypeError):
                pass
        raw = fs.dumps(doc)
        for _ in range(raw_steps):
            raw = fs.mutate_bytes(raw, data.draw(st.sampled_from(fs.BYTE_MUTATIONS)), data.draw(st.integers(0, 10**6)),
                                  data.draw(st.integers(0, 10**6)))
        method, route = ADMIN_BODIES[name]
        path = route.format(account=fuzz.victim["account"], key=fuzz.victim["key_id"])
        headers = {"Authorization": f"Bearer {fuzz.gateway.admin_token}", "Content-Type": "application/json"}
        fuzz.send("admin-bodies", method, path, headers, raw)

    with batch(fuzz):
        run()
