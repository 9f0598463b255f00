"""HTTP as the RFCs have it, on a gateway started as in production: no empty header on any answer,
HEAD wherever GET (the GET's status and headers, no body), and a 405 that names the allowed methods."""
from __future__ import annotations

import re
import socket
import uuid

import pytest

from tests import accounts_kit as kit
from tests import support
from tests.conftest import http


@pytest.fixture(scope="module")
def served(tmp_path_factory, models_path):
    gateway = support.start_gateway(tmp_path_factory.mktemp("protocol"), models_path, **kit.ENV)
    owner = kit.new_owner(gateway)
    with kit.admin(gateway) as a:
        made = a.post("/admin/v1/codes", json={"plan": "pro", "count": 1})
        assert made.status_code == 201, made.text
    with http(gateway) as h:
        signed = h.post("/console/api/operator/session", json={"token": gateway.admin_token}, headers={"X-Forwarded-For": kit.fresh_ip()})
        assert signed.status_code == 201, signed.text
    yield gateway, owner, made.json()["batch_id"], signed.cookies["zowy_operator"]
    gateway.stop()


def raw(port: int, request: bytes) -> tuple[bytes, bytes]:
    """One request on a connection of its own: the response's head and what followed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(part.strip() for part in line.split(b":", 1)) for line in head.split(b"\r\n")[1:]]


def test_no_response_carries_an_empty_header(served):
    gateway, owner, _, _ = served
    port = gateway.process.port
    body = b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}]}'
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"HEAD /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"DELETE /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {owner.customer.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body,
        support.raw_request(owner.customer.key, support.chat_body("hi", stream=True)),
    ]
    for request in requests:
        head, _ = raw(port, request)
        assert head.startswith(b"HTTP/1.1 "), head
        lines = header_lines(head)
        assert all(value for _, value in lines), (request.split(b"\r\n")[0], head)
        assert b"alt-svc" not in {name.lower() for name, _ in lines}, head


def _get_routes(gateway) -> list[str]:
    """Every GET route the gateway serves, as path templates."""
    from sanic import Sanic

    from app.http.app import create_app

    Sanic.test_mode = True
    app = create_app(gateway.settings(), name=f"protocol_{uuid.uuid4().hex[:6]}")
    found = set()
    for route in app.router.routes:
        if "GET" in route.methods:
            found.add("/" + re.sub(r"<(\w+)(:\w+)?>", r"{\1}", route.path).lstrip("/"))
    return sorted(found)


def test_head_wherever_get_answers_the_gets_headers_without_a_body(served):
    gateway, owner, batch_id, operator = served
    values = {"account": owner.customer.account_id, "key_id": owner.customer.key_id, "batch_id": batch_id,
              "model_id": "zowy-1", "path": "js/app.js"}
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    key = {"Authorization": f"Bearer {owner.customer.key}"}
    routes = _get_routes(gateway)
    assert {"/console", "/api/v1/models", "/healthz", "/readyz", "/admin/v1/accounts", "/api/v1/ledger.csv"} <= set(routes)
    with http(gateway) as h:
        stored = h.post("/v1/responses", json={"model": "zowy-1", "input": "hi"}, headers=key)
        values["response_id"] = stored.json()["id"]
        for template in routes:
            path = template.format(**values)
            if template == "/console/api/operator/session":
                headers = {"Cookie": f"zowy_operator={operator}"}
            elif template.startswith(("/admin/", "/metrics")):
                headers = admin
            elif template.startswith(("/api/v1/account", "/api/v1/keys", "/api/v1/ledger")):
                headers = owner.auth
            else:
                headers = key
            # a fixed period: a usage report names its period, which otherwise ends now
            params = {"since": "2026-01-01", "until": "2026-02-01"} if template.endswith("/usage") else None
            got = h.get(path, headers=headers, params=params)
            head = h.head(path, headers=headers, params=params)
            assert head.status_code == got.status_code == 200, (path, head.status_code, got.text[:200])
            assert head.content == b"", path
            differs = {"x-request-id", "date"}
            assert set(head.headers) - differs == set(got.headers) - differs, (path, head.headers, got.headers)
            assert head.headers["content-type"] == got.headers["content-type"], path
            if "content-length" in got.headers and template not in ("/metrics", "/readyz", "/admin/v1/traffic"):
                assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content)), path
        # a conditional HEAD is answered as the conditional GET
        page = h.get("/console")
        assert h.head("/console", headers={"If-None-Match": page.headers["etag"]}).status_code == 304


def test_405_names_the_allowed_methods(served):
    gateway = served[0]
    with http(gateway) as h:
        r = h.delete("/healthz")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD"}
        r = h.put("/api/v1/keys")
        assert r.status_code == 405
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
