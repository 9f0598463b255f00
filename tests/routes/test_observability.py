"""Operators' signals and input limits: metrics summed over workers, one JSON log line per request
without content or secrets, request ids everywhere, and a clear 4xx for every configured limit."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests import support
from tests.conftest import http, sdk_client

LIMITS = {
    "ZOWY_MAX_MESSAGES": "5",
    "ZOWY_MAX_TEXT_CHARS": "300",
    "ZOWY_MAX_TOOLS": "2",
    "ZOWY_MAX_IMAGE_URL_BYTES": "2048",
    "ZOWY_MAX_BODY_BYTES": "20000",
    "ZOWY_MAX_HEADER_BYTES": "2048",
    "ZOWY_BODY_TIMEOUT": "1",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory, models_path):
    gateway = support.start_gateway(tmp_path_factory.mktemp("observability"), models_path, workers=2, **LIMITS)
    yield gateway
    gateway.stop()


def scrape(gateway) -> str:
    with http(gateway) as h:
        r = h.get("/metrics", headers={"Authorization": f"Bearer {gateway.admin_token}"})
    assert r.status_code == 200
    return r.text


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_sum_over_workers(small):
    customer = support.new_customer(small)
    with http(small) as h:
        assert h.get("/metrics").status_code == 401
    before = metric(scrape(small), "zowy_requests_total", model="zowy-1", status="200")
    with sdk_client(small, customer.key) as client:
        for _ in range(12):
            client.with_options(max_retries=0).chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.3)  # each worker moves its sums into the shared values every 0.2 s
    for _ in range(4):  # successive scrapes land on different workers and agree
        text = scrape(small)
        assert metric(text, "zowy_requests_total", model="zowy-1", status="200") - before == 12
    assert metric(text, "zowy_tokens_total", model="zowy-1", kind="completion") >= 12 * 8
    assert metric(text, "zowy_upstream_ttfb_seconds_count", target="gemini-flash") >= 12
    assert metric(text, "zowy_request_duration_seconds_count", model="zowy-1") >= 12
    with http(small) as h:
        h.post("/api/v1/chat/completions", json={"model": "zowy-1", "messages": []}, headers={"Authorization": f"Bearer {customer.key}"})
        h.post("/api/v1/chat/completions", json={"model": "zowy-1", "messages": []}, headers={"Authorization": "Bearer zk-no"})
    time.sleep(0.3)
    text = scrape(small)
    assert metric(text, "zowy_rejections_total", reason="empty_array") >= 1  # labelled by the error code
    assert metric(text, "zowy_rejections_total", reason="invalid_api_key") >= 1
    assert "zowy_ledger_queue_depth" in text


def test_one_json_log_line_per_request_without_content_or_secrets(small):
    customer = support.new_customer(small)
    secret_text = "TOP-SECRET-PROMPT-4242"
    with sdk_client(small, customer.key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="zowy-1", messages=[{"role": "user", "content": secret_text}],
            extra_headers={"X-Request-Id": "trace-abc.123"},
        )
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-client-request-id"] == "trace-abc.123"
    time.sleep(0.3)
    log = small.process.log()
    lines = [json.loads(line) for line in log.splitlines() if request_id in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["logger"] == "zowy.access" and line["status"] == 200 and line["outcome"] == "ok"
    assert line["key_id"] == customer.key_id and line["account_id"] == customer.account_id
    assert line["model"] == "zowy-1" and line["target"] == "gemini-flash"
    assert line["client_request_id"] == "trace-abc.123"
    assert line["total_tokens"] > 0 and line["latency_ms"] > 0
    assert secret_text not in log
    assert customer.key not in log
    assert "sk-fake-provider" not in log


def test_request_id_on_every_response(small):
    with http(small) as h:
        for method, path in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/v1/models"), ("GET", "/nope"),
                             ("PUT", "/api/v1/chat/completions"), ("GET", "/admin/v1/accounts"), ("GET", "/metrics")]:
            r = h.request(method, path)
            assert re.fullmatch(r"[0-9a-f]{24}", r.headers["x-request-id"]), (method, path)
        r = h.post("/api/v1/chat/completions", json={}, headers={"X-Request-Id": "bad id with spaces"})
        assert "x-client-request-id" not in r.headers


def chat(h, customer, **body):
    payload = {"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}], **body}
    return h.post("/api/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {customer.key}"})


def test_input_limits(small):
    customer = support.new_customer(small)
    with http(small) as h:
        r = chat(h, customer, messages=[{"role": "user", "content": "x"}] * 6)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages" and "5" in r.json()["error"]["message"]
        r = chat(h, customer, messages=[{"role": "user", "content": "x" * 301}])
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        tool = {"type": "function", "function": {"name": "f"}}
        r = chat(h, customer, tools=[tool] * 3)
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        image = "data:image/png;base64," + "A" * 3000
        r = chat(h, customer, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}])
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].image_url.url"
        r = chat(h, customer, messages=[{"role": "user", "content": "y" * 25000}])
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = h.get("/healthz", headers={"X-Big": "z" * 4000})
        assert r.status_code in (400, 431) and r.json()["error"]["type"] == "invalid_request_error"
        assert chat(h, customer).status_code == 200


def test_stalled_body_times_out(small):
    sock = socket.create_connection(("127.0.0.1", small.process.port), timeout=10)
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\"")
    started = time.monotonic()
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert time.monotonic() - started < 5
    assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data
