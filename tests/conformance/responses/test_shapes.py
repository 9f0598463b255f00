"""Recorded OpenAI Responses traffic against ours, shape by shape: every recorded request is read;
for every recorded answer, the chat traffic that says the same is translated, and our events,
items, parts, response objects and usage are compared with the recorded ones (event order, keys of
every event and object, text and arguments).

Known and intended differences, each asserted here: no ``obfuscation`` (random padding, which
``stream_options.include_obfuscation: false`` also turns off at OpenAI); reasoning items (OpenAI's
reasoning does not travel through Chat Completions); the object keys in ``corpus.NOT_WRITTEN``; the
error event also carries its fields flat (as the SDKs' types read them) beside the recorded nested
``error`` object.
"""
from __future__ import annotations

import json

import orjson
import pytest

from app.core.errors import InvalidRequest
from app.wire.responses.output import Frame, completion_output, usage_object
from app.wire.responses.request import parse_responses_request
from app.wire.responses.stream import ResponsesStream
from app.wire.responses.translate import to_chat
from app.wire.usage import Usage
from tests.conformance.responses import corpus

RECORDED = corpus.load()
ANSWERS = [r for r in RECORDED if r.status == 200 and r.events() and r.events()[0].get("type") == "response.created"]
STREAMS = [(r, k) for r in ANSWERS if r.stream for k in range(len(r.streams()))]
NONSTREAM = [r for r in RECORDED if r.status == 200 and not r.stream and '"object": "response"' in r.body]
REQUESTS = [r for r in RECORDED if r.request is not None]
RID = "fedcba9876543210fedcba98"


def frame_for(recorded: corpus.Recorded) -> tuple[Frame, dict]:
    request = dict(recorded.request or {"model": "gpt-4o", "input": "hi", "stream": True})
    request.pop("previous_response_id", None)
    parsed = parse_responses_request(orjson.dumps(request))
    return Frame(parsed, "zowy-1", RID), parsed


def translate_stream(recorded: corpus.Recorded, events: list[dict]) -> list[dict]:
    frame, parsed = frame_for(recorded)
    tools = {t["name"]: ("function", t["name"], None) for t in parsed.get("tools") or () if t["type"] == "function"}
    from app.wire.responses.translate import Tool

    stream = ResponsesStream(frame, {k: Tool(*v) for k, v in tools.items()})
    out = b"".join(stream.feed(piece) for piece in corpus.chat_stream(events)) + stream.finish()
    return [json.loads(block.split("\n", 1)[1][6:]) for block in out.decode().split("\n\n")[:-1]]


def same_keys(ours: dict, recorded: dict, where: str, ignore=frozenset()) -> None:
    theirs = [k for k in recorded if k not in ignore]
    mine = [k for k in ours if k not in ignore]
    assert set(mine) == set(theirs), f"{where}: ours {mine} recorded {theirs}"
    # Key order: as recorded where the recording keeps OpenAI's order (2026 streams sort the
    # event-level keys after "type"; clients must not rely on it, and we keep the 2025 order).
    if theirs[1:] != sorted(theirs[1:]) or len(theirs) < 3:
        assert mine == theirs, f"{where}: key order ours {mine} recorded {theirs}"


def compare_response(ours: dict, recorded: dict, where: str) -> None:
    recorded_keys = set(recorded) - corpus.NOT_WRITTEN
    assert recorded_keys <= set(ours), f"{where}: missing {recorded_keys - set(ours)}"
    assert set(ours) - recorded_keys <= corpus.ALWAYS_WRITTEN, f"{where}: extra {set(ours) - recorded_keys}"
    common = [k for k in recorded if k in ours]
    assert [k for k in ours if k in recorded] == common, f"{where}: object key order"
    for key in ("status", "incomplete_details", "error"):
        assert ours[key] == recorded[key] or (key == "error" and ours[key] and recorded[key]), f"{where}.{key}"
    assert ours["reasoning"].keys() == recorded["reasoning"].keys() - corpus.NOT_WRITTEN_REASONING
    assert ours["text"].keys() == recorded["text"].keys()
    assert ours["text"]["format"].keys() == recorded["text"]["format"].keys()
    for mine, theirs in zip(ours["tools"], recorded["tools"]):
        # 2026 echoes add output_schema (null unless the request set one; ours echoes it when set).
        assert [k for k in mine if k != "output_schema"] == [k for k in theirs if k != "output_schema"], f"{where}.tools"
    if recorded["usage"] is None:
        assert ours["usage"] is None
    else:
        same_keys(ours["usage"], recorded["usage"], f"{where}.usage")
        details = {k for k in recorded["usage"]["input_tokens_details"] if k != "cache_write_tokens"}
        assert set(ours["usage"]["input_tokens_details"]) == details
        assert ours["usage"]["total_tokens"] == recorded["usage"]["total_tokens"]
        assert ours["usage"]["output_tokens_details"] == recorded["usage"]["output_tokens_details"]
    for mine, theirs in zip(ours["output"], [i for i in recorded["output"] if i["type"] != "reasoning"]):
        compare_item(mine, theirs, f"{where}.output")
    assert len(ours["output"]) == len([i for i in recorded["output"] if i["type"] != "reasoning"])


