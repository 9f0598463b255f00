"""Recorded Gemini and OpenAI chat traffic replayed through the gateway's Messages API to the
anthropic SDK: every event parses as the SDK's own types and follows Anthropic's grammar, text and
tool inputs add up to what the upstream said, usage is what is billed (``api: "messages"``), no
upstream identity reaches the caller, and Gemini's thought signatures come back with their calls."""
from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from tests import support
from tests.conformance import corpus
from tests.conformance.conftest import PUBLIC
from tests.conformance.messages.events import check_grammar, events
from tests.conformance.test_recordings import Capture, assert_no_upstream_identity
from app.wire.usage import Usage
from app.wire.messages.answer import token_counts

EXCHANGES = corpus.load()
STREAMS = [e for e in EXCHANGES if e.status == 200 and e.stream]
COMPLETIONS = [e for e in EXCHANGES if e.status == 200 and not e.stream]
ERRORS = [e for e in EXCHANGES if e.status != 200]
# The caller's status and Anthropic's error type for each recorded upstream failure.
EXPECTED = {400: (400, "invalid_request_error"), 401: (502, "api_error"), 403: (502, "api_error"),
            404: (502, "api_error"), 429: (503, "overloaded_error"), 500: (502, "api_error"), 503: (502, "api_error")}


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def client(replay_gateway, replay_customer, capture):
    with anthropic.Anthropic(base_url=replay_gateway.url, api_key=replay_customer.key, max_retries=0, timeout=30,
                             http_client=httpx2.Client(transport=capture)) as c:
        yield c


def tools_of(exchange: corpus.Exchange) -> list[dict]:
    """The recorded request's tools as Anthropic tools (the replay answers whatever is asked)."""
    out = []
    for tool in (exchange.request or {}).get("tools") or []:
        function = tool["function"]
        out.append({"name": function["name"], "description": function.get("description") or "",
                    "input_schema": function.get("parameters") or {"type": "object"}})
    return out


def ledger(gateway, request_id: str):
    return support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)))


def expected_usage(exchange: corpus.Exchange) -> tuple[int, int, int] | None:
    usage = Usage.from_upstream(exchange.final_usage())
    return token_counts(usage) if usage is not None else None


