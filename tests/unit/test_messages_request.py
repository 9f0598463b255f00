"""The Messages request: every field and block of real clients' bodies accepted and turned into the
chat request it asks for; each malformed one refused with Anthropic's path to the field."""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from app.core.config import RequestLimits
from app.core.errors import InvalidRequest
from app.wire.messages import signature
from app.wire.messages.count import count_tokens
from app.wire.messages.request import parse_count_request, parse_messages_request

HERE = Path(__file__).resolve().parent.parent / "conformance" / "messages"
CLIENTS = sorted((HERE / "clients").glob("*.json"))
RECORDINGS = sorted((HERE / "recordings").glob("messages-*.json"))


def parse(body: dict, limits: RequestLimits = RequestLimits()):
    return parse_messages_request(orjson.dumps(body), limits)


def refused(body: dict | bytes, limits: RequestLimits = RequestLimits()) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(raw, limits)
    error = caught.value
    assert error.status == 400
    assert error.param is None or error.message.startswith(error.param + ":") or error.param == "body"
    return error


def base(**extra) -> dict:
    return {"model": "zowy-1", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra}


def recorded_requests():
    for path in RECORDINGS:
        doc = json.loads(path.read_text())
        for turn in doc.get("turns") or [doc]:
            request = turn.get("request")
            if request and request.get("body"):
                yield pytest.param(request["url"], request["body"], id=f"{path.stem}:{len(request['body'].get('messages', []))}")


@pytest.mark.parametrize("url, body", list(recorded_requests()))
def test_every_recorded_request_is_accepted(url, body):
    if "count_tokens" in url:
        chat, _ = parse_count_request(orjson.dumps(body))
    else:
        chat, _ = parse(body)
    assert chat["model"] == body["model"]
    assert chat["messages"]


@pytest.mark.parametrize("path", CLIENTS, ids=lambda p: p.stem)
def test_every_client_request_is_accepted(path):
    doc = json.loads(path.read_text())
    body = doc["body"]
    if doc["path"].endswith("count_tokens"):
        chat, facts = parse_count_request(orjson.dumps(body))
        assert count_tokens(chat, facts, 0, 1500) > 0
        return
    if path.stem == "anthropic-sdk-0008":
        error = refused(body)
        assert error.param == "thinking.enabled.budget_tokens"
        return
    chat, facts = parse(body)
    assert chat["max_tokens"] == body["max_tokens"]
    assert bool(chat.get("stream")) == bool(body.get("stream"))
    assert facts.text_chars > 0
    tools = body.get("tools") or []
    assert [t["function"]["name"] for t in chat.get("tools", [])] == [t["name"] for t in tools]
    for tool in chat.get("tools", []):
        assert "$schema" not in tool["function"]["parameters"]


def test_claude_code_turn_two_becomes_a_tool_loop():
    body = json.loads((HERE / "clients" / "claude-code-turn-2.json").read_text())["body"]
    chat, _ = parse(body)
    roles = [m["role"] for m in chat["messages"]]
    # system text blocks, the user turn, the mid-conversation system entry, the assistant's call,
    # its result.
    assert roles == ["system", "user", "system", "assistant", "tool"]
    assert chat["messages"][0]["content"].startswith("x-anthropic-billing-header")
    call = chat["messages"][3]["tool_calls"][0]
    assert call["function"] == {"name": "Bash", "arguments": '{"command":"echo hello-from-shell","description":"Print hello-from-shell"}'}
    assert chat["messages"][3]["content"] == "I'll run that for you."
    # A signature that is not ours carries nothing: the call gets Gemini's documented dummy.
    assert call["extra_content"] == signature.DUMMY
    assert chat["messages"][4] == {"role": "tool", "tool_call_id": call["id"], "content": "hello-from-shell"}
    assert chat["reasoning_effort"] == "high"  # output_config.effort
    assert chat["user"].startswith('{"device_id"')
    assert "context_management" not in chat and "thinking" not in chat and "metadata" not in chat


def test_system_and_messages_in_chat_order():
    chat, facts = parse(base(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "scope": "x"}},
                {"type": "text", "text": "Use tools."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": None, "citations": None}]},
                  {"role": "assistant", "content": "b"},
                  {"role": "system", "content": [{"type": "text", "text": "c"}]},
                  {"role": "user", "content": "d"}],
    ))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert facts.text_chars == len("Be brief.\n\nUse tools.") + 4


def test_settings_become_chat_fields():
    chat, _ = parse(base(
        stream=True, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END", "STOP"],
        metadata={"user_id": "u-1"}, service_tier="standard_only", context_management={"edits": []},
        cache_control={"type": "ephemeral"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    ))
    assert chat == {
        "model": "zowy-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True,
        "temperature": 0.5, "top_p": 0.9, "stop": ["END", "STOP"], "user": "u-1",
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True}},
    }


