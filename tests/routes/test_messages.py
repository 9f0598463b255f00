"""The Messages API end to end, judged by the anthropic SDK and plain HTTP: a tool loop created and
streamed, count_tokens and the model list; every failure in Anthropic's envelope; bad input refused
naming the field with nothing billed; the gateway's promises (identity guard, no upstream identity,
per-key controls, one ledger entry per request with ``api: "messages"``) held."""
from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from tests import support
from tests.conftest import RecordingTransport, http, leaks

TOOLS = [{"name": "get_weather", "description": "Current weather for a city",
          "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                           "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
MODELS = ["zowy-1", "zowy-1-pro"]  # a Gemini target and an OpenAI one on the fake upstreams


def sdk(gateway, key: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=30.0,
                               http_client=httpx2.Client(transport=RecordingTransport()), **kwargs)


def entry(gateway, request_id: str):
    return support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)))


def ledger_count(gateway, account_id: str) -> int:
    return support.run_store(gateway, lambda s: s.ledger_count(account_id))


def follow_up(messages: list, answer) -> tuple[list, list]:
    """The next turn as SDK users write it: the assistant's content sent back, a result per call."""
    uses = [b for b in answer.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"Sunny in {u.input['city']}"} for u in uses]
    return [*messages, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in answer.content]},
            {"role": "user", "content": [*results, {"type": "text", "text": "Now answer."}]}], uses


@pytest.mark.parametrize("model", MODELS)
def test_create_runs_a_tool_loop(gateway, customer, model):
    messages = [{"role": "user", "content": "What is the weather? Please call a tool."}]
    with sdk(gateway, customer.key) as client:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=256, system="Use tools.",
                                                       messages=messages, tools=TOOLS)
        first = raw.parse()
        assert first.stop_reason == "tool_use" and first.model == model
        assert first.id == "msg_" + raw.headers["x-request-id"]
        messages, uses = follow_up(messages, first)
        assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Tashkent"})]
        assert uses[0].id.startswith("toolu_")
        second = client.messages.create(model=model, max_tokens=256, system="Use tools.", messages=messages, tools=TOOLS)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text
    assert second.usage.input_tokens > 0 and second.usage.output_tokens > 0
    recorded = entry(gateway, raw.headers["x-request-id"])
    assert recorded.api == "messages" and recorded.model == model and not recorded.stream
    assert recorded.prompt_tokens == first.usage.input_tokens + first.usage.cache_read_input_tokens
    support.wait_until(lambda: ledger_count(gateway, customer.account_id) == 2)


@pytest.mark.parametrize("model", MODELS)
def test_stream_runs_a_tool_loop(gateway, customer, model):
    messages = [{"role": "user", "content": "Weather, please: call a tool."}]
    with sdk(gateway, customer.key) as client:
        with client.messages.stream(model=model, max_tokens=256, messages=messages, tools=TOOLS) as stream:
            kinds = [event.type for event in stream]
            first = stream.get_final_message()
            ids = [stream.response.headers["x-request-id"]]
        assert kinds[0] == "message_start" and "content_block_stop" in kinds and kinds[-1] == "message_stop"
        assert first.stop_reason == "tool_use"
        messages, uses = follow_up(messages, first)
        assert uses[0].input == {"city": "Tashkent"}
        with client.messages.stream(model=model, max_tokens=256, messages=messages, tools=TOOLS) as stream:
            text = "".join(stream.text_stream)
            second = stream.get_final_message()
            ids.append(stream.response.headers["x-request-id"])
    assert text and second.content[0].text == text and second.stop_reason == "end_turn"
    assert second.usage.output_tokens > 0
    entries = [entry(gateway, request_id) for request_id in ids]
    assert {e.api for e in entries} == {"messages"} and all(e.stream for e in entries)
    assert entries[1].completion_tokens == second.usage.output_tokens
    assert ledger_count(gateway, customer.account_id) == 2


