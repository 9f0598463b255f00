"""Identity rewriting of upstream answers: bytes preserved except the identity tokens."""
from __future__ import annotations

import json
import random

import pytest

from app.wire.persona import scrub
from app.wire.rewrite import MalformedUpstream, StreamRewriter, rewrite_completion, top_level_token
from app.wire.usage import Usage

PUBLIC = "zowy-1"
OURS = "chatcmpl-ours123"


def openai_stream(include_usage: bool = True) -> list[bytes]:
    base = '"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026","system_fingerprint":"fp_abc"'
    events = [
        '{' + base + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
        '{' + base + ',"choices":[{"index":0,"delta":{"content":"Hello \\"model\\":\\"gpt\\""},"finish_reason":null}],"usage":null}',
        '{' + base + ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}],"usage":null}',
        '{' + base + ',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
    ]
    if include_usage:
        events.append('{' + base + ',"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}')
    return [f"data: {e}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def swapped(raw: bytes) -> bytes:
    """``openai_stream``'s identity fields as a caller gets them."""
    return (raw.replace(b'"id":"chatcmpl-UP42"', f'"id":"{OURS}"'.encode())
            .replace(b'"model":"gpt-5.4-mini-2026"', f'"model":"{PUBLIC}"'.encode())
            .replace(b'"system_fingerprint":"fp_abc"', b'"system_fingerprint":null'))


def gemini_stream() -> list[bytes]:
    base = '"id":"Xy12","object":"chat.completion.chunk","created":9,"model":"models/gemini-2.5-flash"'
    events = [
        '{' + base + ',"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}',
        '{' + base + ',"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}',
    ]
    return [f"data: {e}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def run(events: list[bytes], include_usage: bool, splits: int = 0, seed: int = 0) -> tuple[bytes, StreamRewriter]:
    rewriter = StreamRewriter(PUBLIC, OURS, include_usage)
    raw = b"".join(events)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), splits)) if splits else []
    out, last = [], 0
    for cut in cuts + [len(raw)]:
        out.append(rewriter.feed(raw[last:cut]))
        last = cut
    out.append(rewriter.finish())
    return b"".join(out), rewriter


def test_openai_stream_bytes_identical_but_identity():
    out, rewriter = run(openai_stream(), include_usage=True)
    assert out == swapped(b"".join(openai_stream()))
    assert b"gpt-5.4" not in out and b"UP42" not in out and b"fp_abc" not in out
    assert b'"id":"call_1"' in out
    assert b'Hello \\"model\\":\\"gpt\\"' in out
    assert rewriter.usage == Usage(11, 3, 14)
    assert rewriter.done


@pytest.mark.parametrize("seed", range(20))
def test_random_reads_give_the_same_bytes(seed):
    whole, _ = run(openai_stream(), include_usage=True)
    split, rewriter = run(openai_stream(), include_usage=True, splits=25, seed=seed)
    assert split == whole
    assert rewriter.usage == Usage(11, 3, 14)


def test_usage_chunk_dropped_unless_asked():
    out, rewriter = run(openai_stream(), include_usage=False)
    assert b'"usage":{' not in out
    assert rewriter.usage == Usage(11, 3, 14)
    assert out.endswith(b"data: [DONE]\n\n")