@pytest.mark.parametrize("exchange", STREAMS, ids=lambda e: e.id)
def test_stream(exchange, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    tools = tools_of(exchange)
    with client.messages.stream(model=PUBLIC[exchange.provider], max_tokens=1024, tools=tools or anthropic.omit,
                                messages=[{"role": "user", "content": "Say hello!"}]) as stream:
        kinds = [event.type for event in stream]  # every event parsed by the SDK's types
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert kinds and final.id == "msg_" + request_id and final.model == PUBLIC[exchange.provider]
    check_grammar(events(b"".join(capture.bytes[1:])))  # the first piece is the headers
    text = "".join(b.text for b in final.content if b.type == "text")
    refusal = "".join(c["delta"].get("refusal") or "" for chunk in exchange.chunks for c in chunk.get("choices", []))
    assert text == (exchange.text() or "") + refusal
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [(n, json.loads(a)) for n, a in exchange.tool_calls()]
    assert final.stop_reason == ("tool_use" if uses else "max_tokens" if any(
        c.get("finish_reason") == "length" for chunk in exchange.chunks for c in chunk.get("choices", [])) else
        "refusal" if refusal else "end_turn")
    assert_no_upstream_identity(exchange, capture.received())
    entry = ledger(replay_gateway, request_id)
    assert entry.outcome == "ok" and entry.stream and entry.api == "messages"
    shown = (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens)
    assert shown == (token_counts(Usage(entry.prompt_tokens, entry.completion_tokens, entry.total_tokens,
                                        cached_tokens=entry.cached_tokens)))
    if expected_usage(exchange) is not None:
        assert shown == expected_usage(exchange) and not entry.estimated
    else:
        assert entry.estimated and entry.completion_tokens >= 1


@pytest.mark.parametrize("exchange", COMPLETIONS, ids=lambda e: e.id)
def test_completion(exchange, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    raw = client.messages.with_raw_response.create(model=PUBLIC[exchange.provider], max_tokens=1024,
                                                   tools=tools_of(exchange) or anthropic.omit,
                                                   messages=[{"role": "user", "content": "Say hello!"}])
    message = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert message.id == "msg_" + request_id and raw.headers["request-id"] == request_id
    choice = exchange.document["choices"][0]["message"]
    text = "".join(b.text for b in message.content if b.type == "text")
    assert text == (choice.get("content") or "") + (choice.get("refusal") or "")
    assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        (n, json.loads(a)) for n, a in exchange.tool_calls()]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == expected_usage(exchange)
    assert_no_upstream_identity(exchange, capture.received())
    entry = ledger(replay_gateway, request_id)
    assert entry.api == "messages" and not entry.estimated


@pytest.mark.parametrize("exchange", ERRORS, ids=lambda e: e.id)
def test_error(exchange, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=PUBLIC[exchange.provider], max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                               stream=bool((exchange.request or {}).get("stream")))
    status, kind = (502, "api_error") if "invalid-api-key-is-400" in exchange.shows else EXPECTED[exchange.status]
    error = info.value
    assert error.status_code == status
    body = error.response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["request_id"] == error.response.headers["x-request-id"]
    received = capture.received().lower()
    for marker in (b"googleapis", b"api.openai.com", b"generativelanguage", b"sk-", b"aiza"):
        assert marker not in received
    if exchange.status == 429:
        assert error.response.headers["retry-after"]
    assert_no_upstream_identity(exchange, capture.received())
    entry = ledger(replay_gateway, error.response.headers["x-request-id"])
    assert entry.outcome == "upstream_error" and entry.total_tokens == 0 and entry.api == "messages"


def turns(name: str) -> list[corpus.Exchange]:
    return [e for e in EXCHANGES if e.file == name]


def test_gemini_signatures_survive_a_tool_loop(client, replay):
    """A Gemini 3 call streamed to the SDK, its message sent back as SDK users do: the upstream gets
    the call again with its thought signature (Gemini 3 refuses it otherwise)."""
    (call_turn,) = turns("gemini-stream-tool-call-thought-signature-chunk")
    answer = turns("gemini-stream-text-two-chunks")[0]
    replay.queue(call_turn)
    replay.queue(answer)
    tools = [{"name": "read", "input_schema": {"type": "object", "properties": {"filePath": {"type": "string"}}}}]
    messages = [{"role": "user", "content": "Read gateway.go"}]
    with client.messages.stream(model="zowy-2", max_tokens=256, messages=messages, tools=tools) as stream:
        first = stream.get_final_message()
    (use,) = [b for b in first.content if b.type == "tool_use"]
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "package main"}]}]
    with client.messages.stream(model="zowy-2", max_tokens=256, messages=messages, tools=tools) as stream:
        text = stream.get_final_text()
    assert text == answer.text()
    signature = call_turn.chunks[0]["choices"][0]["delta"]["tool_calls"][0]["extra_content"]
    sent = replay.received[-1]["messages"]
    assert sent[0]["role"] == "system"  # the guard first
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["extra_content"] == signature and assistant["tool_calls"][0]["id"] == use.id
    assert next(m for m in sent if m["role"] == "tool") == {"role": "tool", "tool_call_id": use.id, "content": "package main"}


def test_gemini_non_stream_loop_keeps_the_message_signature(client, replay):
    first, second = turns("gemini-tool-loop-thought-signature-nonstream")
    replay.queue(first)
    replay.queue(second)
    tools = [{"name": "get_current_time", "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": "What time is it?"}]
    answer = client.messages.create(model="zowy-1", max_tokens=256, messages=messages, tools=tools)
    assert [b.type for b in answer.content] == ["thinking", "tool_use"] and answer.content[0].thinking == ""
    use = answer.content[1]
    messages += [{"role": "assistant", "content": [b.model_dump() for b in answer.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Noon"}]}]
    final = client.messages.create(model="zowy-1", max_tokens=256, messages=messages, tools=tools)
    assert "".join(b.text for b in final.content if b.type == "text") == second.text()
    recorded = first.document["choices"][0]["message"]
    assistant = next(m for m in replay.received[-1]["messages"] if m["role"] == "assistant")
    assert assistant["extra_content"] == recorded["extra_content"]
    assert assistant["thought_signature"] == recorded["thought_signature"]