def test_output_format_of_the_structured_outputs_beta():
    chat, _ = parse(base(output_format={"type": "json_schema", "schema": {"type": "object", "properties": {}}}))
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("thinking, effort, expected", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
    ({"type": "adaptive"}, None, None),
    ({"type": "adaptive"}, "medium", "medium"),
    ({"type": "disabled"}, None, None),
    (None, "max", "high"),
    (None, "xhigh", "high"),
    ({"type": "enabled", "budget_tokens": 31999}, "low", "low"),
])
def test_thinking_and_effort_become_reasoning_effort(thinking, effort, expected):
    body = base(max_tokens=32000)
    if thinking is not None:
        body["thinking"] = thinking
    if effort is not None:
        body["output_config"] = {"effort": effort}
    chat, _ = parse(body)
    assert chat.get("reasoning_effort") == expected


def test_tools_and_tool_choice():
    tools = [{"name": "get_weather", "description": "Weather", "strict": True, "cache_control": {"type": "ephemeral"},
              "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                               "properties": {"city": {"type": "string"}}}},
             {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}]
    for choice, expected, parallel in [
        ({"type": "auto"}, "auto", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "noop"}, {"type": "function", "function": {"name": "noop"}}, None),
        ({"type": "none"}, "none", None),
    ]:
        chat, _ = parse(base(tools=tools, tool_choice=choice))
        assert chat["tool_choice"] == expected
        assert chat.get("parallel_tool_calls") == parallel
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather", "strict": True,
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]


def test_no_tools_means_no_tool_choice():
    chat, _ = parse(base(tools=[], tool_choice={"type": "auto"}))
    assert "tools" not in chat and "tool_choice" not in chat


def test_tool_loop_with_results_images_and_errors():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    chat, facts = parse(base(messages=[
        {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Two calls."},
            {"type": "tool_use", "id": "toolu_a", "name": "shot", "input": {}},
            {"type": "tool_use", "id": "toolu_b", "name": "fail", "input": {"x": [1, 2.5, None]}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "text", "text": "took it"}, image]},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "boom", "is_error": True},
            {"type": "text", "text": "and?"},
        ]},
    ]))
    messages = chat["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert messages[0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert [c["function"]["arguments"] for c in messages[1]["tool_calls"]] == ["{}", '{"x":[1,2.5,null]}']
    assert messages[1]["tool_calls"][0]["extra_content"] == signature.DUMMY
    assert "extra_content" not in messages[1]["tool_calls"][1]  # the dummy goes on the first call only
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_a", "content": "took it"}
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: boom"}
    # The image a tool returned follows the tool messages, with the user's own text.
    assert messages[4]["content"][0]["type"] == "image_url" and messages[4]["content"][1] == {"type": "text", "text": "and?"}
    assert facts.images == 2 and facts.first_image == "messages.0.content.1"
    assert facts.image_bytes == 2 * len("iVBORw0KGgo=")


def test_a_system_entry_between_a_call_and_its_result_waits_for_the_result():
    chat, _ = parse(base(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "system", "content": "reminder"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]))
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "system"]
    assert chat["messages"][2]["content"] == ""


def test_carrier_signatures_give_calls_their_vendor_fields_back():
    google = {"google": {"thought_signature": "EjQKMgG+sig"}}
    carrier = signature.encode({"toolu_x_1": google}, {"google": {"thought": True}}, "top-level-sig")
    chat, _ = parse(base(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "", "signature": carrier},
            {"type": "tool_use", "id": "toolu_x_0", "name": "f", "input": {}},
            {"type": "tool_use", "id": "toolu_x_1", "name": "f", "input": {}},
            {"type": "redacted_thinking", "data": "abc"},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x_0", "content": "1"},
                                     {"type": "tool_result", "tool_use_id": "toolu_x_1", "content": "2"}]},
    ]))
    assistant = chat["messages"][1]
    assert "content" not in assistant
    assert "extra_content" not in assistant["tool_calls"][0]
    assert assistant["tool_calls"][1]["extra_content"] == google
    assert assistant["extra_content"] == {"google": {"thought": True}}
    assert assistant["thought_signature"] == "top-level-sig"


def test_signature_round_trip_and_foreign_signatures():
    carrier = signature.encode({"a": {"google": {"thought_signature": "s"}}})
    assert signature.decode(carrier) == {"c": {"a": {"google": {"thought_signature": "s"}}}, "m": None, "t": None}
    for foreign in ("FAKE-SIGNATURE-36a3", "EqQBCkYIBxgCKkB", "zs1.!!!", "zs1." + "e30", "zs1.WzFd"):
        decoded = signature.decode(foreign)
        assert decoded is None or decoded == {"c": {}, "m": None, "t": None}


