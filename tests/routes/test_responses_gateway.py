"""What the gateway promises holds on the Responses API: the identity guard before the instructions,
no upstream identity in any byte, per-key limits and controls, reservations, failures mid-stream as
response.failed, one ledger entry per request billed exactly once (client hang-ups included)."""
from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
import uuid

import pytest

from tests import support
from tests.conftest import http, leaks
from tests.routes.test_ledger_durability import _stream_and_drop, settle, upstream_count
from tests.routes.test_leaks import hosts


def post(gateway, key: str, body: dict):
    with http(gateway) as h:
        with h.stream("POST", "/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            raw = b"".join(r.iter_bytes())
            head = "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
    return r, raw, head


def events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append(json.loads(data[0]))
    return out


def last_upstream_body(upstream: support.Process) -> dict:
    with urllib.request.urlopen(f"{upstream.url}/_fake/requests?n=1") as r:
        return json.loads(r.read())[-1]["body"]


def test_guard_first_then_instructions(gateway, customer, upstreams):
    r, raw, _ = post(gateway, customer.key, {"model": "zowy-1-pro", "instructions": "Answer in French.",
                                             "input": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    messages = last_upstream_body(upstreams["openai"])["messages"]
    guard = gateway.settings().persona_prompt
    assert messages[0] == {"role": "system", "content": guard}
    assert messages[1:] == [{"role": "system", "content": "Answer in French."}, {"role": "system", "content": "Be terse."},
                            {"role": "user", "content": "hi"}]


SCENARIOS = [
    ("zowy-1", False, ""), ("zowy-1", True, ""), ("zowy-1-pro", False, ""), ("zowy-1-pro", True, ""),
    ("zowy-2", True, "call a tool"), ("zowy-1", True, "call a tool [[fake:calls=2]]"),
    ("zowy-1-pro", False, "[[fake:status=400]]"), ("zowy-1", False, "[[fake:status=400]]"),
    ("zowy-1-pro", False, "[[fake:status=401]]"), ("zowy-1-pro", False, "[[fake:status=404]]"),
    ("zowy-1-pro", False, "[[fake:status=429]]"), ("zowy-1-pro", True, "[[fake:status=503]]"),
    ("zowy-1-pro", True, "[[fake:cut=3]]"), ("zowy-1-pro", True, "[[fake:malformed=2]]"),
    ("zowy-1-pro", True, "[[fake:error_event=2]]"), ("zowy-1", True, "[[fake:error_event=0]]"),
    ("zowy-1-pro", False, "[[fake:cut=1]]"),
]


@pytest.mark.parametrize("model, stream, directive", SCENARIOS)
def test_no_upstream_identity_in_any_byte(gateway, customer, upstreams, model, stream, directive):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    r, raw, head = post(gateway, customer.key, {"model": model, "stream": stream, "tools": tools, "input": f"hello {directive}"})
    assert leaks(head + b"\n" + raw, hosts(upstreams)) == [], raw[:2000]
    assert r.status_code < 500 or raw.startswith(b'{"error"')


@pytest.mark.parametrize("directive", ["[[fake:cut=3,delay=0.05]]", "[[fake:error_event=2,delay=0.05]]",
                                       "[[fake:malformed=2,delay=0.05]]"])
def test_failure_after_the_stream_began_is_response_failed(gateway, customer, directive):
    """Events 50 ms apart, so the failure comes after the first bytes went out (a failure in the first
    read is retried, and answered with an error status if every attempt fails)."""
    r, raw, _ = post(gateway, customer.key, {"model": "zowy-1-pro", "stream": True, "input": f"go {directive}"})
    assert r.status_code == 200
    got = events(raw)
    assert [e["type"] for e in got[:2]] == ["response.created", "response.in_progress"]
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    failed = got[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert not raw.rstrip().endswith(b"[DONE]")


def test_finish_on_the_token_limit_is_incomplete(gateway, customer):
    r, raw, _ = post(gateway, customer.key, {"model": "zowy-1-pro", "stream": True, "max_output_tokens": 16,
                                             "input": "long [[fake:chunks=40,honor_max=1]]"})
    final = events(raw)[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_rate_limit_and_empty_balance_before_any_upstream_call(gateway, upstreams):
    limited = support.new_customer(gateway, per_minute=2, per_hour=100)
    support.wait_for_window(60, need=5)
    body = {"model": "zowy-1-pro", "input": "hi"}
    assert [post(gateway, limited.key, body)[0].status_code for _ in range(3)] == [200, 200, 429]
    rejected = post(gateway, limited.key, body)[0]
    assert rejected.status_code == 429 and int(rejected.headers["retry-after"]) >= 1
    broke = support.new_customer(gateway, tokens=None)
    before = upstream_count(upstreams["openai"], "broke-marker")
    r, raw, _ = post(gateway, broke.key, {"model": "zowy-1-pro", "input": "broke-marker"})
    assert r.status_code == 402 and json.loads(raw)["error"]["code"] == "insufficient_quota"
    assert upstream_count(upstreams["openai"], "broke-marker") == before
    time.sleep(0.3)
    assert support.run_store(gateway, lambda s: s.ledger_count(limited.account_id)) == 2
    assert support.run_store(gateway, lambda s: s.ledger_count(broke.account_id)) == 0


def test_a_small_balance_limits_the_answer(gateway, upstreams):
    customer = support.new_customer(gateway, tokens=600)
    r, raw, _ = post(gateway, customer.key, {"model": "zowy-1-pro", "input": "small", "max_output_tokens": 100000})
    assert r.status_code == 200
    sent = last_upstream_body(upstreams["openai"])
    assert sent["max_completion_tokens"] < 600


def test_ledger_entry_matches_the_response(gateway, customer):
    r, raw, _ = post(gateway, customer.key, {"model": "zowy-1", "stream": True, "input": "count me"})
    final = events(raw)[-1]["response"]
    entry = support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(final["id"].removeprefix("resp_"))))
    assert entry.total_tokens == final["usage"]["total_tokens"] and entry.prompt_tokens == final["usage"]["input_tokens"]
    assert entry.stream is True and entry.model == "zowy-1" and entry.outcome == "ok"
    assert entry.api == "responses"


def test_hang_ups_mid_stream_are_billed_exactly_once(gateway, upstreams):
    customer = support.new_customer(gateway)
    marker = f"drop-{uuid.uuid4().hex[:8]}"
    rng = random.Random(11)
    drops = [rng.choice([0, 300, 1500, 3000, 6000, None]) for _ in range(24)]

    async def run():
        body = {"model": "zowy-1-pro", "stream": True, "input": f"{marker} [[fake:chunks=40,delay=0.01]]"}
        return await asyncio.gather(*(_stream_and_drop(gateway.process.port, customer.key, "", d, "/v1/responses", body)
                                      for d in drops))

    ids = asyncio.run(run())
    time.sleep(0.5)
    reached = upstream_count(upstreams["openai"], marker)
    settle(gateway, customer.account_id, reached)
    entries = [support.run_store(gateway, lambda s, i=i: s.ledger_entry(i)) for i in ids if i]
    outcomes = {e.outcome for e in entries if e}
    assert "client_disconnected" in outcomes and "ok" in outcomes
    assert support.run_store(gateway, lambda s: s.reconcile()) == []
