"""Upstream failures in process, one test per outcome: every upstream status mapped to ours, refused
connections and timeouts (raised by the transport, and real deadlines), streams that break, stall
or turn unreadable mid-way, retries and fallback between targets before the first byte only, the
breaker; and how each outcome is billed (once, and only when the request reached an upstream)."""
from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from app.upstream.mock import MockRequest, MockResponse
from bench.fakes.provider import reply_text
from tests.app.conftest import Gateway, error_of, events, models_file, start_gateway, text_of, user


def marked(directive: str = "") -> tuple[str, str]:
    """A marker to find a request's upstream attempts by, and a message that carries it."""
    marker = f"m-{uuid.uuid4().hex[:10]}"
    return marker, f"{marker} {directive}".strip()


async def refuse(request: MockRequest) -> MockResponse:
    raise ConnectionRefusedError("nothing listens there")


async def time_out(request: MockRequest) -> MockResponse:
    raise TimeoutError()


@pytest.mark.parametrize("upstream_status, status, code, retried", [
    (400, 400, "invalid_request", False), (401, 502, "upstream_error", False), (403, 502, "upstream_error", False),
    (404, 502, "upstream_error", False), (429, 503, "overloaded", True), (500, 502, "upstream_error", True),
    (503, 502, "upstream_error", True),
])
async def test_upstream_statuses_become_ours(gateway, customer, upstream_status, status, code, retried):
    marker, text = marked(f"[[fake:status={upstream_status}]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro"))
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert "fake" not in error["message"].lower() and "gpt-5" not in error["message"]
    if upstream_status == 429:
        assert response.headers["retry-after"] == "1"
    assert len(gateway.sent(marker)) == (3 if retried else 1)
    entry = await gateway.entry(response.headers["x-request-id"])
    assert entry.status == status and entry.total_tokens == 0 and entry.attempts == len(gateway.sent(marker))


async def test_retries_go_round_the_targets_in_order_then_502(gateway, customer):
    marker, text = marked("[[fake:status=500]]")
    response = await gateway.chat(customer, user(text))
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert [r.target.name for r in gateway.sent(marker)] == ["gemini-flash", "gemini-flash-lite", "gemini-flash"]
    entry = await gateway.entry(response.headers["x-request-id"])
    assert (entry.outcome, entry.status, entry.attempts, entry.total_tokens) == ("upstream_error", 502, 3, 0)
    assert await gateway.ledger_count(customer.account_id) == 1


async def test_a_failure_the_next_attempt_gets_past_is_served(gateway, customer):
    marker, text = marked(f"[[fake:fail_first=2,key={uuid.uuid4().hex}]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro"))
    assert response.status_code == 200 and orjson.loads(response.content)["choices"][0]["message"]["content"] == reply_text(8)
    assert len(gateway.sent(marker)) == 3
    entry = await gateway.entry(response.headers["x-request-id"])
    assert entry.outcome == "ok" and entry.attempts == 3 and entry.total_tokens > 0


async def test_fallback_serves_when_the_first_target_refuses_connections(gateway, customer):
    gateway.upstreams.targets["gemini-pro"] = refuse
    response = await gateway.chat(customer, user("hi", "zowy-2"))
    assert response.status_code == 200 and orjson.loads(response.content)["model"] == "zowy-2"
    assert [r.target.name for r in gateway.transport.requests[-2:]] == ["gemini-pro", "gpt-mini"]
    entry = await gateway.entry(response.headers["x-request-id"])
    assert (entry.target, entry.outcome, entry.attempts) == ("gpt-mini", "ok", 2)


async def test_refused_everywhere_is_a_502_and_nothing_is_billed(gateway, customer):
    for name in ("gemini-flash", "gemini-flash-lite"):
        gateway.upstreams.targets[name] = refuse
    for stream in (False, True):
        response = await gateway.chat(customer, user("hi", stream=stream))
        assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert await gateway.ledger_count(customer.account_id) == 0  # no body ever went out
    usage = await gateway.request("GET", "/v1/usage", headers=customer.auth)
    assert orjson.loads(usage.content)["remaining_tokens"] == 2_000_000


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_transport_timeout_is_a_504_after_every_attempt(gateway, customer, stream):
    gateway.upstreams.targets["gpt-mini"] = time_out
    response = await gateway.chat(customer, user("hi", "zowy-1-pro", stream=stream))
    assert response.status_code == 504 and error_of(response)["code"] == "upstream_timeout"
    entry = await gateway.entry(response.headers["x-request-id"])
    assert (entry.outcome, entry.status, entry.attempts, entry.total_tokens) == ("upstream_timeout", 504, 3, 0)