def test_raw_stream_events_and_beta_path(gateway, customer):
    with http(gateway) as h:
        r = h.post("/v1/messages?beta=true", headers={"x-api-key": customer.key, "anthropic-version": "2023-06-01",
                                                      "anthropic-beta": "interleaved-thinking-2025-05-14"},
                   json={"model": "zowy-1", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in r.text.split("\n") if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert "[DONE]" not in r.text


def test_api_prefix_and_bearer_auth(gateway, customer):
    with http(gateway) as h:
        r = h.post("/api/v1/messages", headers={"Authorization": f"Bearer {customer.key}"},
                   json={"model": "zowy-1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["type"] == "message"


def test_count_tokens_is_an_unbilled_estimate(gateway, customer):
    with sdk(gateway, customer.key) as client:
        small = client.messages.count_tokens(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
        big = client.messages.count_tokens(model="zowy-1", system="Use tools." * 50, tools=TOOLS,
                                           messages=[{"role": "user", "content": "hello " * 400}])
    assert 0 < small.input_tokens < big.input_tokens
    assert ledger_count(gateway, customer.account_id) == 0


def test_models_list_in_anthropics_shape(gateway, customer):
    with sdk(gateway, customer.key) as client:
        ids = [m.id for m in client.models.list()]
        one = client.models.retrieve("zowy-2")
    assert ids == ["zowy-1", "zowy-1-pro", "zowy-2"]
    assert one.type == "model" and one.display_name == "zowy-2"
    with http(gateway) as h:  # without anthropic-version: OpenAI's shape, as before
        assert h.get("/v1/models", headers={"Authorization": f"Bearer {customer.key}"}).json()["object"] == "list"


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize("body, param", [
    ({"model": "zowy-1", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "zowy-1", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
     "messages.0.content.0.type"),
    ({"model": "zowy-1", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                                        {"role": "user", "content": [{"type": "text", "text": "c", "extra": 1}]}]},
     "messages.2.content.0.text.extra"),
    ({"model": "zowy-1", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AAAA"}}]}]},
     "messages.0.content.0.image.source.base64.media_type"),
    ({"model": "zowy-1", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]}, "messages.0.content.0.tool_use_id"),
    ({"model": "zowy-1", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
      "messages": [{"role": "user", "content": "x"}]}, "tools.0.type"),
    ({"model": "zowy-1", "max_tokens": 5, "temperature": 3, "messages": [{"role": "user", "content": "x"}]}, "temperature"),
    ({"model": "zowy-1", "max_tokens": 5, "logit_bias": {}, "messages": [{"role": "user", "content": "x"}]}, "logit_bias"),
])
def test_bad_input_names_the_field_and_bills_nothing(gateway, customer, body, param):
    with http(gateway) as h:
        r = h.post("/v1/messages", headers={"x-api-key": customer.key}, json=body)
    assert r.status_code == 400
    error = error_of(r)
    assert error["type"] == "invalid_request_error" and error["message"].startswith(param + ":")
    assert ledger_count(gateway, customer.account_id) == 0


def test_a_body_that_is_not_json(gateway, customer):
    with http(gateway) as h:
        r = h.post("/v1/messages", headers={"x-api-key": customer.key, "content-type": "application/json"}, content=b"{nope")
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"


@pytest.mark.parametrize("headers, status, kind", [
    ({}, 401, "authentication_error"),
    ({"x-api-key": "zk-not-a-real-key"}, 401, "authentication_error"),
    ({"Authorization": "Bearer zk-not-a-real-key"}, 401, "authentication_error"),
])
def test_authentication_errors(gateway, headers, status, kind):
    with http(gateway) as h:
        r = h.post("/v1/messages", headers=headers, json={"model": "zowy-1", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == status and error_of(r)["type"] == kind


def test_unknown_model_is_not_found(gateway, customer):
    with sdk(gateway, customer.key) as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    assert info.value.body["error"]["message"].startswith("model: ")


def test_an_empty_balance_is_a_billing_error(gateway):
    customer = support.new_customer(gateway, tokens=None)
    with sdk(gateway, customer.key) as client:
        with pytest.raises(anthropic.PaymentRequiredError) as info:
            client.messages.create(model="zowy-1", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "billing_error"


def test_rate_limit_keeps_retry_after(gateway):
    customer = support.new_customer(gateway, per_minute=1)
    with sdk(gateway, customer.key) as client:
        client.messages.create(model="zowy-1", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="zowy-1", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_upstream_failures_are_server_errors(gateway, customer):
    with http(gateway) as h:
        r = h.post("/v1/messages", headers={"x-api-key": customer.key},
                   json={"model": "zowy-1-pro", "max_tokens": 5, "messages": [{"role": "user", "content": "x [[fake:status=500]]"}]})
        assert r.status_code == 502 and error_of(r)["type"] == "api_error"
        r = h.post("/v1/messages", headers={"x-api-key": customer.key},
                   json={"model": "zowy-1-pro", "max_tokens": 5, "stream": True,
                         "messages": [{"role": "user", "content": "x [[fake:error_event=2,delay=0.1]]"}]})
    assert r.status_code == 200
    last = [block for block in r.text.split("\n\n") if block][-1]
    assert last.startswith("event: error\ndata: ")
    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "api_error"


def test_too_large_a_body(gateway, customer):
    limit = gateway.settings().max_body_bytes
    with http(gateway) as h:
        r = h.post("/v1/messages", headers={"x-api-key": customer.key, "content-type": "application/json"},
                   content=b'{"model":"zowy-1","max_tokens":5,"messages":[{"role":"user","content":"' + b"x" * limit + b'"}]}')
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"


def test_the_guard_comes_before_the_callers_system(gateway, customer):
    with sdk(gateway, customer.key) as client:
        answer = client.messages.create(model="zowy-1", max_tokens=64, system="You are Claude, made by Anthropic.",
                                        messages=[{"role": "user", "content": "who are you [[fake:echo=system]]"}])
    assert answer.content[0].text == gateway.settings().persona_prompt


@pytest.mark.parametrize("model, stream, directive", [
    ("zowy-1", False, ""), ("zowy-1", True, ""), ("zowy-1-pro", True, ""), ("zowy-2", False, ""),
    ("zowy-1-pro", False, "[[fake:status=400]]"), ("zowy-1-pro", False, "[[fake:status=404]]"),
    ("zowy-1-pro", True, "[[fake:cut=3]]"), ("zowy-1-pro", True, "[[fake:malformed=2]]"),
    ("zowy-1-pro", True, "[[fake:error_event=2]]"), ("zowy-1", True, "call a tool"),
])
def test_no_upstream_identity_in_any_answer(gateway, customer, upstreams, model, stream, directive):
    hosts = tuple(f"127.0.0.1:{p.port}" for p in upstreams.values()) + ("googleapis", "api.openai.com")
    with http(gateway) as h:
        with h.stream("POST", "/v1/messages", headers={"x-api-key": customer.key},
                      json={"model": model, "max_tokens": 64, "stream": stream, "tools": TOOLS,
                            "messages": [{"role": "user", "content": f"hello {directive}"}]}) as r:
            body = b"".join(r.iter_bytes())
            head = "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
    assert leaks(head + b"\n" + body, hosts) == [], body[:2000]
    assert b"chatcmpl" not in body and b"call_fake" not in body


def test_key_controls_hold(gateway):
    customer = support.new_customer(gateway)

    async def restrict(store):
        from app.accounts import provisioning

        await provisioning.set_key_controls(store, gateway.settings(), customer.key_id, {"models": ["zowy-2"]})

    support.run_store(gateway, restrict)
    with sdk(gateway, customer.key) as client:
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(model="zowy-1", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_a_hang_up_mid_stream_is_billed_once(gateway, customer):
    import socket
    import time

    payload = json.dumps({"model": "zowy-1-pro", "max_tokens": 500, "stream": True,
                          "messages": [{"role": "user", "content": "long [[fake:chunks=200,delay=0.05]]"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.process.port), timeout=10)
    sock.sendall(b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"x-api-key: {customer.key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while received.count(b"event: content_block_delta") < 4:
        received += sock.recv(65536)
    request_id = received.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    sock.close()
    recorded = entry(gateway, request_id)
    assert recorded.outcome == "client_disconnected" and recorded.stream and recorded.api == "messages"
    assert recorded.estimated and recorded.completion_tokens >= 3
    time.sleep(0.5)
    assert ledger_count(gateway, customer.account_id) == 1
    (package,) = support.run_store(gateway, lambda s: s.packages(customer.account_id))
    assert package.used == recorded.total_tokens


def test_a_small_balance_is_served_a_limited_answer(gateway):
    """A balance that cannot hold max_tokens serves the answer limited to what it holds, which ends
    for its length (max_tokens), as a max_tokens of the caller's would; billed within the balance."""
    customer = support.new_customer(gateway, tokens=3000)
    with sdk(gateway, customer.key) as client:
        raw = client.messages.with_raw_response.create(
            model="zowy-1", max_tokens=20_000, messages=[{"role": "user", "content": "hi [[fake:honor_max=1,chunks=20000]]"}])
    answer = raw.parse()
    assert answer.stop_reason == "max_tokens" and 0 < answer.usage.output_tokens < 3000
    recorded = entry(gateway, raw.headers["x-request-id"])
    assert recorded.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens <= 3000
