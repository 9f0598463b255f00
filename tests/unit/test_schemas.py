"""The chat request validator: what it accepts, and the field it names when it refuses."""
from __future__ import annotations

import json

import pytest

from app.core.errors import InvalidRequest
from app.wire.chat import parse_chat_request

USER = [{"role": "user", "content": "hi"}]


def body(**fields) -> bytes:
    return json.dumps({"model": "zowy-1", "messages": USER, **fields}).encode()


ACCEPTED = [
    {},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"temperature": 0, "top_p": 1, "max_tokens": 1, "n": 2, "seed": -5, "user": "u"},
    {"temperature": 2.0, "top_p": 0.0, "presence_penalty": -2, "frequency_penalty": 2},
    {"max_completion_tokens": 100},
    {"temperature": None, "tools": None, "stream": None},
    {"tools": [{"type": "function", "function": {"name": "f_1-x", "parameters": {"type": "object"}}}], "tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True}}},
    {"response_format": {"type": "text"}},
    {"logprobs": True, "top_logprobs": 20},
    {"stop": "x"},
    {"stop": ["a", "b", "c", "d"]},
    {"metadata": {"a": "b"}, "parallel_tool_calls": False, "store": False, "logit_bias": {"50256": -100}},
    {"reasoning_effort": "low", "service_tier": "auto", "verbosity": "low", "modalities": ["text"]},
    {"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
         "refusal": None, "annotations": [], "audio": None, "function_call": None},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}], "name": "bob"},
    ]},
]


@pytest.mark.parametrize("fields", ACCEPTED)
def test_accepts(fields):
    request, _ = parse_chat_request(body(**fields))
    assert request["model"] == "zowy-1"


REJECTED = [
    (b"{not json", "body", "invalid_json"),
    (b"", "body", "invalid_json"),
    (b"[1,2]", "body", "invalid_json"),
    (b'"text"', "body", "invalid_json"),
    (json.dumps({"messages": USER}).encode(), "model", "missing_required_parameter"),
    (json.dumps({"model": "zowy-1"}).encode(), "messages", "missing_required_parameter"),
    (body(messages=[]), "messages", "empty_array"),
    (body(messages="hi"), "messages", "invalid_type"),
    (body(model=5), "model", "invalid_type"),
    (body(model=""), "model", None),
    (body(messages=[{"role": "bot", "content": "x"}]), "messages[0].role", None),
    (body(messages=[{"content": "x"}]), "messages[0].role", "missing_required_parameter"),
    (body(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_type"),
    (body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages[0].content[0].type", None),
    (body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0].type", "missing_required_parameter"),
    (body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), "messages[0].content[0].text", "invalid_type"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]), "messages[0].content[0].image_url.url", None),
    (body(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]), "messages[0].content[0].type", None),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id", "missing_required_parameter"),
    (body(messages=[{"role": "assistant"}]), "messages[0].content", "missing_required_parameter"),
    (body(messages=[{"role": "user", "content": "x", "colour": "red"}]), "messages[0].colour", "unknown_parameter"),
    (body(temperature=2.5), "temperature", None),
    (body(temperature=-0.1), "temperature", None),
    (body(temperature="1"), "temperature", "invalid_type"),
    (body(top_p=1.5), "top_p", None),
    (body(max_tokens=0), "max_tokens", None),
    (body(max_tokens=1.5), "max_tokens", "invalid_type"),
    (body(max_completion_tokens=-1), "max_completion_tokens", None),
    (body(n=0), "n", None),
    (body(stream="yes"), "stream", "invalid_type"),
    (body(stream=1), "stream", "invalid_type"),
    (body(seed=2**64), "seed", None),
    (body(top_logprobs=21, logprobs=True), "top_logprobs", None),
    (body(top_logprobs=2), "top_logprobs", None),
    (body(tool_choice="sometimes"), "tool_choice", "invalid_type"),
    (body(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name", "missing_required_parameter"),
    (body(tools=[{"type": "function", "function": {"name": "has space"}}]), "tools[0].function.name", None),
    (body(tools=[{"type": "retrieval"}]), "tools[0].type", None),
    (body(response_format={"type": "xml"}), "response_format.type", None),
    (body(response_format={"type": "json_schema"}), "response_format.json_schema", "missing_required_parameter"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length"),
    (body(stream_options={"include_usage": "yes"}), "stream_options.include_usage", "invalid_type"),
    (body(functions=[]), "functions", "unknown_parameter"),
    (body(frobnicate=True), "frobnicate", "unknown_parameter"),
    (body(logit_bias={"abc": 1}), "logit_bias.abc", None),
    (body(metadata={str(i): "v" for i in range(17)}), "metadata", "array_above_max_length"),
]


@pytest.mark.parametrize("raw, param, code", REJECTED)
def test_rejects_naming_the_field(raw, param, code):
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    error = info.value
    assert error.status == 400
    assert error.param == param, error.message
    if code is not None:
        assert error.code == code
    assert param in error.message or param == "body"


def test_unknown_top_level_field_message_matches_openai():
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(foo=1))
    assert info.value.message == "Unrecognized request argument supplied: foo"


@pytest.mark.parametrize("raw", [b"\x00", b"\xff\xfe", b'{"model": "\\ud800"}', b"[" * 5000, b'{"a":' * 3000, "{\"model\": \"z\u0000\"}".encode()])
def test_hostile_bytes_are_clean_400s(raw):
    with pytest.raises(InvalidRequest):
        parse_chat_request(raw)
