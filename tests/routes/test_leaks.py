"""No response the gateway gives (body, header or SSE event, success or failure) names an upstream
model, provider host, upstream request id, provider key or system fingerprint."""
from __future__ import annotations

import pytest

from tests.conftest import http, leaks

USER = "hello"
SCENARIOS = [
    ("zowy-1", False, ""),
    ("zowy-1", True, ""),
    ("zowy-1-pro", False, ""),
    ("zowy-1-pro", True, ""),
    ("zowy-2", False, ""),
    ("zowy-1-pro", False, "[[fake:status=400]]"),
    ("zowy-1", False, "[[fake:status=400]]"),
    ("zowy-1-pro", False, "[[fake:status=401]]"),
    ("zowy-1-pro", False, "[[fake:status=403]]"),
    ("zowy-1-pro", False, "[[fake:status=404]]"),
    ("zowy-1", False, "[[fake:status=404]]"),
    ("zowy-1-pro", False, "[[fake:status=429]]"),
    ("zowy-1-pro", False, "[[fake:status=500]]"),
    ("zowy-1-pro", True, "[[fake:status=503]]"),
    ("zowy-1-pro", True, "[[fake:cut=3]]"),
    ("zowy-1-pro", True, "[[fake:malformed=2]]"),
    ("zowy-1-pro", True, "[[fake:error_event=2]]"),
    ("zowy-1", True, "[[fake:error_event=0]]"),
    ("zowy-1-pro", False, "[[fake:cut=1]]"),
]


def hosts(upstreams) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{p.port}" for p in upstreams.values()) + ("googleapis", "api.openai.com")


@pytest.mark.parametrize("model, stream, directive", SCENARIOS)
def test_chat_responses_do_not_leak(gateway, customer, upstreams, model, stream, directive):
    with http(gateway) as h:
        with h.stream(
            "POST", "/api/v1/chat/completions",
            headers={"Authorization": f"Bearer {customer.key}"},
            json={"model": model, "stream": stream, "stream_options": {"include_usage": True} if stream else None,
                  "messages": [{"role": "user", "content": f"{USER} {directive}"}]},
        ) as r:
            body = b"".join(r.iter_bytes())
            head = "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
    found = leaks(head + b"\n" + body, hosts(upstreams))
    assert found == [], body[:2000]
    assert r.status_code < 500 or body.startswith(b'{"error"')


@pytest.mark.parametrize("method, path", [("GET", "/api/v1/models"), ("GET", "/api/v1/models/zowy-2"), ("GET", "/nope"),
                                          ("DELETE", "/api/v1/chat/completions"), ("GET", "/readyz"), ("GET", "/healthz")])
def test_other_routes_do_not_leak(gateway, customer, upstreams, method, path):
    with http(gateway) as h:
        r = h.request(method, path, headers={"Authorization": f"Bearer {customer.key}"})
    head = "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
    assert leaks(head + r.content, hosts(upstreams)) == []


def test_the_leak_detector_detects():
    assert leaks(b'{"model":"gemini-2.5-flash"}') == ["gemini-2.5-flash"]
    assert leaks(b"x-upstream: 127.0.0.1:999", ("127.0.0.1:999",)) == ["127.0.0.1:999"]
    assert "fp_fake" in leaks(b'"system_fingerprint":"fp_fake123"')