def test_gemini_usage_moved_to_its_own_chunk_and_prefix_rewritten():
    out, rewriter = run(gemini_stream(), include_usage=True)
    events = [e for e in out.split(b"\n\n") if e]
    docs = [json.loads(e[6:]) for e in events[:-1]]
    assert events[-1] == b"data: [DONE]"
    assert all(d["model"] == PUBLIC and d["id"] == OURS for d in docs)
    assert docs[1]["usage"] is None and docs[1]["choices"][0]["finish_reason"] == "stop"
    assert docs[-1]["choices"] == [] and docs[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert b"models/" not in out and b"gemini" not in out
    assert rewriter.usage == Usage(5, 2, 7)


def test_gemini_usage_hidden_when_not_asked():
    out, rewriter = run(gemini_stream(), include_usage=False)
    assert b'"usage":{' not in out
    assert rewriter.usage == Usage(5, 2, 7)


def test_error_event_stops_the_stream():
    events = openai_stream()[:2] + [b'data: {"error": {"message": "boom at api.openai.com", "type": "server_error"}}\n\n'] + openai_stream()[2:]
    out, rewriter = run(events, include_usage=True)
    assert rewriter.error["message"].startswith("boom")
    assert b"boom" not in out and b"[DONE]" not in out


def test_malformed_event_raises():
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    rewriter.feed(openai_stream()[0])
    with pytest.raises(MalformedUpstream):
        rewriter.feed(b"data: {not json\n\n")


def test_stream_cut_inside_an_event_is_malformed():
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    rewriter.feed(openai_stream()[0] + b'data: {"id":"chatcmpl-UP42","obj')
    with pytest.raises(MalformedUpstream):
        rewriter.finish()


def test_estimated_completion_grows_with_relayed_content():
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    rewriter.feed(b"".join(openai_stream()[:2]))
    small = rewriter.estimated_completion_tokens()
    more = openai_stream()[1].replace(b"Hello", b"Hello, and a much longer text than before")
    rewriter.feed(more)
    assert rewriter.estimated_completion_tokens() > small >= 1


def test_non_stream_rewrite():
    raw = json.dumps({
        "id": "chatcmpl-UP", "object": "chat.completion", "created": 1, "model": "models/gemini-2.5-pro",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }).encode()
    out, usage = rewrite_completion(raw, PUBLIC, OURS)
    doc = json.loads(out)
    assert doc["id"] == OURS and doc["model"] == PUBLIC and "system_fingerprint" not in doc
    assert usage == Usage(3, 4, 7)
    with pytest.raises(MalformedUpstream):
        rewrite_completion(b"<html>", PUBLIC, OURS)
    with pytest.raises(MalformedUpstream):
        rewrite_completion(b'{"error": "x"}', PUBLIC, OURS)


def test_scrub_removes_names_hosts_and_families():
    text = "Model gemini-2.5-flash at https://generativelanguage.googleapis.com/v1beta failed; try gpt-5.4-mini or models/gemini-2.5-pro"
    clean = scrub(text, ("gemini-2.5-flash", "https://generativelanguage.googleapis.com/v1beta"))
    assert "gemini" not in clean and "gpt" not in clean and "googleapis" not in clean


# Recorded provider shapes (tests/conformance/recordings) on the byte level.

GEMINI_CALL = (
    b'data: {"choices":[{"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":{"thought_signature":"c2ln"}},'
    b'"function":{"arguments":"{\\"a\\":1}","name":"f"},"id":"623rbkd0","type":"function"},'
    b'{"function":{"arguments":"{}","name":"g"},"id":"","type":"function"}]},"finish_reason":"tool_calls","index":0}],'
    b'"created":5,"id":"Z7XKaaO9Msi","model":"gemini-3-flash","object":"chat.completion.chunk",'
    b'"usage":{"completion_tokens":3,"prompt_tokens":4,"total_tokens":19}}\n\n'
)


def gemini_rewriter(include_usage: bool = True) -> StreamRewriter:
    from app.upstream.providers.gemini import GeminiDialect

    return StreamRewriter(PUBLIC, OURS, include_usage, GeminiDialect())


def test_identity_is_learned_at_the_top_level_when_a_tool_call_id_comes_first():
    rewriter = gemini_rewriter()
    text = b'data: {"choices":[{"delta":{"content":"ok"},"index":0}],"created":5,"id":"Z7XKaaO9Msi","model":"gemini-3-flash","object":"chat.completion.chunk"}\n\n'
    out = rewriter.feed(GEMINI_CALL) + rewriter.feed(text * 3) + rewriter.feed(b"data: [DONE]\n\n")
    assert b"Z7XKaaO9Msi" not in out and b"gemini-3" not in out
    events = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert all(e["id"] == OURS and e["model"] == PUBLIC for e in events)


def test_gemini_tool_calls_get_an_index_an_id_and_a_type():
    rewriter = gemini_rewriter()
    out = rewriter.feed(GEMINI_CALL) + rewriter.feed(b"data: [DONE]\n\n")
    first = json.loads(out.split(b"\n\n")[0][6:])
    calls = first["choices"][0]["delta"]["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert calls[0]["id"] == "623rbkd0" and calls[1]["id"].startswith("call_") and calls[1]["type"] == "function"
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "c2ln"}}  # vendor fields pass
    assert "usage" in first and first["usage"] is None  # moved to its own chunk
    usage_chunk = json.loads(out.split(b"\n\n")[1][6:])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 19  # thinking included
    assert rewriter.usage == Usage(4, 3, 19)


