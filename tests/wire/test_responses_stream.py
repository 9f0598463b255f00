"""Chat chunks into Responses events: OpenAI's order, gapless sequence numbers, items never
interleaved, the full response in the terminal event, whatever the byte splits."""
from __future__ import annotations

import json
import random

import orjson
import pytest

from app.wire.usage import Usage
from app.wire.rewrite import MalformedUpstream
from app.upstream.providers.gemini import GeminiDialect
from app.wire.responses import signatures
from app.wire.responses.output import Frame
from app.wire.responses.request import parse_responses_request
from app.wire.responses.stream import ResponsesStream
from app.wire.responses.translate import to_chat

RID = "0123456789abcdef01234567"
TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
    {"type": "namespace", "name": "agents", "description": "d", "tools": [{"type": "function", "name": "spawn"}]},
]


def translator(request: dict | None = None, dialect=None, **kw) -> ResponsesStream:
    request = parse_responses_request(orjson.dumps({"model": "zowy-1", "input": "hi", "stream": True, "tools": TOOLS, **(request or {})}))
    chat = to_chat(request)
    frame = Frame(request, "zowy-1", RID, created_at=1700000000)
    if dialect is not None:
        kw["dialect"] = dialect
    return ResponsesStream(frame, chat.tools, **kw)


