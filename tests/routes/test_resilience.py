"""Upstream failures, one test per outcome, each against a scripted failure of the fake upstream:
fallback and retry before the first byte only, breaker, timeouts, disconnects, error mapping, and
how every outcome is metered."""
from __future__ import annotations

import json
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from bench.fake_upstream import reply_text
from tests import support
from tests.conftest import http, sdk_client

BREAKER_COOLDOWN = 1.0


def resilience_models(path, primary: str, secondary: str, dead_port: int):
    """zowy-1: primary then secondary; zowy-2: a dead target then secondary; zowy-1-pro: primary only."""
    timeouts = "connect = 1.0\nfirst_byte = 1.0\nidle = 0.5\ntotal = 8.0"
    gemini = 'provider = "gemini"\napi_key_env = "FAKE_PROVIDER_KEY"\nparams = { logit_bias = "drop" }'
    path.write_text(f"""
[timeouts]
{timeouts}
[models.zowy-1]
targets = ["primary", "secondary"]
[models.zowy-2]
targets = ["dead", "secondary"]
[models.zowy-1-pro]
targets = ["solo"]
[targets.primary]
{gemini}
base_url = "{primary}/v1"
model = "gemini-2.5-flash"
[targets.secondary]
{gemini}
base_url = "{secondary}/v1"
model = "gemini-2.5-flash-lite"
[targets.dead]
{gemini}
base_url = "http://127.0.0.1:{dead_port}/v1"
model = "gemini-2.5-pro"
[targets.solo]
provider = "openai"
api_key_env = "FAKE_PROVIDER_KEY"
base_url = "{primary}/v1"
model = "gpt-5.4-mini"
max_tokens_field = "max_completion_tokens"
""")
    return path


def start_rig(tmp, breaker_min_requests: int, **env: str) -> dict:
    primary = support.start_upstream(tmp, "openai")
    secondary = support.start_upstream(tmp, "gemini")
    dead_port = support.free_port()
    models = resilience_models(tmp / "models.toml", primary.url, secondary.url, dead_port)
    gateway = support.start_gateway(tmp / "gw", models, **{
        "ZOWY_UPSTREAM_ATTEMPTS": "3", "ZOWY_RETRY_BACKOFF": "0.05",
        "ZOWY_BREAKER_MIN_REQUESTS": str(breaker_min_requests), "ZOWY_BREAKER_COOLDOWN": str(BREAKER_COOLDOWN),
        **env,
    })
    customer = support.new_customer(gateway)
    return {"gateway": gateway, "primary": primary, "secondary": secondary, "dead_port": dead_port,
            "customer": customer, "tmp": tmp}