def test_text_document_becomes_text():
    chat, _ = parse(base(messages=[{"role": "user", "content": [
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "body"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "more"}]}},
    ]}]))
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "Notes"}, {"type": "text", "text": "body"}, {"type": "text", "text": "more"},
    ]


@pytest.mark.parametrize("body, param", [
    (b"{not json", "body"),
    (b"[1]", "body"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "zowy-1", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (base(max_tokens=0), "max_tokens"),
    (base(temperature=1.5), "temperature"),
    (base(top_k=-1), "top_k"),
    (base(frobnicate=1), "frobnicate"),
    (base(messages=[]), "messages"),
    (base(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (base(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (base(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages.0.name"),
    (base(messages=[{"role": "user", "content": [{"type": "bogus"}]}]), "messages.0.content.0.type"),
    (base(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages.0.content.0.type"),
    (base(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text.text"),
    (base(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "foo": 1}]}]), "messages.0.content.0.text.foo"),
    (base(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": 3}]}]),
     "messages.1.content.0.text.text"),
    (base(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}]}]),
     "messages.0.content.0.image.source.base64.media_type"),
    (base(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages.0.content.0.source.type"),
    (base(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}]}]),
     "messages.0.content.0.source.url"),
    (base(messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}]}]),
     "messages.0.content.0.source.type"),
    (base(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]),
     "messages.0.content.0.type"),
    (base(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]),
     "messages.0.content.0.type"),
    (base(messages=[{"role": "system", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]),
     "messages.0.content.0.type"),
    (base(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]),
     "messages.0.content.0.tool_use.input"),
    (base(messages=[{"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}]),
     "messages.0.content.0.thinking.signature"),
    (base(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]),
     "messages.0.content.0.tool_use_id"),
    (base(messages=[{"role": "user", "content": "go"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                    {"role": "user", "content": "no result"}]), "messages.1"),
    (base(messages=[{"role": "user", "content": "go"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]),
     "messages.1"),
    (base(tools=[{"name": "bad name!", "input_schema": {}}]), "tools.0.custom.name"),
    (base(tools=[{"name": "f"}]), "tools.0.custom.input_schema"),
    (base(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (base(tools=[{"name": "f", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "g"}),
     "tool_choice.tool.name"),
    (base(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (base(thinking={"type": "enabled", "budget_tokens": 500}), "thinking.enabled.budget_tokens"),
    (base(thinking={"type": "enabled", "budget_tokens": 2000}), "thinking.enabled.budget_tokens"),
    (base(output_config={"effort": "extreme"}), "output_config.effort"),
    (base(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences"),
    (base(metadata={"user_id": "x" * 300}), "metadata.user_id"),
    (base(mcp_servers=[{"type": "url", "url": "https://x"}]), "mcp_servers"),
    (base(container="c"), "container"),
    (orjson.dumps(base(tools=[{"name": "f", "input_schema": {"n": 1}}])).replace(b'"n":1', b'"n":%d' % 2**70),
     "tools.0.custom.input_schema.n"),
    (orjson.dumps(base(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"v": 1}}]}])).replace(b'"v":1', b'"v":NaN'),
     "messages.0.content.0.tool_use.input.v"),
])
def test_malformed_bodies_name_the_field(body, param):
    error = refused(body)
    assert error.param == param, error.message


def test_a_million_unknown_keys_cost_one_error():
    body = base()
    body.update({f"k{i}": i for i in range(20000)})
    assert refused(body).param == "k0"


def test_limits():
    limits = RequestLimits(messages=2, text_chars=10, tools=1)
    assert refused(base(messages=[{"role": "user", "content": "a"}] * 3), limits).param == "messages"
    error = refused(base(messages=[{"role": "user", "content": "x" * 11}]), limits)
    assert error.code == "context_length_exceeded" and error.message == "prompt is too long: 3 tokens > 2 maximum"
    tool = {"name": "f", "input_schema": {"type": "object"}}
    assert refused(base(tools=[tool, {**tool, "name": "g"}]), limits).param == "tools"
    big = base(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 2000}}]}])
    assert refused(big, RequestLimits(image_url_bytes=1024)).code == "image_too_large"


def test_count_tokens_estimate():
    chat, facts = parse_count_request(orjson.dumps({"model": "zowy-1", "system": "s" * 400,
                                                     "messages": [{"role": "user", "content": "u" * 400}]}))
    assert count_tokens(chat, facts, guard_chars=0, image_tokens=1500) == 200 + 3 * 3
    assert count_tokens(chat, facts, guard_chars=400, image_tokens=1500) == 300 + 3 * 3
    with_tools, tool_facts = parse_count_request(orjson.dumps({
        "model": "zowy-1", "messages": [{"role": "user", "content": "u" * 400}],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}],
    }))
    assert count_tokens(with_tools, tool_facts, 0, 1500) > count_tokens(chat, facts, 0, 1500) - 100