@pytest.fixture(scope="module")
async def quick(tmp_path_factory):
    """A gateway whose upstreams must answer within 0.3 s and go silent for no more than 0.2 s."""
    directory = tmp_path_factory.mktemp("quick")
    gateway = await start_gateway(directory, models_file(directory, connect=0.1, first_byte=0.2, idle=0.2, total=5.0))
    yield gateway
    await gateway.stop()


async def test_headers_that_never_come_time_out_at_the_first_byte_deadline(quick):
    customer = await quick.customer()
    marker, text = marked("[[fake:hang=headers]]")
    started = time.monotonic()
    response = await quick.chat(customer, user(text, "zowy-1-pro"))
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and error_of(response)["code"] == "upstream_timeout"
    assert len(quick.sent(marker)) == 3 and 0.9 <= elapsed < 3  # three attempts of connect + first byte
    assert (await quick.entry(response.headers["x-request-id"])).outcome == "upstream_timeout"


async def test_a_stream_that_goes_silent_ends_with_a_timeout_event(quick):
    customer = await quick.customer()
    response = await quick.chat(customer, user("[[fake:hang=body,after=3]]", "zowy-1-pro", stream=True))
    assert response.status_code == 200
    data = events(response)
    assert len(data) == 4 and b"[DONE]" not in data  # the role chunk, two content chunks, the error
    assert orjson.loads(data[-1])["error"]["code"] == "upstream_timeout"
    assert text_of([orjson.loads(d) for d in data[:-1]]) == reply_text(2)
    entry = await quick.entry(response.headers["x-request-id"])
    assert entry.outcome == "upstream_timeout" and entry.estimated and entry.completion_tokens >= 1


async def test_a_stream_cut_midway_ends_with_an_error_event_and_is_not_retried(gateway, customer):
    marker, text = marked("[[fake:chunks=10,cut=4]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro", stream=True))
    assert response.status_code == 200
    data = events(response)
    assert b"[DONE]" not in data and orjson.loads(data[-1])["error"]["code"] == "upstream_error"
    assert text_of([orjson.loads(d) for d in data[:-1]]) == reply_text(3)  # what came before the cut was relayed
    assert len(gateway.sent(marker)) == 1
    entry = await gateway.entry(response.headers["x-request-id"])
    assert entry.outcome == "upstream_error" and entry.estimated and entry.stream and entry.completion_tokens >= 3


@pytest.mark.parametrize("directive", ["error_event=3", "malformed=3", "error_event=3,mode=gemini", "malformed=3,mode=gemini"])
async def test_a_stream_turning_bad_midway_ends_with_our_error_event(gateway, customer, directive):
    marker, text = marked(f"[[fake:{directive}]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro", stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    data = events(response)
    assert orjson.loads(data[-1])["error"]["code"] == "upstream_error"
    raw = response.content
    assert b"[DONE]" not in raw and b"exploded" not in raw and b"not json" not in raw
    assert len(gateway.sent(marker)) == 1
    entry = await gateway.entry(response.headers["x-request-id"])
    assert entry.outcome == "upstream_error" and entry.prompt_tokens > 0
    if "gemini" in directive:
        assert not entry.estimated  # Gemini's running usage came with every chunk: the last one is billed
    else:
        assert entry.estimated and entry.completion_tokens >= 1  # what was relayed, estimated


async def test_a_stream_that_fails_before_its_first_event_is_retried(gateway, customer):
    marker, text = marked("[[fake:error_event=0]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro", stream=True))
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert len(gateway.sent(marker)) == 3
    marker, text = marked("[[fake:cut=0]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro", stream=True))
    assert response.status_code == 502 and len(gateway.sent(marker)) == 3


async def test_a_whole_answer_cut_short_or_unreadable_is_retried_then_502(gateway, customer):
    marker, text = marked("[[fake:cut=1]]")
    response = await gateway.chat(customer, user(text, "zowy-1-pro"))
    assert response.status_code == 502 and len(gateway.sent(marker)) == 3

    async def garbage(request: MockRequest) -> MockResponse:
        return MockResponse(200, b'{"choices": [ {"message": ', {"content-type": "application/json"})

    gateway.upstreams.targets["gpt-mini"] = garbage
    response = await gateway.chat(customer, user("hi", "zowy-1-pro"))
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert b"choices" not in response.content