def test_a_call_seen_again_keeps_its_index():
    from app.upstream.providers.gemini import _numbered

    seen: dict[str, int] = {}
    assert _numbered({"id": "a", "function": {}}, seen, OURS)["index"] == 0
    assert _numbered({"id": "b", "function": {}}, seen, OURS)["index"] == 1
    assert _numbered({"id": "a", "function": {"arguments": "x"}}, seen, OURS)["index"] == 0


def test_estimate_ignores_error_events_and_never_exceeds_the_text():
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    for piece in ("Hello", ", wor", "ld! ", "Ok"):  # 14 characters
        rewriter.feed(f'data: {{"id":"u","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{piece}"}},"finish_reason":null}}]}}\n\n'.encode())
    rewriter.feed(b'data: {"error": {"message": "' + b"x" * 700 + b'", "type": "server_error"}}\n\n')
    assert rewriter.error is not None
    assert 1 <= rewriter.estimated_completion_tokens() <= 14


def test_a_one_chunk_answer_does_not_estimate_zero():
    rewriter = gemini_rewriter(include_usage=False)
    rewriter.feed(b'data: {"choices":[{"delta":{"content":"Hello World","role":"assistant"},"finish_reason":"stop","index":0}],"created":1,"model":"gemini-2.0-flash","object":"chat.completion.chunk"}\n\n')
    assert rewriter.estimated_completion_tokens() == 3


@pytest.mark.parametrize("splits", [0, 1, 3, 7, 40, -1])
def test_the_estimate_does_not_depend_on_how_the_stream_was_read(splits):
    """Gemini's last content chunk carries text and the finish reason: it counts as a token however
    the reads fall (whole, event by event, or cut anywhere)."""
    words = ["t0 ", "t1 ", "t2 ", "t3 ", "t4 ", "t5 "]
    events = [
        b'data: {"choices":[{"delta":{"content":"%s","role":"assistant"},%s"index":0}],"created":1,'
        b'"id":"g23","model":"gemini-2.5-flash","object":"chat.completion.chunk"}\n\n'
        % (word.encode(), b'"finish_reason":"stop",' if i == len(words) - 1 else b"")
        for i, word in enumerate(words)
    ] + [b"data: [DONE]\n\n"]
    raw = b"".join(events)
    if splits == -1:
        cuts = [len(b"".join(events[:i])) for i in range(1, len(events))]
    else:
        cuts = sorted(random.Random(splits).sample(range(1, len(raw)), splits))
    rewriter = gemini_rewriter(include_usage=False)
    last = 0
    for cut in cuts + [len(raw)]:
        rewriter.feed(raw[last:cut])
        last = cut
    rewriter.finish()
    assert rewriter.done and rewriter.estimated_completion_tokens() == len(words)


@pytest.mark.parametrize("usage", [b'{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}',
                                   b'{"tokens":"unknown"}'], ids=["reported", "unreadable"])
