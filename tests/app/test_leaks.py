"""No answer the gateway gives in process (body, header or event, success or failure) names an
upstream model, host, request id, key or system fingerprint: every upstream outcome of the fake
provider, in both dialects, whole and streamed."""
from __future__ import annotations

import pytest

from tests.app.conftest import UPSTREAM_HOSTS, user
from tests.conftest import leaks
from tests.routes.test_leaks import SCENARIOS

MORE = [
    ("zowy-1", True, "[[fake:calls=2]] call a tool"),
    ("zowy-2", True, "[[fake:thinking=40]]"),
    ("zowy-1", True, "[[fake:cut=2]]"),
    ("zowy-1", True, "[[fake:malformed=1]]"),
    ("zowy-1-pro", True, "[[fake:spaced=1]]"),
    ("zowy-1-pro", True, "[[fake:status=429]]"),
    ("zowy-1", False, "[[fake:status=503]]"),
    ("zowy-1", False, "[[fake:refusal=1]]"),
    ("zowy-1-pro", False, "logprobs"),
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("model, stream, directive", SCENARIOS + MORE)
async def test_chat_answers_do_not_leak(gateway, customer, model, stream, directive):
    extra = {"tools": TOOLS} if "call a tool" in directive else {"logprobs": True} if directive == "logprobs" else {}
    if stream:
        extra["stream_options"] = {"include_usage": True}
    response = await gateway.chat(customer, user(f"hello {directive}", model, stream=stream, **extra))
    head = b"\n".join(k + b": " + v for k, v in response.headers.raw)
    assert leaks(head + b"\n" + response.content, UPSTREAM_HOSTS) == [], response.content[:2000]
    assert b"upstream-key" not in response.content and b"req_upstream" not in head
    assert response.status_code < 500 or response.content.startswith(b'{"error"')


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("GET", "/v1/models/zowy-2"), ("GET", "/nope"),
                                          ("DELETE", "/v1/chat/completions"), ("GET", "/readyz"), ("GET", "/healthz"),
                                          ("GET", "/v1/usage")])
async def test_other_routes_do_not_leak(gateway, customer, method, path):
    response = await gateway.request(method, path, headers=customer.auth)
    head = b"\n".join(k + b": " + v for k, v in response.headers.raw)
    assert leaks(head + b"\n" + response.content, UPSTREAM_HOSTS) == []


def test_the_leak_check_sees_what_the_fake_provider_would_leak():
    assert leaks(b'{"model":"gpt-5.4-mini","system_fingerprint":"fp_fake123"}') == ["gpt-5.4-mini", "fp_fake", "system_fingerprint\":\""]
    assert leaks(b"server: fake-provider\nx-request-id: req_upstream12") == ["fake-provider", "req_upstream"]
    assert leaks(b"https://gemini.upstream.test/v1", UPSTREAM_HOSTS) == ["gemini.upstream.test"]