BASE = {"id": "chatcmpl-UPSTREAM", "object": "chat.completion.chunk", "created": 7, "model": "gpt-5.4-mini-2026",
        "system_fingerprint": "fp_up"}


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    doc = dict(BASE)
    doc["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}] if choices else []
    if usage is not None:
        doc["usage"] = usage
    return b"data: " + orjson.dumps(doc) + b"\n\n"


DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16,
         "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}


def text_stream(words=("Hel", "lo", " there")) -> list[bytes]:
    return ([chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in words]
            + [chunk(finish="stop"), chunk(usage=USAGE, choices=False), DONE])


def call_delta(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    call: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def run(events: list[bytes], stream: ResponsesStream | None = None, splits: int = 0, seed: int = 0) -> tuple[list[dict], ResponsesStream]:
    stream = stream or translator()
    raw = b"".join(events)
    out = b""
    if splits:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(raw)), min(splits, len(raw) - 1)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    else:
        pieces = events
    for piece in pieces:
        out += stream.feed(piece)
    out += stream.finish()
    return parse_events(out), stream


def parse_events(raw: bytes) -> list[dict]:
    events = []
    text = raw.decode()
    assert text.endswith("\n\n") or not text
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        doc = json.loads(data_line[6:])
        assert doc["type"] == name_line[7:]
        events.append(doc)
    return events


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def check_invariants(events: list[dict]) -> dict:
    """What holds of every stream: gapless sequence numbers, items added/done in order and never
    interleaved, deltas adding up, the terminal response's output equal to the items done."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert types(events)[:2] == ["response.created", "response.in_progress"]
    assert events[0]["response"] == events[1]["response"]
    terminal = events[-1]
    assert terminal["type"] in ("response.completed", "response.incomplete", "response.failed")
    done_items = []
    open_index = None
    text: dict[tuple, str] = {}
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_index is None, "an item was added while another was open"
            open_index = event["output_index"]
            assert open_index == len(done_items)
        elif kind == "response.output_item.done":
            assert event["output_index"] == open_index
            done_items.append(event["item"])
            open_index = None
        else:
            assert event.get("output_index") == open_index, f"{kind} outside its item"
            key = (event.get("item_id"), event.get("content_index"))
            if kind.endswith(".delta"):
                text[key] = text.get(key, "") + event["delta"]
            elif kind in ("response.output_text.done", "response.refusal.done", "response.function_call_arguments.done",
                          "response.custom_tool_call_input.done"):
                value = event.get("text", event.get("refusal", event.get("arguments", event.get("input"))))
                assert text.get(key, "") == value
    assert open_index is None
    if terminal["type"] != "response.failed":
        assert terminal["response"]["output"] == done_items
    return terminal["response"]


def test_text_stream_in_openai_order():
    events, stream = run(text_stream())
    assert types(events) == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    response = check_invariants(events)
    assert response["status"] == "completed" and response["id"] == "resp_" + RID
    assert response["output"][0]["content"][0]["text"] == "Hello there"
    assert response["output"][0]["id"] == f"msg_{RID}0000"
    assert response["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                                 "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 16}
    assert stream.done and stream.usage == Usage(11, 5, 16, reasoning_tokens=2, cached_tokens=4)
    assert stream.response == response
    assert events[4] == {"type": "response.output_text.delta", "sequence_number": 4, "item_id": f"msg_{RID}0000",
                         "output_index": 0, "content_index": 0, "delta": "Hel", "logprobs": []}


def test_text_deltas_like_the_last_plain_one_are_not_parsed(monkeypatch):
    """After one plain text delta, a chunk that is the same but for a text without quotes or escapes
    goes out from its bytes; any other chunk is parsed, and the events are the same either way."""
    import app.wire.responses.stream

    words = ("Hel", "lo", " th\u00e9re", 'a "quote"', "tab\t", "\u4e2d\u6587", "end")
    parsed = []
    real = app.wire.responses.stream.read_chunk
    monkeypatch.setattr(app.wire.responses.stream, "read_chunk", lambda data: parsed.append(data) or real(data))
    events, stream = run(text_stream(words))
    response = check_invariants(events)
    assert response["output"][0]["content"][0]["text"] == "".join(words)
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == list(words)
    # Parsed: the role chunk, "Hel" (which opens the message and teaches the bytes around a text),
    # the quote, the tab, the finish and the usage chunk; "lo", "th\u00e9re", the CJK text and "end"
    # were not.
    texts = [json.loads(data)["choices"][0]["delta"].get("content") for data in parsed if b'"choices":[{' in data]
    assert texts == ["", "Hel", 'a "quote"', "tab\t", None] and len(parsed) == 6
    assert stream.text_chars == len("".join(words)) and stream.events == len(words) + 3


def test_a_text_that_comes_with_its_role_does_not_teach_the_bytes_around_a_text(monkeypatch):
    """A first chunk that carries the role and the text together has other bytes around its text
    than the deltas after it: the first delta of a text alone teaches them instead."""
    import app.wire.responses.stream

    words = ("Hel", "lo", " there", "end")
    parsed = []
    real = app.wire.responses.stream.read_chunk
    monkeypatch.setattr(app.wire.responses.stream, "read_chunk", lambda data: parsed.append(data) or real(data))
    events, stream = run([chunk({"role": "assistant", "content": words[0]})] + text_stream(words[1:])[1:])
    response = check_invariants(events)
    assert response["output"][0]["content"][0]["text"] == "".join(words)
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == list(words)
    texts = [json.loads(data)["choices"][0]["delta"].get("content") for data in parsed if b'"choices":[{' in data]
    assert texts == ["Hel", "lo", None] and len(parsed) == 4


def test_obfuscated_text_deltas_like_the_last_plain_one_are_not_parsed(monkeypatch):
    """OpenAI ends each chunk in an ``obfuscation`` of other letters (as in
    tests/conformance/recordings/openai-stream-cached-tokens.json): a delta the same as the last plain
    one but for its text and that value goes out from its bytes, unless the value holds an escape."""
    import app.wire.responses.stream

    values = iter(["pCjdYd4kX4W2q", "DJ94I8XQj86", "qgSSFwDBmaW", "4xVBYer6Uy1atr", "a\\u0041", "Ye", "XxMhsMje0", "J3eKDOHW"])

    def obfuscated(event: bytes) -> bytes:
        if event == DONE:
            return event
        doc = orjson.loads(event[6:])
        doc = {**{k: doc[k] for k in ("id", "object", "created", "model")}, "service_tier": "default",
               **{k: v for k, v in doc.items() if k not in ("id", "object", "created", "model")}, "obfuscation": next(values)}
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    words = ("Hel", "lo", " there", "x", "end")
    parsed = []
    real = app.wire.responses.stream.read_chunk
    monkeypatch.setattr(app.wire.responses.stream, "read_chunk", lambda data: parsed.append(data) or real(data))
    events, stream = run([obfuscated(e) for e in text_stream(words)])
    response = check_invariants(events)
    assert response["output"][0]["content"][0]["text"] == "".join(words)
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == list(words)
    # Parsed: the role chunk, "Hel" (which teaches the bytes around a text), "x" (an escape in its
    # obfuscation), the finish and the usage chunk; "lo", " there" and "end" were not.
    texts = [json.loads(data)["choices"][0]["delta"].get("content") for data in parsed if b'"choices":[{' in data]
    assert texts == ["", "Hel", "x", None] and len(parsed) == 5
    assert stream.events == len(words) + 3


@pytest.mark.parametrize("seed", range(12))
def test_any_byte_split_gives_the_same_events(seed):
    events = text_stream(("a", "\u00e9\u4e2d", "\"quoted\"\n", "z" * 300)) + []
    whole, _ = run(events)
    split, _ = run(events, splits=1 + seed * 7, seed=seed)
    for event in whole + split:
        event.get("response", {}).pop("completed_at", None)
    assert split == whole


def test_crlf_framing():
    events = [e.replace(b"\n", b"\r\n") for e in text_stream()]
    out, _ = run(events, splits=9)
    assert check_invariants(out)["output"][0]["content"][0]["text"] == "Hello there"


def test_parallel_calls_are_never_interleaved():
    events = [
        chunk({"role": "assistant", "content": None}),
        chunk(call_delta(0, "call_u1", "get_weather")),
        chunk(call_delta(1, "call_u2", "get_weather")),
        chunk(call_delta(0, arguments='{"city":')),
        chunk(call_delta(1, arguments='{"city":"Oslo"}')),
        chunk(call_delta(0, arguments='"Paris"}')),
        chunk(finish="tool_calls"),
        chunk(usage=USAGE, choices=False),
        DONE,
    ]
    out, _ = run(events, splits=13, seed=3)
    response = check_invariants(out)
    first, second = response["output"]
    assert (first["arguments"], second["arguments"]) == ('{"city":"Paris"}', '{"city":"Oslo"}')
    assert first["call_id"] == f"call_{RID}0000" and second["call_id"] == f"call_{RID}0001"
    assert first["id"] == f"fc_{RID}0000" and second["id"] == f"fc_{RID}0001"
    assert "call_u1" not in json.dumps(out)  # the upstream's call ids are not ours to show
    assert types(out).count("response.output_item.added") == 2


def test_text_then_call_then_late_text():
    events = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk(call_delta(0, "c1", "get_weather", '{"city":"Rome"}')),
        chunk({"content": " Done."}),
        chunk(finish="tool_calls"),
        DONE,
    ]
    out, _ = run(events)
    response = check_invariants(out)
    assert [i["type"] for i in response["output"]] == ["message", "function_call", "message"]
    assert response["output"][2]["content"][0]["text"] == " Done."


def test_custom_and_namespaced_calls():
    events = [
        chunk(call_delta(0, "c1", "apply_patch", '{"input":"*** Begin Patch\\n')),
        chunk(call_delta(0, arguments='*** End Patch"}')),
        chunk(call_delta(1, "c2", "agents__spawn", "{}")),
        chunk(finish="tool_calls"),
        DONE,
    ]
    out, _ = run(events)
    response = check_invariants(out)
    patch, spawn = response["output"]
    assert patch["type"] == "custom_tool_call" and patch["input"] == "*** Begin Patch\n*** End Patch"
    assert patch["id"].startswith("ctc_") and patch["name"] == "apply_patch"
    assert spawn == {"id": f"fc_{RID}0001", "type": "function_call", "status": "completed", "arguments": "{}",
                     "call_id": f"call_{RID}0001", "name": "spawn", "namespace": "agents"}
    assert "response.custom_tool_call_input.done" in types(out)


GEMINI_CALLS = [
    {"extra_content": {"google": {"thought_signature": "SIG-A"}}, "function": {"arguments": '{"city":"Paris"}', "name": "get_weather"},
     "id": "", "type": "function"},
    {"extra_content": {"google": {"thought_signature": "SIG-B"}}, "function": {"arguments": '{"city":"Oslo"}', "name": "get_weather"},
     "id": "", "type": "function"},
]


def gemini_events() -> list[bytes]:
    def event(doc):
        return b"data: " + orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) + b"\n\n"
    base = {"created": 9, "model": "gemini-3-flash", "object": "chat.completion.chunk"}
    usage = {"completion_tokens": 10, "prompt_tokens": 20, "total_tokens": 45}
    return [
        event({**base, "choices": [{"delta": {"role": "assistant", "tool_calls": GEMINI_CALLS}, "finish_reason": "tool_calls", "index": 0}],
               "usage": usage}),
        DONE,
    ]


def test_gemini_signatures_carried_and_sent_back():
    out, stream = run(gemini_events(), translator(dialect=GeminiDialect()), splits=5)
    response = check_invariants(out)
    carrier, first, second = response["output"]
    assert carrier["type"] == "reasoning" and carrier["id"] == f"rs_{RID}0000" and carrier["summary"] == []
    assert signatures.decode(carrier["encrypted_content"]) == {
        first["call_id"]: {"google": {"thought_signature": "SIG-A"}},
        second["call_id"]: {"google": {"thought_signature": "SIG-B"}},
    }
    assert "SIG-A" not in json.dumps(out).replace(carrier["encrypted_content"], "")
    # Gemini counts thinking beyond prompt + completion: output, and reasoning, in Responses terms.
    assert response["usage"]["output_tokens"] == 25 and response["usage"]["output_tokens_details"]["reasoning_tokens"] == 15
    assert response["usage"]["total_tokens"] == 45 == stream.usage.total_tokens
    # The next turn: the client sends the output back with the outputs; the signatures travel.
    follow = {"model": "zowy-1", "tools": TOOLS, "input": [
        {"role": "user", "content": "weather?"}, *response["output"],
        {"type": "function_call_output", "call_id": first["call_id"], "output": "sunny"},
        {"type": "function_call_output", "call_id": second["call_id"], "output": "rain"},
    ]}
    messages = to_chat(parse_responses_request(orjson.dumps(follow))).body["messages"]
    calls = messages[1]["tool_calls"]
    assert [c["extra_content"] for c in calls] == [c["extra_content"] for c in GEMINI_CALLS]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Paris"}', '{"city":"Oslo"}']


@pytest.mark.parametrize("finish, reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_incomplete_on_length_and_filter(finish, reason):
    events = [chunk({"role": "assistant", "content": "cut sho"}), chunk(finish=finish), DONE]
    out, _ = run(events)
    response = check_invariants(out)
    assert out[-1]["type"] == "response.incomplete"
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": reason}
    assert response["output"][0]["status"] == "incomplete"
    assert "response.output_text.done" in types(out)


def test_refusal_parts():
    events = [chunk({"role": "assistant", "content": None, "refusal": ""}), chunk({"refusal": "I can't"}),
              chunk({"refusal": " help."}), chunk(finish="stop"), DONE]
    out, _ = run(events)
    response = check_invariants(out)
    assert response["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    assert types(out)[3:7] == ["response.content_part.added", "response.refusal.delta", "response.refusal.delta",
                               "response.refusal.done"]


def test_no_usage_reported_bills_the_estimate_shown():
    events = [chunk({"content": "abcdefgh"}), chunk(finish="stop"), DONE]
    stream = translator(estimate=lambda tokens: Usage(100, tokens, 100 + tokens, estimated=True))
    out, stream = run(events, stream)
    response = check_invariants(out)
    assert stream.usage.estimated and stream.usage.completion_tokens == 2
    assert response["usage"]["total_tokens"] == stream.usage.total_tokens == 102


def test_empty_answer_is_one_empty_message():
    out, _ = run([chunk({"role": "assistant", "content": ""}), chunk(finish="stop"), DONE])
    assert check_invariants(out)["output"][0]["content"][0]["text"] == ""


def test_logprobs_when_asked():
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    raw = b"data: " + orjson.dumps({**BASE, "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs, "finish_reason": None}]}) + b"\n\n"
    out, _ = run([raw, chunk(finish="stop"), DONE], translator({"include": ["message.output_text.logprobs"]}, logprobs=True))
    response = check_invariants(out)
    assert response["output"][0]["content"][0]["logprobs"] == logprobs["content"]
    assert next(e for e in out if e["type"] == "response.output_text.delta")["logprobs"] == logprobs["content"]


def test_first_event_an_error_emits_nothing():
    stream = translator()
    assert stream.feed(b'data: {"error":{"message":"overloaded","code":503}}\n\n') == b""
    assert stream.error["code"] == 503 and not stream.done


def test_partial_first_event_emits_nothing():
    stream = translator()
    raw = text_stream()[0]
    assert stream.feed(raw[:10]) == b""
    assert parse_events(stream.feed(raw[10:]))[0]["type"] == "response.created"


def test_error_mid_stream_then_failed():
    stream = translator()
    head, _ = run([chunk({"content": "partial"})], stream)
    assert stream.feed(b'data: {"error":{"message":"boom"}}\n\n') == b""
    assert stream.error == {"message": "boom"}
    tail = parse_events(stream.failed("server_error", "The model backend failed while streaming the response."))
    events = head + tail
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    error, failed = tail
    assert error["type"] == "error" and error["code"] == "server_error" and error["error"]["code"] == "server_error"
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["usage"] is None
    assert failed["response"]["error"] == {"code": "server_error", "message": "The model backend failed while streaming the response."}
    assert stream.failed("server_error", "again") == b""


def test_failure_before_any_event_still_frames_the_response():
    stream = translator()
    events = parse_events(stream.failed("server_error", "x"))
    assert types(events) == ["response.created", "response.in_progress", "error", "response.failed"]


def test_malformed_upstream_event():
    with pytest.raises(MalformedUpstream):
        translator().feed(b"data: {not json\n\n")
    with pytest.raises(MalformedUpstream):
        translator().feed(b"data: [1,2]\n\n")


def test_last_event_without_blank_line():
    events = text_stream()
    out, stream = run(events[:-1] + [b"data: [DONE]"])
    assert stream.done and out[-1]["type"] == "response.completed"


def test_no_upstream_identity_in_any_event():
    out, _ = run(text_stream(), splits=4)
    raw = json.dumps(out)
    for marker in ("chatcmpl-UPSTREAM", "gpt-5.4-mini", "fp_up"):
        assert marker not in raw


def test_what_a_failing_read_made_goes_out_with_the_failure():
    stream = translator()
    head = parse_events(stream.feed(chunk({"role": "assistant", "content": "a"})))
    assert stream.feed(chunk({"content": "b"}) + b'data: {"error":{"message":"boom"}}\n\n') == b""
    tail = parse_events(stream.failed("server_error", "failed"))
    events = head + tail
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e.get("delta") for e in events if e["type"] == "response.output_text.delta"] == ["a", "b"]
    stream = translator()
    stream.feed(chunk({"role": "assistant", "content": "a"}))
    with pytest.raises(MalformedUpstream):
        stream.feed(chunk({"content": "b"}) + b"data: {oops\n\n")
    tail = parse_events(stream.failed("server_error", "failed"))
    assert tail[0]["type"] == "response.output_text.delta" and tail[0]["delta"] == "b"