def stop_rig(rig: dict) -> None:
    rig["gateway"].stop()
    rig["primary"].stop()
    rig["secondary"].stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A gateway whose breakers never open, so each test sees its own failure only."""
    rig = start_rig(tmp_path_factory.mktemp("resilience"), breaker_min_requests=1000)
    yield rig
    stop_rig(rig)


@pytest.fixture
def breaker_rig(tmp_path):
    rig = start_rig(tmp_path, breaker_min_requests=4)
    yield rig
    stop_rig(rig)


@pytest.fixture
def tenants_rig(tmp_path):
    """Breakers that open after 4 attempts and stay open for the whole test once they do."""
    rig = start_rig(tmp_path, breaker_min_requests=4,
                    ZOWY_BREAKER_COOLDOWN="600", ZOWY_BREAKER_MIN_ACCOUNTS="2", ZOWY_UPSTREAM_ATTEMPTS="2")
    yield rig
    stop_rig(rig)


def fake(upstream: support.Process, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{upstream.url}{path}", method=method)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def requests_seen(upstream: support.Process, marker: str) -> list[dict]:
    return [r for r in fake(upstream, "/_fake/requests?n=200")
            if marker in json.dumps(r.get("body"))]


def entry_for(gateway, request_id: str):
    return support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)))


def post(rig, model: str, content: str, stream: bool = False, customer: support.Customer | None = None, **extra):
    key = (customer or rig["customer"]).key
    with http(rig["gateway"]) as h:
        with h.stream("POST", "/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "stream": stream, "messages": [{"role": "user", "content": content}], **extra}) as r:
            body = b"".join(r.iter_bytes())
            return r.status_code, dict(r.headers), body


def test_retries_in_order_then_502_and_metered(rig):
    marker = f"m{time.monotonic_ns()}"
    status, headers, body = post(rig, "zowy-1", f"{marker} [[fake:status=500]]")
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_error"
    seen = sorted(
        [(r["received_at"], "primary") for r in requests_seen(rig["primary"], marker)]
        + [(r["received_at"], "secondary") for r in requests_seen(rig["secondary"], marker)]
    )
    assert [name for _, name in seen] == ["primary", "secondary", "primary"]
    entry = entry_for(rig["gateway"], headers["x-request-id"])
    assert entry.outcome == "upstream_error" and entry.status == 502 and entry.attempts == 3
    assert entry.total_tokens == 0


def test_fallback_serves_when_first_target_is_down(rig):
    with sdk_client(rig["gateway"], rig["customer"].key) as client:
        raw = client.chat.completions.with_raw_response.create(model="zowy-2", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == reply_text(8)
    entry = entry_for(rig["gateway"], raw.headers["x-request-id"])
    assert entry.target in ("secondary",) and entry.outcome == "ok"


def test_breaker_opens_skips_and_recovers(breaker_rig):
    rig = breaker_rig
    gateway = rig["gateway"]
    with sdk_client(gateway, rig["customer"].key) as client:
        for _ in range(4):
            client.chat.completions.create(model="zowy-2", messages=[{"role": "user", "content": "hi"}])
        raw = client.chat.completions.with_raw_response.create(model="zowy-2", messages=[{"role": "user", "content": "hi"}])
        assert entry_for(gateway, raw.headers["x-request-id"]).attempts == 1  # the dead target is skipped
        with http(gateway) as h:
            ready = h.get("/readyz", headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
        assert ready["checks"]["targets"]["dead"]["state"] == "open"

        revived = support.start_upstream(rig["tmp"], "gemini", port=rig["dead_port"])
        try:
            time.sleep(BREAKER_COOLDOWN + 0.1)
            raw = client.chat.completions.with_raw_response.create(model="zowy-2", messages=[{"role": "user", "content": "hi"}])
            entry = entry_for(gateway, raw.headers["x-request-id"])
            assert entry.target == "dead" and entry.attempts == 1  # the probe went through and succeeded
            with http(gateway) as h:
                ready = h.get("/readyz", headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
            assert ready["checks"]["targets"]["dead"]["state"] == "closed"
        finally:
            revived.stop()


def test_one_tenant_cannot_open_the_breaker_for_another(breaker_rig):
    """Answers one request's content caused (a 500 for it) are not health failures: another account
    keeps being served (tests/unit/test_breaker.py: which failures count, and the ratio)."""
    rig = breaker_rig
    gateway = rig["gateway"]
    other = support.new_customer(gateway)
    with sdk_client(gateway, rig["customer"].key) as attacker, sdk_client(gateway, other.key) as victim:
        for _ in range(6):
            with pytest.raises(openai.APIStatusError) as info:
                attacker.chat.completions.create(model="zowy-1-pro", messages=[{"role": "user", "content": "[[fake:status=500]]"}])
            assert info.value.status_code == 502
        answers = [victim.chat.completions.create(model="zowy-1-pro", messages=[{"role": "user", "content": "hi"}]) for _ in range(20)]
        assert all(a.choices[0].message.content for a in answers)
        with http(gateway) as h:
            ready = h.get("/readyz", headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
        assert ready["checks"]["targets"]["solo"]["state"] == "closed"


def breaker_state(gateway, target: str) -> str:
    with http(gateway) as h:
        ready = h.get("/readyz", headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
    return ready["checks"]["targets"][target]["state"]


@pytest.mark.parametrize("target, model, directive, stream, extra, status", [
    ("solo", "zowy-1-pro", "status=500", False, {}, 502),
    ("solo", "zowy-1-pro", "hang=headers", False, {}, 504),
    ("primary", "zowy-1", "mode=gemini,think=3,thinking=4000", True, {"reasoning_effort": "high"}, 504),
], ids=["500s", "timeouts", "slow-thinking"])
def test_one_tenants_failures_do_not_open_the_breaker_for_another(tenants_rig, target, model, directive, stream, extra, status):
    """Eight concurrent requests of one account fail on the target (a 500 for that content, no
    answer within first_byte, thinking past first_byte): the breaker stays closed and another
    account is served at once, every time (the breaker would stay open for 600 s)."""
    rig = tenants_rig
    gateway = rig["gateway"]
    attacker = support.new_customer(gateway)
    victim = support.new_customer(gateway)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(
            lambda i: post(rig, model, f"m{i} [[fake:{directive}]]", stream=stream, customer=attacker, **extra), range(8)
        ))
    assert [got for got, _, _ in outcomes] == [status] * 8
    assert breaker_state(gateway, target) == "closed"
    with sdk_client(gateway, victim.key) as client:
        for _ in range(20):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert raw.parse().choices[0].message.content == reply_text(8)
            assert entry_for(gateway, raw.headers["x-request-id"]).target == target
    assert breaker_state(gateway, target) == "closed"


def test_an_outage_every_tenant_sees_opens_the_breaker(tenants_rig):
    """503s for every account are the target's: two accounts failing open it, and the next request
    is refused at once without reaching the target."""
    rig = tenants_rig
    gateway = rig["gateway"]
    first, second = support.new_customer(gateway), support.new_customer(gateway)
    for customer in (first, second):
        got, _, _ = post(rig, "zowy-1-pro", "[[fake:status=503]]", customer=customer)
        assert got == 502
    assert breaker_state(gateway, "solo") == "open"
    marker = f"m{time.monotonic_ns()}"
    got, _, body = post(rig, "zowy-1-pro", marker, customer=second)
    assert got == 503 and json.loads(body)["error"]["code"] == "overloaded"
    assert requests_seen(rig["primary"], marker) == []


def test_no_retry_after_first_byte(rig):
    marker = f"m{time.monotonic_ns()}"
    with sdk_client(rig["gateway"], rig["customer"].key) as client:
        stream = client.chat.completions.create(
            model="zowy-1-pro", stream=True, messages=[{"role": "user", "content": f"{marker} [[fake:chunks=10,cut=4]]"}],
        )
        text = ""
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == reply_text(3)  # role chunk + 3 content chunks were relayed before the cut
    assert "failed" in str(info.value.message) or "ended" in str(info.value.message)
    assert len(requests_seen(rig["primary"], marker)) == 1


def test_mid_stream_error_event_and_malformed_event(rig):
    for directive in ("error_event=3,delay=0.05", "malformed=3,delay=0.05"):
        marker = f"m{time.monotonic_ns()}"
        status, headers, body = post(rig, "zowy-1-pro", f"{marker} [[fake:{directive}]]", stream=True)
        assert status == 200
        events = [e for e in body.split(b"\n\n") if e]
        assert json.loads(events[-1][6:])["error"]["code"] == "upstream_error"
        assert b"[DONE]" not in body and b"exploded" not in body and b"not json" not in body
        assert len(requests_seen(rig["primary"], marker)) == 1
        entry = entry_for(rig["gateway"], headers["x-request-id"])
        assert entry.outcome == "upstream_error" and entry.estimated and entry.completion_tokens >= 1


def test_idle_timeout_mid_stream(rig):
    started = time.monotonic()
    status, headers, body = post(rig, "zowy-1-pro", "[[fake:hang=body,after=3]]", stream=True)
    assert time.monotonic() - started < 3
    events = [e for e in body.split(b"\n\n") if e]
    assert json.loads(events[-1][6:])["error"]["code"] == "upstream_timeout"
    assert len(events) == 4  # the role chunk, two content chunks, the error
    entry = entry_for(rig["gateway"], headers["x-request-id"])
    assert entry.outcome == "upstream_timeout" and entry.estimated


def test_first_byte_timeout_is_504_after_retries(rig):
    started = time.monotonic()
    status, headers, body = post(rig, "zowy-1-pro", "[[fake:hang=headers]]")
    elapsed = time.monotonic() - started
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    assert 2.5 < elapsed < 8  # three attempts, each bounded by connect + first byte; no hang
    assert entry_for(rig["gateway"], headers["x-request-id"]).outcome == "upstream_timeout"


@pytest.mark.parametrize(
    "upstream_status, status, code",
    [(400, 400, "invalid_request"), (401, 502, "upstream_error"), (403, 502, "upstream_error"),
     (404, 502, "upstream_error"), (429, 503, "overloaded"), (500, 502, "upstream_error"), (503, 502, "upstream_error")],
)
def test_status_mapping(rig, upstream_status, status, code):
    marker = f"m{time.monotonic_ns()}"
    got, headers, body = post(rig, "zowy-1-pro", f"{marker} [[fake:status={upstream_status}]]")
    assert got == status
    error = json.loads(body)["error"]
    assert error["code"] == code
    if upstream_status == 429:
        assert headers["retry-after"] == "1"
    retried = upstream_status in (429, 500, 503)
    assert len(requests_seen(rig["primary"], marker)) == (3 if retried else 1)


def test_gemini_list_error_body_reason_is_relayed_sanitized(rig):
    status, _, body = post(rig, "zowy-1", "hi [[fake:mode=gemini]]", logprobs=True)
    assert status == 400
    error = json.loads(body)["error"]
    assert "logprobs" in error["message"] and "gemini" not in error["message"].lower()


def test_client_disconnect_cancels_the_upstream_stream(rig):
    fake(rig["primary"], "/_fake/reset", "POST")
    marker = f"m{time.monotonic_ns()}"
    sock = socket.create_connection(("127.0.0.1", rig["gateway"].process.port), timeout=10)
    payload = json.dumps({"model": "zowy-1-pro", "stream": True,
                          "messages": [{"role": "user", "content": f"{marker} [[fake:chunks=200,delay=0.05]]"}]}).encode()
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {rig['customer'].key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while received.count(b"data: ") < 4:
        received += sock.recv(65536)
    request_id = received.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    closed_at = time.monotonic()
    sock.close()
    stats = support.wait_until(lambda: (s := fake(rig["primary"], "/_fake/stats"))["disconnects"] and s, timeout=5)
    lag = stats["disconnects"][0]["at"] - closed_at
    assert 0 <= lag < 0.1, lag
    entry = entry_for(rig["gateway"], request_id)
    assert entry.outcome == "client_disconnected" and entry.estimated and entry.stream
    assert entry.completion_tokens >= 3


def test_client_disconnect_cancels_a_non_stream_request(rig):
    fake(rig["primary"], "/_fake/reset", "POST")
    payload = json.dumps({"model": "zowy-1-pro", "messages": [{"role": "user", "content": "[[fake:think=5]]"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", rig["gateway"].process.port), timeout=10)
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {rig['customer'].key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    support.wait_until(lambda: fake(rig["primary"], "/_fake/stats")["open"] >= 1, timeout=5)
    closed_at = time.monotonic()
    sock.close()
    stats = support.wait_until(lambda: (s := fake(rig["primary"], "/_fake/stats"))["disconnects"] and s, timeout=5)
    assert 0 <= stats["disconnects"][0]["at"] - closed_at < 0.1
    before = support.run_store(rig["gateway"], lambda s: s.ledger_count(rig["customer"].account_id))
    assert before >= 1