async def test_a_rejection_s_reason_is_relayed_without_the_upstream_s_names(gateway, customer):
    async def rejects(request: MockRequest) -> MockResponse:
        doc = [{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                          "Invalid JSON payload received. Unknown name \"logprobs\" for models/gemini-2.5-flash at "
                          "https://gemini.upstream.test/v1: Cannot find field."}}]
        return MockResponse(400, orjson.dumps(doc, option=orjson.OPT_INDENT_2), {"content-type": "application/json"})

    gateway.upstreams.targets["gemini-flash"] = rejects
    response = await gateway.chat(customer, user("hi"))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request" and "logprobs" in error["message"]
    assert "gemini" not in error["message"].lower() and "upstream.test" not in error["message"]


async def breaker_state(gateway: Gateway, target: str) -> str:
    response = await gateway.request("GET", "/readyz", headers={"authorization": f"Bearer {gateway.settings.admin_token}"})
    return orjson.loads(response.content)["checks"]["targets"][target]["state"]


async def test_an_outage_every_tenant_sees_opens_the_breaker_and_a_probe_closes_it(make_gateway):
    gateway = await make_gateway(ZOWY_BREAKER_MIN_REQUESTS="4", ZOWY_BREAKER_COOLDOWN="0.3",
                                 ZOWY_BREAKER_MIN_ACCOUNTS="2", ZOWY_UPSTREAM_ATTEMPTS="2")
    first, second = await gateway.customer(), await gateway.customer()
    for customer in (first, second):
        assert (await gateway.chat(customer, user("[[fake:status=503]]", "zowy-1-pro"))).status_code == 502
    assert await breaker_state(gateway, "gpt-mini") == "open"
    marker, text = marked()
    response = await gateway.chat(second, user(text, "zowy-1-pro"))
    assert response.status_code == 503 and error_of(response)["code"] == "overloaded"
    assert gateway.sent(marker) == []  # refused without reaching the target
    await asyncio.sleep(0.35)
    response = await gateway.chat(second, user(text, "zowy-1-pro"))
    assert response.status_code == 200 and len(gateway.sent(marker)) == 1  # the probe went through
    assert await breaker_state(gateway, "gpt-mini") == "closed"


async def test_an_unreachable_target_is_skipped_once_its_breaker_opens(make_gateway):
    gateway = await make_gateway(ZOWY_BREAKER_MIN_REQUESTS="4", ZOWY_BREAKER_COOLDOWN="600")
    customer = await gateway.customer()
    gateway.upstreams.targets["gemini-pro"] = refuse
    for _ in range(4):
        assert (await gateway.chat(customer, user("hi", "zowy-2"))).status_code == 200
    assert await breaker_state(gateway, "gemini-pro") == "open"
    response = await gateway.chat(customer, user("hi", "zowy-2"))
    entry = await gateway.entry(response.headers["x-request-id"])
    assert (entry.target, entry.attempts) == ("gpt-mini", 1)  # the dead target is skipped


async def test_one_tenant_s_failures_do_not_open_the_breaker_for_another(make_gateway):
    """A 500 one request's content causes is not the target's failure; nor are timeouts that only
    one account's requests run into: another account is served at once, every time."""
    gateway = await make_gateway(ZOWY_BREAKER_MIN_REQUESTS="4", ZOWY_BREAKER_COOLDOWN="600",
                                 ZOWY_BREAKER_MIN_ACCOUNTS="2", ZOWY_UPSTREAM_ATTEMPTS="2")
    attacker, victim = await gateway.customer(), await gateway.customer()
    statuses = await asyncio.gather(*(gateway.chat(attacker, user(f"m{i} [[fake:status=500]]", "zowy-1-pro")) for i in range(8)))
    assert [r.status_code for r in statuses] == [502] * 8
    gateway.upstreams.targets["gpt-mini"] = time_out_when_asked(gateway.upstreams.openai)
    statuses = await asyncio.gather(*(gateway.chat(attacker, user(f"time out {i}", "zowy-1-pro")) for i in range(8)))
    assert [r.status_code for r in statuses] == [504] * 8
    assert await breaker_state(gateway, "gpt-mini") == "closed"
    for _ in range(10):
        response = await gateway.chat(victim, user("hi", "zowy-1-pro"))
        assert response.status_code == 200 and orjson.loads(response.content)["choices"][0]["message"]["content"] == reply_text(8)
    assert await breaker_state(gateway, "gpt-mini") == "closed"


def time_out_when_asked(answer):
    """Timeouts for the requests whose message asks for one, ``answer``'s answers for the others."""

    async def handler(request: MockRequest) -> MockResponse:
        if request.body["messages"][-1]["content"].startswith("time out"):
            raise TimeoutError()
        return await answer(request)

    return handler
