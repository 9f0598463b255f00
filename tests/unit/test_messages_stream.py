"""Upstream chat streams (the recorded ones) turned into Anthropic's events, read at any byte split:
the grammar holds, text and tool inputs add up to what the upstream said, usage is mapped (cached
tokens as cache reads), Gemini's thought signatures ride a thinking block back into the next
request, and a failure stops the stream."""
from __future__ import annotations

import json
import random

import orjson
import pytest

from app.wire.usage import Usage, estimate_usage
from app.wire.rewrite import OPENAI, MalformedUpstream
from app.upstream.providers.gemini import GeminiDialect
from app.wire.messages import signature
from app.wire.messages.answer import message_from_completion, stop_reason, token_counts
from app.wire.messages.request import parse_messages_request
from app.wire.messages.stream import MessagesStream
from tests.conformance import corpus
from tests.conformance.messages.events import check_grammar, events, message

EXCHANGES = corpus.load()
STREAMS = [e for e in EXCHANGES if e.status == 200 and e.stream]
COMPLETIONS = [e for e in EXCHANGES if e.status == 200 and not e.stream]
DIALECTS = {"openai": OPENAI, "gemini": GeminiDialect()}
REQUEST_ID = "0123456789abcdef01234567"


def estimate(n: int) -> Usage:
    return estimate_usage(400, n)


def translate(body: bytes, provider: str = "openai", cuts: list[int] | None = None) -> tuple[MessagesStream, bytes]:
    stream = MessagesStream("zowy-1", REQUEST_ID, DIALECTS[provider], estimate, prompt_estimate=100)
    out, start = [], 0
    for cut in [*(cuts or []), len(body)]:
        out.append(stream.feed(body[start:cut]))
        start = cut
    out.append(stream.finish())
    return stream, b"".join(out)


