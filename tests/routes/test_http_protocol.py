"""HTTP as the RFCs have it, on a gateway started as in production: no empty header on any answer."""
from __future__ import annotations

import socket

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
    yield gateway, owner, made.json()["batch_id"]
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
    gateway, owner, _ = served
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