def test_a_stream_read_whole_counts_its_text_only_when_its_usage_chunk_does_not_report(usage):
    """Read whole, the content before a usage chunk is counted for an estimate only when that chunk
    reports no usage; the estimate is then the one of the same stream read event by event."""
    base = b'"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026"'
    events = [b'data: {' + base + b',"choices":[{"index":0,"delta":{"content":"w%d "},"finish_reason":null}],"usage":null}\n\n' % i
              for i in range(6)]
    events.append(b'data: {' + base + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n')
    events.append(b'data: {' + base + b',"choices":[],"usage":' + usage + b'}\n\n')
    events.append(b"data: [DONE]\n\n")
    whole, by_event = StreamRewriter(PUBLIC, OURS, True), StreamRewriter(PUBLIC, OURS, True)
    sent = whole.feed(b"".join(events)) + whole.finish()
    assert sent == b"".join(by_event.feed(event) for event in events) + by_event.finish()
    assert whole.usage == by_event.usage  # reported, or the estimate billed and shown in the usage chunk
    if b"prompt_tokens" in usage:
        assert not whole.usage.estimated and whole.usage.completion_tokens == 3
    else:
        assert whole.usage.estimated and whole.usage.completion_tokens >= 6  # the text, not nothing

def test_plain_content_reads_are_not_parsed(monkeypatch):
    """After the first event, a read of ordinary content events costs byte searches and swaps only."""
    import app.wire.rewrite

    events = openai_stream(include_usage=False)
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    rewriter.feed(events[0])
    parsed = []
    real = app.wire.rewrite.orjson.loads
    monkeypatch.setattr(app.wire.rewrite.orjson, "loads", lambda data: parsed.append(data) or real(data))
    out = rewriter.feed(events[1] * 50)
    assert parsed == [] and out.count(OURS.encode()) == 50


def spans_tested(monkeypatch) -> list[bytes]:
    """The spans the rewriter tests whole (``StreamRewriter._whole``), in order, from now on."""
    import app.wire.rewrite

    tested: list[bytes] = []
    real = app.wire.rewrite.StreamRewriter._whole
    monkeypatch.setattr(app.wire.rewrite.StreamRewriter, "_whole",
                        lambda self, span, *rest: tested.append(span) or real(self, span, *rest))
    return tested


def test_an_event_read_alone_like_the_last_plain_one_goes_out_without_a_test(monkeypatch):
    """Streams read an event at a time: once a plain content event has gone whole, an event with the
    same bytes around a text without quotes is swapped as that one was; any other is tested again."""
    base = '"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026","system_fingerprint":"fp_abc"'

    def content(text: str) -> bytes:
        return b"data: {" + base.encode() + b',"choices":[{"index":0,"delta":{"content":' + json.dumps(text).encode() + b'},"finish_reason":null}],"usage":null}\n\n'

    texts = ["Hel", "lo ", "wor", 'a "quote"', "back\\slash", "tab\t", "ld", "\u00e9t\u00e9"]
    events = [openai_stream()[0]] + [content(t) for t in texts] + openai_stream()[3:]
    tested = spans_tested(monkeypatch)
    rewriter = StreamRewriter(PUBLIC, OURS, True)
    out = b"".join(rewriter.feed(event) for event in events) + rewriter.finish()
    assert out == swapped(b"".join(events))
    # Tested: the first content event (which teaches its surroundings), the one with quotes, and the
    # stream's end (finish, usage, [DONE]).
    assert tested == [content(texts[0]), content(texts[3]), *events[-3:]]
    assert rewriter.events == 11 and rewriter.text_tokens == len(texts) and rewriter.usage == Usage(11, 3, 14)


def test_openai_obfuscated_events_read_alone_go_out_without_a_test(monkeypatch):
    """OpenAI's chunks end in ``"obfuscation"``, other letters on every chunk (as in
    tests/conformance/recordings/openai-stream-cached-tokens.json): an event read alone that has the
    bytes around its text of the last plain one but for that value is swapped as that one was, while
    its text holds no line end and does not end in a backslash and the value holds no quote, escape
    or line end; any other is tested again."""
    base = ('"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026",'
            '"service_tier":"default","system_fingerprint":"fp_abc"')

    def event(choice: str, obfuscation: str, usage: str = "null") -> bytes:
        return f'data: {{{base},"choices":[{choice}],"usage":{usage},"obfuscation":"{obfuscation}"}}\n\n'.encode()

    def content(text: str, obfuscation: str) -> bytes:
        return event('{"index":0,"delta":{"content":' + json.dumps(text) + '},"logprobs":null,"finish_reason":null}', obfuscation)

    words = [("Fare", "DJ94I8XQj86"), ("well", "qgSSFwDBmaW"), ("line\nend", "4xVB"), ('a "quote"', "Ye"),
             ("back\\", "r6Uy1atr"), ("x", 'q\\u0041'), ("!", "pCjdYd4kX4W2q"), ("\u00e9t\u00e9", "")]
    events = ([event('{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}', "pC")]
              + [content(text, value) for text, value in words]
              + [event('{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}', "XxMhsMje0"),
                 event("", "J3eKDOHW", '{"prompt_tokens":11,"completion_tokens":8,"total_tokens":19}'), b"data: [DONE]\n\n"])
    tested = spans_tested(monkeypatch)
    rewriter = StreamRewriter(PUBLIC, OURS, True)
    out = b"".join(rewriter.feed(e) for e in events) + rewriter.finish()
    assert out == swapped(b"".join(events))
    # Tested: the first content event (which teaches its surroundings), the quoted text, the text
    # ending in a backslash, the escaped value, and the stream's end (finish, usage, [DONE]).
    assert tested == [events[1], events[4], events[5], events[6], *events[-3:]]
    assert rewriter.events == 11 and rewriter.text_tokens == len(words) and rewriter.usage == Usage(11, 8, 19)


def test_a_stream_read_whole_sends_its_content_events_as_one_span(monkeypatch):
    """A stream that arrives in one read (an upstream with no think time): the first event teaches
    the identity, the content events after it go as one span, only the usage chunk is taken alone."""
    import app.wire.rewrite

    taken = []
    real = app.wire.rewrite.StreamRewriter._one
    monkeypatch.setattr(app.wire.rewrite.StreamRewriter, "_one", lambda self, event: taken.append(event) or real(self, event))
    content = '"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026","system_fingerprint":"fp_abc","choices":[{"index":0,"delta":{"content":"w"},"finish_reason":null}],"usage":null'
    events = openai_stream()
    stream = events[:1] + [f"data: {{{content}}}\n\n".encode()] * 10 + events[3:]  # role, 10 words, finish, usage, [DONE]
    out, rewriter = run(stream, include_usage=True)
    assert [event[:12] for event in taken] == [stream[0][:12], stream[-2][:12]]  # [DONE] ends the span
    expected, _ = run(stream, include_usage=True, splits=len(b"".join(stream)) - 1)  # a byte per read
    assert out == expected and rewriter.usage == Usage(11, 3, 14) and rewriter.done
    assert out.count(OURS.encode()) == 13 and b"UP42" not in out


def test_a_span_with_events_of_more_than_one_line_is_swapped_the_same(monkeypatch):
    """SSE lets an event carry an ``id:`` line or split its data over lines: read whole, such a span
    goes out as it does read a byte at a time, every identity swapped."""
    base = '"id":"chatcmpl-UP42","object":"chat.completion.chunk","created":7,"model":"gpt-5.4-mini-2026","system_fingerprint":"fp_abc"'
    content = '"choices":[{"index":0,"delta":{"content":"w"},"finish_reason":null}],"usage":null}'
    events = openai_stream()
    stream = events[:1] + [
        f"data: {{{base},{content}\n\n".encode(),
        f"id: 7\ndata: {{{base},{content}\n\n".encode(),
        f"data: {{{base},\ndata: {content}\n\n".encode(),
        f"data: {{{base},{content}\n\n".encode(),
    ] + events[3:]
    out, rewriter = run(stream, include_usage=True)
    expected, _ = run(stream, include_usage=True, splits=len(b"".join(stream)) - 1)
    assert out == expected and rewriter.done and rewriter.usage == Usage(11, 3, 14)
    assert out.count(OURS.encode()) == 7 and b"UP42" not in out and b"gpt-5.4" not in out and b"fp_abc" not in out
    assert b"id: 7\ndata: {" in out


def test_a_stream_without_finish_reason_gets_one_before_done():
    rewriter = gemini_rewriter(include_usage=False)
    out = rewriter.feed(GEMINI_CALL.replace(b',"finish_reason":"tool_calls"', b"")) + rewriter.feed(b"data: [DONE]\n\n")
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert events[0]["choices"][0]["finish_reason"] is None


def test_a_body_ending_right_after_done_without_a_blank_line():
    rewriter = StreamRewriter(PUBLIC, OURS, False)
    out = rewriter.feed(b"".join(openai_stream(False)[:-1]) + b"data: [DONE]")
    out += rewriter.finish()
    assert rewriter.done and out.endswith(b"data: [DONE]\n\n")
    cut = StreamRewriter(PUBLIC, OURS, False)
    cut.feed(openai_stream(False)[0] + b'data: {"id":"chatcmpl-UP42","choi')
    with pytest.raises(MalformedUpstream):
        cut.finish()


# JSON spacing and the usage chunk: whatever the upstream's spacing, one finish, usage last.

def spaced(events: list[bytes], style: str) -> list[bytes]:
    """The events with their JSON written with spaces (``", "``, ``": "``), as Python's json.dumps
    writes it, and without ``"usage":null`` on content chunks (as upstreams that report usage in a
    final chunk only write them). ``style``: ``spaced`` every event; ``compact-head`` the first
    event compact and, in the others, only what follows the identity fields spaced."""
    out = []
    for i, event in enumerate(events):
        data = event[6:-2].replace(b',"usage":null', b"")
        if data == b"[DONE]" or (style == "compact-head" and i == 0):
            out.append(b"data: " + data + b"\n\n")
            continue
        doc = json.loads(data)
        if style == "compact-head":
            head, _, _ = data.partition(b',"choices":')
            rest = {k: v for k, v in doc.items() if k in ("choices", "usage")}
            text = head.decode() + ", " + json.dumps(rest)[1:]
        else:
            text = json.dumps(doc)
        out.append(f"data: {text}\n\n".encode())
    return out


def chunks(out: bytes) -> list[dict]:
    return [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]


def finishes(docs: list[dict]) -> list[str]:
    return [c["finish_reason"] for d in docs for c in d["choices"] if c.get("finish_reason")]


STYLES = ("spaced", "compact-head")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", range(8))
def test_spaced_json_gets_one_finish_and_usage_last(style, seed):
    events = spaced(openai_stream(), style)
    out, rewriter = run(events, include_usage=True, splits=30 if seed else 0, seed=seed)
    docs = chunks(out)
    assert finishes(docs) == ["stop"]
    assert docs[-1]["choices"] == [] and docs[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1
    assert all(d["id"] == OURS and d["model"] == PUBLIC for d in docs)
    assert b"UP42" not in out and b"gpt-5.4" not in out and b"fp_abc" not in out
    assert rewriter.usage == Usage(11, 3, 14)
    compact, _ = run([e.replace(b',"usage":null', b"") for e in openai_stream()], include_usage=True)
    assert docs == chunks(compact)


@pytest.mark.parametrize("style", STYLES)
def test_spaced_usage_is_read_and_kept_from_callers_who_did_not_ask(style):
    out, rewriter = run(spaced(openai_stream(), style), include_usage=False)
    assert rewriter.usage == Usage(11, 3, 14)
    assert all(d.get("usage") is None for d in chunks(out))
    assert finishes(chunks(out)) == ["stop"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_spans_of_compact_heads_read_a_spaced_finish_and_usage(include_usage, monkeypatch):
    """One event per read, as a live stream comes: after the first event the identity head is known
    and spans are swapped whole; a spaced finish or usage in them is still seen."""
    import app.wire.rewrite

    rewriter = StreamRewriter(PUBLIC, OURS, include_usage)
    events = spaced(openai_stream(), "compact-head")
    out = rewriter.feed(events[0])
    parsed = []
    real = app.wire.rewrite.orjson.loads
    monkeypatch.setattr(app.wire.rewrite.orjson, "loads", lambda data: parsed.append(data) or real(data))
    for event in events[1:]:
        out += rewriter.feed(event)
    assert len(parsed) == 1 and b'"usage": {' in parsed[0]  # content and finish took the plain path
    docs = chunks(out)
    assert finishes(docs) == ["stop"] and rewriter.usage == Usage(11, 3, 14)
    assert [d for d in docs if d.get("usage")] == ([docs[-1]] if include_usage else [])


def test_a_spaced_empty_delta_is_not_counted_as_text():
    compact = StreamRewriter(PUBLIC, OURS, False)
    compact.feed(b"".join(openai_stream(include_usage=False)))
    loose = StreamRewriter(PUBLIC, OURS, False)
    loose.feed(b"".join(spaced(openai_stream(include_usage=False), "spaced")))
    assert loose.estimated_completion_tokens() == compact.estimated_completion_tokens()


def test_spaced_gemini_usage_moves_to_its_own_last_chunk():
    from app.upstream.providers.gemini import GeminiDialect

    rewriter = StreamRewriter(PUBLIC, OURS, True, GeminiDialect())
    out = rewriter.feed(b"".join(spaced(gemini_stream(), "spaced"))) + rewriter.finish()
    docs = chunks(out)
    assert finishes(docs) == ["stop"] and docs[-1]["choices"] == [] and docs[-1]["usage"]["total_tokens"] == 7
    assert out.endswith(b"data: [DONE]\n\n")


def billed(completion_tokens: int) -> Usage:
    return Usage(40, completion_tokens, 40 + completion_tokens, estimated=True)


@pytest.mark.parametrize("seed", range(6))
def test_no_upstream_usage_gets_the_billed_estimate_last_when_asked(seed):
    rewriter = StreamRewriter(PUBLIC, OURS, True, estimate=billed)
    raw = b"".join(openai_stream(include_usage=False))
    out, last = [], 0
    rng = random.Random(seed)
    for cut in sorted(rng.sample(range(1, len(raw)), 20)) + [len(raw)]:
        out.append(rewriter.feed(raw[last:cut]))
        last = cut
    out = b"".join(out) + rewriter.finish()
    docs = chunks(out)
    assert finishes(docs) == ["stop"]
    assert docs[-1]["choices"] == []
    completion = rewriter.estimated_completion_tokens()
    assert completion >= 1
    assert docs[-1]["usage"] == {"prompt_tokens": 40, "completion_tokens": completion, "total_tokens": 40 + completion}
    assert out.endswith(b"data: [DONE]\n\n")
    assert rewriter.usage == billed(completion) and rewriter.usage.estimated  # what the ledger then records


def test_no_usage_chunk_when_not_asked_and_none_reported():
    rewriter = StreamRewriter(PUBLIC, OURS, False, estimate=billed)
    out = rewriter.feed(b"".join(openai_stream(include_usage=False)))
    assert all(d.get("usage") is None for d in chunks(out)) and rewriter.usage is None


def test_a_stream_ending_without_done_still_gets_the_usage_asked_for():
    rewriter = StreamRewriter(PUBLIC, OURS, True, estimate=billed)
    out = rewriter.feed(b"".join(openai_stream(include_usage=False)[:2])) + rewriter.finish()
    docs = chunks(out)
    assert docs[-1]["choices"] == [] and docs[-1]["usage"]["completion_tokens"] == rewriter.usage.completion_tokens
    assert not rewriter.done


def test_an_early_usage_chunk_still_goes_last():
    events = openai_stream()
    reordered = events[:3] + [events[4], events[3], events[5]]  # usage before the finish chunk
    out, rewriter = run(reordered, include_usage=True)
    docs = chunks(out)
    assert finishes(docs) == ["stop"] and docs[-1]["choices"] == [] and docs[-1]["usage"]["total_tokens"] == 14
    assert len(docs) == 5


@pytest.mark.parametrize(("data", "key", "value", "token"), [
    # Compact, once: the token without a search.
    (b'{"id":"c-1","model":"m","choices":[]}', "id", "c-1", b'"id":"c-1"'),
    # Spaced about the colon (json.dumps): found by the key's expression.
    (b'{"id": "c-1", "model": "m"}', "id", "c-1", b'"id": "c-1"'),
    # A tool call's own "id" before the chunk's (Gemini's key order): the top-level one, by value.
    (b'{"choices":[{"delta":{"tool_calls":[{"id":"call-1"}]}}],"id":"c-1"}', "id", "c-1", b'"id":"c-1"'),
    # The same key and value twice: no token to swap.
    (b'{"id":"c-1","choices":[{"delta":{"tool_calls":[{"id":"c-1"}]}}]}', "id", "c-1", None),
    # "model" once as a key and once as a value (a role): the key's token.
    (b'{"model":"m","choices":[{"delta":{"role":"model"}}]}', "model", "m", b'"model":"m"'),
    # Not a string: nothing.
    (b'{"id":1}', "id", 1, None),
])
def test_top_level_token_finds_the_key_written_once_with_its_value(data, key, value, token):
    assert top_level_token(data, key, value) == token


def recorded_stream(stream_id: bytes, created: int, model: bytes = b"gpt-5.4-mini-2026") -> list[bytes]:
    """A stream as OpenAI writes it today: the id first, a service tier, an obfuscation value."""
    head = (b'"id":"' + stream_id + b'","object":"chat.completion.chunk","created":%d,"model":"' % created
            + model + b'","service_tier":"default","system_fingerprint":"fp_abc"')
    events = [b'data: {' + head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
              b'"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}\n\n']
    events += [b'data: {' + head + b',"choices":[{"index":0,"delta":{"content":"w%d "},"logprobs":null,'
               b'"finish_reason":null}],"usage":null,"obfuscation":"abc%d"}\n\n' % (i, i) for i in range(4)]
    events.append(b'data: {' + head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
                  b'"usage":null,"obfuscation":"q"}\n\n')
    events.append(b'data: {' + head + b',"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,'
                  b'"total_tokens":13},"obfuscation":"zz"}\n\n')
    return events + [b"data: [DONE]\n\n"]


LEARNED = ("_id_token", "_model_token", "_fingerprint_token", "_swaps", "_head", "_new_head", "_forbidden", "created")


def test_a_stream_whose_head_has_the_last_one_s_shape_learns_it_by_comparing_bytes(monkeypatch):
    """The next stream of a provider, whose head differs from the last one's only in its id and
    created value, learns its identity without searching for it: the same bytes out and the same
    learned state as a stream that searched."""
    import app.wire.rewrite as rewrite

    rewrite._SHAPES.clear()
    run(recorded_stream(b"chatcmpl-FIRST1", 100), True)
    assert rewrite._SHAPES, "the first stream's head shape is kept"
    second = recorded_stream(b"chatcmpl-SECOND22", 123456)
    searched = StreamRewriter(PUBLIC, OURS, True)
    rewrite._SHAPES.clear()
    expected = searched.feed(b"".join(second)) + searched.finish()

    run(recorded_stream(b"chatcmpl-FIRST1", 100), True)

    def no_search(*args):
        raise AssertionError("searched for the identity")

    monkeypatch.setattr(rewrite, "top_level_token", no_search)
    compared = StreamRewriter(PUBLIC, OURS, True)
    assert compared.feed(b"".join(second)) + compared.finish() == expected
    assert expected == b"".join(second).replace(b'"id":"chatcmpl-SECOND22"', f'"id":"{OURS}"'.encode()) \
        .replace(b'"model":"gpt-5.4-mini-2026"', f'"model":"{PUBLIC}"'.encode()) \
        .replace(b'"system_fingerprint":"fp_abc"', b'"system_fingerprint":null')
    for name in LEARNED:
        assert getattr(compared, name) == getattr(searched, name), name
    assert compared.usage == searched.usage and compared.usage.completion_tokens == 4


@pytest.mark.parametrize("other", [
    b'{"id":"chatcmpl-B","object":"chat.completion.chunk","created":5,"model":"gpt-other","service_tier":"default","system_fingerprint":"fp_abc","choices":[],"usage":null}',
    b'{"id":"chatcmpl-B","object":"chat.completion.chunk","created":5,"model":"gpt-5.4-mini-2026","service_tier":"default","system_fingerprint":"fp_new","choices":[],"usage":null}',
    b'{"id":"chatcmpl-B","object":"chat.completion.chunk","created":5,"model":"gpt-5.4-mini-2026","service_tier":"default","system_fingerprint":"fp_abc","choices":[],"usage":null,"id":"chatcmpl-C"}',
    b'{"id":"chatcmpl-\\u0042","object":"chat.completion.chunk","created":5,"model":"gpt-5.4-mini-2026","service_tier":"default","system_fingerprint":"fp_abc","choices":[],"usage":null}',
    b'{"id":"chatcmpl-B","object":"chat.completion.chunk", "created":5,"model":"gpt-5.4-mini-2026","service_tier":"default","system_fingerprint":"fp_abc","choices":[],"usage":null}',
], ids=["another-model", "another-fingerprint", "a-second-id", "an-escaped-id", "spaced"])
def test_a_first_event_of_another_shape_is_learned_as_ever(other):
    import app.wire.rewrite as rewrite

    rewrite._SHAPES.clear()
    run(recorded_stream(b"chatcmpl-FIRST1", 100), True)
    event = b"data: " + other + b"\n\n"
    fresh = StreamRewriter(PUBLIC, OURS, False)
    rewrite._SHAPES.clear()
    expected = fresh.feed(event)
    run(recorded_stream(b"chatcmpl-FIRST1", 100), True)
    shaped = StreamRewriter(PUBLIC, OURS, False)
    assert shaped.feed(event) == expected
    for name in LEARNED:
        assert getattr(shaped, name) == getattr(fresh, name), name