def compare_item(ours: dict, recorded: dict, where: str) -> None:
    same_keys(ours, recorded, f"{where}[{recorded['type']}]", ignore=frozenset(("phase",)))
    assert ours["type"] == recorded["type"] and ours["status"] == recorded["status"]
    if recorded["type"] == "message":
        assert len(ours["content"]) == len(recorded["content"])
        for mine, theirs in zip(ours["content"], recorded["content"]):
            same_keys(mine, theirs, f"{where}.content[{theirs['type']}]")
            assert mine.get("text") == theirs.get("text") and mine.get("refusal") == theirs.get("refusal")
    elif recorded["type"] == "function_call":
        assert (ours["name"], ours["arguments"]) == (recorded["name"], recorded["arguments"])


@pytest.mark.parametrize("recorded", REQUESTS, ids=lambda r: r.id)
def test_recorded_requests_are_read(recorded):
    body = dict(recorded.request)
    if recorded.file.endswith("invalid-temperature"):
        with pytest.raises(InvalidRequest) as caught:
            parse_responses_request(orjson.dumps(body))
        assert caught.value.param == "temperature"  # as OpenAI named it
        return
    parsed = parse_responses_request(orjson.dumps(body))
    if parsed.get("previous_response_id") is None and not _answers_earlier_calls(parsed):
        chat = to_chat(parsed).body
        assert chat["messages"]


def _answers_earlier_calls(parsed: dict) -> bool:
    items = parsed.get("input")
    if type(items) is not list:
        return False
    called = {i.get("call_id") for i in items if i.get("type") == "function_call"}
    return any(i.get("type") == "function_call_output" and i["call_id"] not in called for i in items)


@pytest.mark.parametrize("recorded, k", STREAMS, ids=lambda v: v.id if isinstance(v, corpus.Recorded) else str(v))
def test_stream_shapes(recorded, k):
    theirs = corpus.without_reasoning(recorded.streams()[k])
    if theirs[-1]["type"] == "response.failed":
        frame, _ = frame_for(recorded)
        stream = ResponsesStream(frame, {})
        ours = [json.loads(b.split("\n", 1)[1][6:]) for b in stream.failed("insufficient_quota", "quota").decode().split("\n\n")[:-1]]
        assert [e["type"] for e in ours] == [e["type"] for e in theirs]
        recorded_error, our_error = theirs[2], ours[2]
        assert set(recorded_error) <= set(our_error) and set(recorded_error["error"]) == set(our_error["error"])
        assert set(ours[3]["response"]["error"]) == set(theirs[3]["response"]["error"])
        return
    ours = translate_stream(recorded, recorded.streams()[k])
    assert [e["type"] for e in ours] == [e["type"] for e in theirs]
    assert [e["sequence_number"] for e in ours] == list(range(len(ours)))
    for mine, recorded_event in zip(ours, theirs):
        where = f"{recorded.id} {recorded_event['type']}"
        same_keys(mine, recorded_event, where, ignore=frozenset(("obfuscation",)))
        for key in ("item", "part"):
            if key in recorded_event:
                if key == "item":
                    compare_item(mine[key], recorded_event[key], where)
                else:
                    same_keys(mine[key], recorded_event[key], f"{where}.part")
        for key in ("delta", "text", "arguments", "refusal", "output_index", "content_index"):
            if key in recorded_event:
                assert mine[key] == recorded_event[key], f"{where}.{key}"
        if "response" in recorded_event:
            compare_response(mine["response"], recorded_event["response"], where)


@pytest.mark.parametrize("recorded", NONSTREAM, ids=lambda r: r.id)
def test_response_object_shapes(recorded):
    theirs = json.loads(recorded.body)
    frame, _ = frame_for(recorded)
    completion = corpus.chat_completion(theirs)
    output, incomplete = completion_output(completion, frame.ids, {})
    usage = Usage.from_upstream(completion.get("usage"))
    ours = frame.response("incomplete" if incomplete else "completed", output, usage_object(usage), incomplete=incomplete)
    compare_response(ours, theirs, recorded.id)


def test_the_corpus_covers_the_shapes():
    kinds = {e["type"] for r, _ in STREAMS for e in r.events()}
    for kind in ("response.function_call_arguments.delta", "response.refusal.delta", "response.incomplete",
                 "response.failed", "error", "response.content_part.added"):
        assert kind in kinds
    assert len(STREAMS) >= 10 and len(NONSTREAM) >= 6
