"""What the gateway writes in the Messages dialect, compared shape by shape with Anthropic's recorded
answers (tests/conformance/messages/recordings): every event and object has the keys Anthropic's
always have, of the same types, none Anthropic never sends, in Anthropic's order of events."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest

from app.wire.usage import estimate_usage
from app.wire.rewrite import OPENAI
from app.upstream.providers.gemini import GeminiDialect
from app.wire.messages.answer import message_from_completion
from app.wire.messages.errors import envelope, error_event
from app.wire.messages.models import model_page
from app.wire.messages.stream import MessagesStream
from tests.conformance import corpus
from tests.conformance.messages.events import events, kind, recorded_stream, recordings, shape

RECORDED = recordings()
DIALECTS = {"openai": OPENAI, "gemini": GeminiDialect()}
CHAT = corpus.load()


def recorded_shapes(select) -> tuple[dict[str, set], dict[str, set]]:
    """Per kind of event or object: the key paths every recording has, and those any has."""
    seen: dict[str, list[set]] = defaultdict(list)
    for exchange in RECORDED:
        for name, doc in select(exchange):
            seen[name].append(shape(doc))
    always = {name: set.intersection(*shapes) for name, shapes in seen.items()}
    ever = {name: set.union(*shapes) for name, shapes in seen.items()}
    return always, ever


def _streams(exchange):
    response = exchange["response"]
    if exchange["file"].startswith("messages-stream"):
        return [(kind(n, d), d) for n, d in recorded_stream(response)]
    return []


def _messages(exchange):
    response = exchange["response"]
    if exchange["file"].startswith("messages-nonstream"):
        return [("message", json.loads(response["body"]))]
    return []


def _errors(exchange):
    response = exchange["response"]
    if response["status"] >= 400 and exchange["fidelity"] != "pasted" and response["body"]:
        return [("error", json.loads(response["body"]))]
    return []


STREAM_ALWAYS, STREAM_EVER = recorded_shapes(_streams)
MESSAGE_ALWAYS, MESSAGE_EVER = recorded_shapes(_messages)
ERROR_ALWAYS, ERROR_EVER = recorded_shapes(_errors)
# Keys only some recordings carry, which the gateway leaves out: where the message ran (a 2026
# field), how a stop sequence or cache creation was broken down.
OPTIONAL = {".inference_geo", ".message.usage.inference_geo"}


# No recorded chat stream carries reasoning text (some providers send it as reasoning_content).
REASONING = "".join(
    "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
    for delta, finish in [({"role": "assistant", "reasoning_content": "Hm."}, None), ({"content": "4"}, None), ({}, "stop")]
) + "data: [DONE]\n\n"


def ours_streams() -> list[list[tuple[str, dict]]]:
    bodies = [(e.provider, e.replayed_body()) for e in CHAT if e.status == 200 and e.stream] + [("openai", REASONING)]
    out = []
    for provider, body in bodies:
        stream = MessagesStream("zowy-1", "0" * 24, DIALECTS[provider], lambda n: estimate_usage(100, n), 25)
        out.append(events(stream.feed(body.encode()) + stream.finish()))
    return out


OURS = ours_streams()


def test_every_event_kind_anthropic_records_is_one_we_can_write():
    produced = {kind(n, d) for stream in OURS for n, d in stream}
    # Redacted thinking is Anthropic's own encryption: no target makes it.
    assert set(STREAM_ALWAYS) - produced == {"content_block_start/redacted_thinking"}


def test_our_events_have_anthropics_shapes():
    checked = set()
    for stream in OURS:
        for name, doc in stream:
            what = kind(name, doc)
            ours = shape(doc)
            missing = STREAM_ALWAYS[what] - ours - {p for p in STREAM_ALWAYS[what] if any(p.startswith(o) for o in OPTIONAL)}
            extra = {p for p in ours - STREAM_EVER[what] if not p.startswith(".message.content[]")}
            assert not missing, (what, missing)
            assert not extra, (what, extra)
            checked.add(what)
    assert {"message_start", "message_delta", "message_stop", "ping", "content_block_start/text",
            "content_block_start/tool_use", "content_block_start/thinking", "content_block_delta/text_delta",
            "content_block_delta/input_json_delta", "content_block_delta/signature_delta", "content_block_delta/thinking_delta",
            "content_block_stop"} <= checked


def test_our_streams_follow_anthropics_order():
    """message_start, a ping early, blocks, message_delta, message_stop; as recorded."""
    for exchange in RECORDED:
        stream = _streams(exchange)
        if stream:
            names = [n.split("/")[0] for n, _ in stream if n != "ping"]
            assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    for stream in OURS:
        names = [n for n, _ in stream]
        assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
        assert names.count("ping") == 1


def test_event_key_order_is_anthropics():
    """Top-level keys in the order Anthropic writes them (byte-exact recordings)."""
    orders: dict[str, set] = defaultdict(set)
    for exchange in RECORDED:
        if exchange["fidelity"] == "byte-exact":
            for name, doc in _streams(exchange):
                orders[name].add(tuple(doc))
                if name == "message_start":
                    orders["message_start.message"].add(tuple(doc["message"]))
    for stream in OURS:
        for name, doc in stream:
            what = kind(name, doc)
            assert tuple(doc) in orders[what], (what, tuple(doc), orders[what])
            if name == "message_start":
                assert tuple(doc["message"]) in orders["message_start.message"]


@pytest.mark.parametrize("exchange", [e for e in CHAT if e.status == 200 and not e.stream], ids=lambda e: e.id)
def test_our_messages_have_anthropics_shape(exchange):
    doc = json.loads(exchange.body)
    DIALECTS[exchange.provider].completion(doc, "chatcmpl-x")
    raw, _ = message_from_completion(doc, "zowy-1", "0" * 24, lambda n: estimate_usage(100, n))
    ours = shape(json.loads(raw))
    top = {p for p in MESSAGE_ALWAYS["message"] if not p.startswith(".content[]")}
    assert top - ours == set()
    assert {p for p in ours - MESSAGE_EVER["message"] if not p.startswith(".content[].input.")} == set()


def test_error_bodies_have_anthropics_shape():
    for status, message in [(400, "messages.0.content: x"), (401, "bad key"), (404, "no model"), (429, "slow down"), (529, "busy")]:
        ours = shape(json.loads(envelope(status, message, "0" * 24)))
        assert ERROR_ALWAYS["error"] <= ours <= ERROR_EVER["error"]
    recorded = {json.loads(e["response"]["body"])["error"]["type"]: e["response"]["status"] for e in RECORDED if e["response"]["status"] >= 400}
    for kind_, status in recorded.items():
        assert json.loads(envelope(status, "x", None))["error"]["type"] == kind_


def test_the_in_stream_error_event_reads_like_the_recorded_one():
    recorded = next(e for e in RECORDED if e["file"].startswith("vertex"))
    theirs = json.loads(recorded["response"]["body"])
    (name, ours), = events(error_event(503, "Overloaded"))
    assert name == "error" and ours["error"]["type"] == theirs["error"]["type"] == "overloaded_error"
    assert shape(ours) <= shape(theirs)


def test_count_tokens_and_models_shapes():
    recorded = next(e for e in RECORDED if e["file"] == "messages-count-tokens")
    assert list(json.loads(recorded["response"]["body"])) == ["input_tokens"]
    page = model_page([("zowy-1", 1700000000), ("zowy-2", 1700000000)])
    assert page["first_id"] == "zowy-1" and page["last_id"] == "zowy-2" and page["has_more"] is False
    assert page["data"][0] == {"type": "model", "id": "zowy-1", "display_name": "zowy-1", "created_at": "2023-11-14T22:13:20Z"}
