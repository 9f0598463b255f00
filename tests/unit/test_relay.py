"""Identity rewriting of upstream answers: bytes preserved except the identity tokens."""
from __future__ import annotations

import json
import random

import pytest

from app.persona import scrub
from app.relay import MalformedUpstream, StreamRewriter, rewrite_completion
from app.metering import Usage

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
    expected = (
        b"".join(openai_stream())
        .replace(b'"id":"chatcmpl-UP42"', f'"id":"{OURS}"'.encode())
        .replace(b'"model":"gpt-5.4-mini-2026"', f'"model":"{PUBLIC}"'.encode())
        .replace(b'"system_fingerprint":"fp_abc"', b'"system_fingerprint":null')
    )
    assert out == expected
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