def random_cuts(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, n), min(n - 1, max(1, n // 7)))) if n > 1 else []


def expected_stop(exchange: corpus.Exchange) -> str:
    finish = [c.get("finish_reason") for chunk in exchange.chunks for c in chunk.get("choices", []) if c.get("finish_reason")]
    refusal = any(c.get("delta", {}).get("refusal") for chunk in exchange.chunks for c in chunk.get("choices", []))
    return stop_reason(finish[-1] if finish else None, bool(exchange.tool_calls()), refusal)


@pytest.mark.parametrize("split", ["whole", "random", "bytes"])
@pytest.mark.parametrize("exchange", STREAMS, ids=lambda e: e.id)
def test_recorded_streams_translate(exchange, split):
    body = exchange.replayed_body().encode()
    if split == "bytes" and len(body) > 6000:
        pytest.skip("byte-by-byte is for the short streams")
    cuts = {"whole": [], "random": random_cuts(len(body), len(body)), "bytes": list(range(1, len(body)))}[split]
    stream, out = translate(body, exchange.provider, cuts)
    got = events(out)
    check_grammar(got)
    assert stream.done and stream.error is None
    msg = message(got)
    assert msg["id"] == "msg_" + REQUEST_ID and msg["model"] == "zowy-1"
    texts = [b["text"] for b in msg["content"] if b["type"] == "text"]
    assert "".join(texts) == (exchange.text() or "") + "".join(
        c["delta"].get("refusal") or "" for chunk in exchange.chunks for c in chunk.get("choices", []))
    uses = [b for b in msg["content"] if b["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [(n, json.loads(a)) for n, a in exchange.tool_calls()]
    assert [u["id"] for u in uses] == [f"toolu_{REQUEST_ID}_{n}" for n in range(len(uses))]
    assert msg["stop_reason"] == expected_stop(exchange)
    reported = exchange.final_usage()
    if reported is not None:
        usage = Usage.from_upstream(reported)
        assert stream.usage == usage
        fresh, cached, output = token_counts(usage)
        assert (msg["usage"]["input_tokens"], msg["usage"]["cache_read_input_tokens"], msg["usage"]["output_tokens"]) == (fresh, cached, output)
    else:
        assert stream.usage is not None and stream.usage.estimated
        assert msg["usage"]["output_tokens"] == stream.usage.completion_tokens > 0
    # Nothing of the upstream's identity reaches the caller.
    leaked = [v for v in exchange.upstream_identity() if v.encode() in out]
    assert not leaked


def test_cached_tokens_are_cache_reads():
    exchange = next(e for e in STREAMS if e.file == "openai-stream-cached-tokens")
    stream, out = translate(exchange.replayed_body().encode())
    usage = message(events(out))["usage"]
    details = exchange.final_usage()["prompt_tokens_details"]["cached_tokens"]
    assert details > 0
    assert usage["cache_read_input_tokens"] == details
    assert usage["input_tokens"] == exchange.final_usage()["prompt_tokens"] - details


def test_crlf_streams_translate_the_same():
    exchange = next(e for e in STREAMS if e.file == "openai-stream-parallel-tool-calls")
    body = exchange.replayed_body().encode()
    _, lf = translate(body)
    _, crlf = translate(body.replace(b"\n", b"\r\n"), cuts=random_cuts(len(body), 3))
    assert message(events(crlf)) == message(events(lf))


def test_gemini_signatures_ride_a_thinking_block_into_the_next_request():
    exchange = next(e for e in STREAMS if e.file == "gemini-stream-tool-call-thought-signature-chunk")
    _, out = translate(exchange.replayed_body().encode(), "gemini")
    got = events(out)
    msg = message(got)
    assert [b["type"] for b in msg["content"]] == ["thinking", "tool_use"]
    # One signature_delta, the last delta of its block.
    deltas = [d["delta"]["type"] for n, d in got if n == "content_block_delta" and d["index"] == 0]
    assert deltas == ["signature_delta"]
    thinking, use = msg["content"]
    assert thinking["thinking"] == ""
    upstream_extra = exchange.chunks[0]["choices"][0]["delta"]["tool_calls"][0]["extra_content"]
    assert signature.decode(thinking["signature"])["c"] == {use["id"]: upstream_extra}
    # The next request, with the assistant turn sent back as the SDKs send it, gives the call its
    # signature back for the upstream.
    follow = {"model": "zowy-1", "max_tokens": 100, "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": msg["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "package main"}]},
    ]}
    chat, _ = parse_messages_request(orjson.dumps(follow))
    call = chat["messages"][1]["tool_calls"][0]
    assert call["id"] == use["id"] and call["extra_content"] == upstream_extra


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, index: int = 0) -> bytes:
    doc = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
           "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        doc["usage"] = usage
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def test_reasoning_then_text_then_calls_with_a_late_signature():
    body = b"".join([
        _chunk({"role": "assistant", "reasoning_content": "Let me"}),
        _chunk({"reasoning_content": " think."}),
        _chunk({"content": "Calling."}),
        _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}, "extra_content": {"google": {"thought_signature": "late"}}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}\n\n',
        b"data: [DONE]\n\n",
    ])
    stream, out = translate(body, cuts=random_cuts(len(body), 11))
    got = events(out)
    check_grammar(got)
    msg = message(got)
    # A signature that came after its call's block began goes out before the next block.
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use", "thinking", "tool_use"]
    assert msg["content"][0] == {"type": "thinking", "thinking": "Let me think.", "signature": ""}
    assert msg["content"][2]["input"] == {"a": 1} and msg["content"][4]["input"] == {}
    late = signature.decode(msg["content"][3]["signature"])
    assert late["c"] == {msg["content"][2]["id"]: {"google": {"thought_signature": "late"}}}
    assert msg["stop_reason"] == "tool_use"
    assert msg["usage"]["input_tokens"] == 10 and msg["usage"]["output_tokens"] == 5
    # The tool block starts with an empty input and an empty first fragment, as Anthropic's do.
    starts = [d for n, d in got if n == "content_block_start" and d["content_block"]["type"] == "tool_use"]
    assert starts[0]["content_block"]["input"] == {}
    first = next(d for n, d in got if n == "content_block_delta" and d["index"] == starts[0]["index"])
    assert first["delta"]["partial_json"] == ""


def test_message_start_shows_the_estimate_until_usage_comes():
    body = _chunk({"role": "assistant", "content": "hi"}) + _chunk({}, "length") + b"data: [DONE]\n\n"
    stream, out = translate(body)
    got = events(out)
    start = got[0][1]["message"]["usage"]
    assert start["input_tokens"] == 100 and start["output_tokens"] == 0
    assert got[1][0] == "ping"
    msg = message(got)
    assert msg["stop_reason"] == "max_tokens"
    assert stream.usage == estimate(1) and msg["usage"]["output_tokens"] == 1


def test_an_error_event_stops_the_stream():
    body = _chunk({"role": "assistant", "content": "partial"}) + b'data: {"error":{"message":"boom","code":500}}\n\n' + _chunk({"content": "never"})
    stream, out = translate(body)
    assert stream.error == {"message": "boom", "code": 500}
    assert not stream.done
    got = events(out)
    check_grammar(got, complete=False)
    assert b"never" not in out and stream.feed(_chunk({"content": "more"})) == b""


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b"data: [1,2]\n\n"])
def test_malformed_events_raise(bad):
    stream = MessagesStream("zowy-1", REQUEST_ID, OPENAI, estimate)
    stream.feed(_chunk({"role": "assistant", "content": "x"}))
    with pytest.raises(MalformedUpstream):
        stream.feed(bad)


def test_a_stream_cut_inside_an_event_is_malformed_at_the_end():
    stream = MessagesStream("zowy-1", REQUEST_ID, OPENAI, estimate)
    stream.feed(_chunk({"role": "assistant", "content": "x"}) + b'data: {"choices":[{"delta":{"content":"y')
    with pytest.raises(MalformedUpstream):
        stream.finish()


def test_a_last_event_without_its_blank_line_is_taken():
    stream = MessagesStream("zowy-1", REQUEST_ID, OPENAI, estimate)
    out = stream.feed(_chunk({"role": "assistant", "content": "x"}) + b"data: [DONE]")
    out += stream.finish()
    assert stream.done
    check_grammar(events(out))


def test_interleaved_tool_call_deltas_are_malformed():
    stream = MessagesStream("zowy-1", REQUEST_ID, OPENAI, estimate)
    stream.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}))
    stream.feed(_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]}))
    with pytest.raises(MalformedUpstream):
        stream.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))


def test_an_empty_stream_still_has_a_message():
    stream, out = translate(b"data: [DONE]\n\n")
    got = events(out)
    check_grammar(got)
    assert message(got)["content"] == [] and message(got)["stop_reason"] == "end_turn"


# non-stream answers

@pytest.mark.parametrize("exchange", COMPLETIONS, ids=lambda e: e.id)
def test_recorded_completions_become_messages(exchange):
    doc = json.loads(exchange.body)
    DIALECTS[exchange.provider].completion(doc, "chatcmpl-" + REQUEST_ID)
    raw, usage = message_from_completion(doc, "zowy-1", REQUEST_ID, estimate)
    msg = json.loads(raw)
    assert list(msg) == ["model", "id", "type", "role", "content", "stop_reason", "stop_sequence", "usage"]
    assert msg["model"] == "zowy-1" and msg["id"] == "msg_" + REQUEST_ID
    choice = doc["choices"][0]["message"]
    texts = [b["text"] for b in msg["content"] if b["type"] == "text"]
    assert "".join(texts) == (choice.get("content") or "") + (choice.get("refusal") or "")
    uses = [b for b in msg["content"] if b["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [(n, json.loads(a)) for n, a in exchange.tool_calls()]
    reported = Usage.from_upstream(doc.get("usage"))
    assert usage == (reported or usage)
    fresh, cached, output = token_counts(usage)
    assert msg["usage"]["input_tokens"] == fresh and msg["usage"]["cache_read_input_tokens"] == cached
    assert msg["usage"]["output_tokens"] == output
    if choice.get("extra_content") or any(c.get("extra_content") for c in choice.get("tool_calls") or []):
        assert msg["content"][0]["type"] == "thinking"
        carried = signature.decode(msg["content"][0]["signature"])
        assert carried["m"] == choice.get("extra_content")
        assert carried["t"] == choice.get("thought_signature")
    leaked = [v for v in exchange.upstream_identity() if v in raw.decode()]
    assert not leaked


def test_gemini_hidden_thinking_tokens_count_as_output():
    usage = Usage(35, 12, 109)
    assert token_counts(usage) == (35, 0, 74)
    assert token_counts(Usage(100, 10, 110, cached_tokens=60)) == (40, 60, 10)


@pytest.mark.parametrize("finish, tools, refusal, expected", [
    ("stop", False, False, "end_turn"), ("length", True, False, "max_tokens"), ("tool_calls", False, False, "tool_use"),
    ("stop", True, False, "tool_use"), ("content_filter", False, False, "refusal"), ("stop", False, True, "refusal"),
    (None, False, False, "end_turn"),
])
def test_stop_reasons(finish, tools, refusal, expected):
    assert stop_reason(finish, tools, refusal) == expected


def test_a_completion_without_usage_shows_the_billed_estimate():
    doc = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 40}, "finish_reason": "stop"}]}
    raw, usage = message_from_completion(doc, "zowy-1", REQUEST_ID, estimate)
    assert usage == estimate(10) and json.loads(raw)["usage"]["output_tokens"] == 10


@pytest.mark.parametrize("text", ["plain", 'a "quote" and a \\ backslash', "line\nbreak\ttab", "snow ☃ \u2028 😀", "ends \\"])
def test_plain_text_chunks_copied_as_bytes_read_as_parsed_ones(text, monkeypatch):
    """The byte path for content-only chunks writes what parsing them would."""
    body = (_chunk({"role": "assistant", "content": ""}) + _chunk({"content": text}) + _chunk({"role": "assistant", "content": text})
            + _chunk({}, "stop") + b"data: [DONE]\n\n")
    fast_stream, fast = translate(body)
    import app.wire.messages.stream as module
    monkeypatch.setattr(module, "_TEXT_CHUNK", __import__("re").compile(rb"(?!)"))
    slow_stream, slow = translate(body)
    assert events(fast) == events(slow)
    assert message(events(fast))["content"] == [{"type": "text", "text": text + text}]
    assert fast_stream.text_chars >= slow_stream.text_chars == 2 * len(text)
