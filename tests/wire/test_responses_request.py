"""Responses API requests: what real clients send is accepted and becomes the right chat request;
every malformed field is refused naming it as OpenAI does."""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from app.core.config import RequestLimits
from app.core.errors import InvalidRequest
from app.wire.responses import signatures
from app.wire.responses.request import parse_responses_request
from app.wire.responses.translate import chat_call_id, to_chat

CLIENT_REQUESTS = Path(__file__).with_name("client_requests")


def parse(body: dict, **kw):
    return parse_responses_request(orjson.dumps(body), **kw)


def chat(body: dict, **kw):
    limits = kw.get("limits", RequestLimits())
    return to_chat(parse(body, limits=limits), **kw)


def refused(body: dict, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        chat(body, **kw)
    return caught.value


def client_request(name: str) -> dict:
    return json.loads((CLIENT_REQUESTS / f"{name}.json").read_text())["body"]


# what real clients send


@pytest.mark.parametrize("name", [
    "codex-turn2-no-web-search", "codex-turn2-reasoning-replay", "codex-compaction", "agents-turn2",
    "agents-streamed-turn2", "openai-python-tool-round-trip", "openai-python-parse-json-schema",
])
def test_client_requests_are_accepted(name):
    body = client_request(name)
    # As Codex sends it with web_search = "disabled" in its config (the README's).
    body["tools"] = [t for t in body.get("tools", []) if t["type"] != "web_search"]
    out = chat(body).body
    assert out["model"] == body["model"]
    assert out["messages"][-1]["role"] in ("user", "tool")
    assert "store" not in out and "include" not in out and "client_metadata" not in out


def test_codex_turn_two_replays_the_call_and_its_output():
    out = chat(client_request("codex-turn2-no-web-search")).body
    assistant, tool = out["messages"][-2:]
    call = assistant["tool_calls"][0]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert call["function"] == {"name": "exec_command", "arguments": '{"cmd": "echo hello-from-shell"}'}
    assert tool == {"role": "tool", "tool_call_id": call["id"], "content": tool["content"]}
    assert "hello-from-shell" in tool["content"]
    # Codex's developer messages are system messages upstream (every target takes that role).
    assert [m["role"] for m in out["messages"][:2]] == ["system", "system"]
    assert out["tools"][0]["function"]["name"] == "exec_command"
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is True


def test_codex_default_tools_namespace_flattened_and_web_search_refused():
    body = client_request("codex-turn1-default-tools")
    error = refused(body)
    index = next(i for i, t in enumerate(body["tools"]) if t["type"] == "web_search")
    assert error.param == f"tools[{index}].type"
    assert "web_search" in error.message and 'web_search = "disabled"' in error.message
    body["tools"] = [t for t in body["tools"] if t["type"] != "web_search"]
    out = chat(body)
    names = [t["function"]["name"] for t in out.body["tools"]]
    assert "multi_agent_v1__spawn_agent" in names
    assert out.tools["multi_agent_v1__spawn_agent"] == ("function", "spawn_agent", "multi_agent_v1")


def test_codex_catalog_model_custom_tool_and_tool_search():
    body = client_request("codex-turn2-catalog-model-custom-tool")
    error = refused(body)
    assert error.param.startswith("tools[") and error.param.endswith(".type")
    body["tools"] = [t for t in body["tools"] if t["type"] not in ("tool_search", "web_search")]
    out = chat(body)
    patch = next(t["function"] for t in out.body["tools"] if t["function"]["name"] == "apply_patch")
    assert patch["parameters"]["required"] == ["input"]
    assert "lark grammar" in patch["description"] and "begin_patch" in patch["description"]
    assert out.tools["apply_patch"].kind == "custom"
    assert out.body["verbosity"] == "low" and out.body["reasoning_effort"] == "medium"


def test_compaction_turn_sends_no_empty_tools():
    out = chat(client_request("codex-compaction")).body
    assert "tools" not in out and "tool_choice" not in out and "parallel_tool_calls" not in out


def test_previous_response_request_needs_its_history():
    body = client_request("openai-python-previous-response-id")
    error = refused(body)
    assert error.param == "input[0].call_id"
    history = [{"type": "function_call", "id": "fc_1", "call_id": body["input"][0]["call_id"], "name": "get_weather",
                "arguments": '{"city":"Paris"}', "status": "completed"}]
    out = chat(body, history=history).body
    assert [m["role"] for m in out["messages"]] == ["assistant", "tool"]


def test_parse_json_schema_becomes_response_format():
    body = client_request("openai-python-parse-json-schema")
    out = chat(body).body
    assert out["response_format"]["type"] == "json_schema"
    schema = out["response_format"]["json_schema"]
    assert schema["name"] == "City" and schema["strict"] is True and schema["schema"]["title"] == "City"


# every field and item


def full_request() -> dict:
    return {
        "model": "zowy-1",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "sys"}]},
            {"role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
            ]},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "phase": "commentary",
             "content": [{"type": "output_text", "text": "Calling.", "annotations": [], "logprobs": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}],
             "content": None, "encrypted_content": signatures.encode({"call_a": {"google": {"thought_signature": "SIG"}}})},
            {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_a", "name": "get",
             "arguments": '{"q":1}', "parsed_arguments": {"q": 1}},
            {"type": "custom_tool_call", "call_id": "call_b", "name": "patch", "input": "*** Begin"},
            {"type": "function_call_output", "call_id": "call_a", "output": "42"},
            {"type": "custom_tool_call_output", "id": "ctco_1", "call_id": "call_b",
             "output": [{"type": "input_text", "text": "ok"}, {"type": "input_image", "image_url": "https://example.com/b.png"}]},
            {"type": "message", "role": "user", "content": "thanks"},
        ],
        "tools": [
            {"type": "function", "name": "get", "description": "Get.", "parameters": {"type": "object"}, "strict": False},
            {"type": "custom", "name": "patch", "description": "Patch.", "format": {"type": "text"}},
            {"type": "namespace", "name": "ns", "description": "Group.", "tools": [
                {"type": "function", "name": "inner", "description": "Inner.", "parameters": {"type": "object"}}]},
        ],
        "tool_choice": {"type": "function", "name": "get"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_object"}, "verbosity": "high"},
        "reasoning": {"effort": "xhigh", "summary": "auto"},
        "max_output_tokens": 500,
        "max_tool_calls": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_logprobs": 2,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "store": False,
        "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
        "metadata": {"k": "v"},
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "p1",
        "prompt_cache_retention": "24h",
        "truncation": "disabled",
        "service_tier": "flex",
        "client_metadata": {"x": "y"},
        "background": False,
    }


def test_every_field_and_item_translates():
    out = chat(full_request())
    body = out.body
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "system", "user", "assistant", "tool", "tool", "user", "user"]
    assert messages[0]["content"] == "Be brief."
    assert messages[3]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
    assistant = messages[4]
    assert assistant["content"] == "Calling."
    first, second = assistant["tool_calls"]
    assert first == {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": '{"q":1}'},
                     "extra_content": {"google": {"thought_signature": "SIG"}}}
    assert second["function"] == {"name": "patch", "arguments": '{"input":"*** Begin"}'}
    assert second["extra_content"] == signatures.PLACEHOLDER
    assert messages[5] == {"role": "tool", "tool_call_id": "call_a", "content": "42"}
    assert messages[6] == {"role": "tool", "tool_call_id": "call_b", "content": "ok"}
    # An image a tool returned goes after the tool messages, in a user message of its own.
    assert messages[7]["content"][1]["image_url"]["url"] == "https://example.com/b.png"
    assert messages[8] == {"role": "user", "content": "thanks"}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_object"} and body["verbosity"] == "high"
    assert body["reasoning_effort"] == "high"
    assert body["max_completion_tokens"] == 500 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["stream"] is True
    assert (body["user"], body["safety_identifier"], body["prompt_cache_key"], body["service_tier"]) == ("u1", "s1", "p1", "flex")
    for ours in ("metadata", "store", "include", "truncation", "client_metadata", "max_tool_calls", "background"):
        assert ours not in body
    assert out.facts.images == 2 and out.facts.first_image == "input[2].content[1].type"
    assert out.tools["ns__inner"] == ("function", "inner", "ns")


def test_allowed_tools_choice_narrows_the_tools():
    body = full_request()
    body["tool_choice"] = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get"}]}
    out = chat(body).body
    assert [t["function"]["name"] for t in out["tools"]] == ["get"] and out["tool_choice"] == "required"


def test_string_input_and_long_call_ids():
    assert chat({"model": "m", "input": "hi"}).body["messages"] == [{"role": "user", "content": "hi"}]
    long_id = "call_" + "x" * 60
    body = {"model": "m", "input": [
        {"type": "function_call", "call_id": long_id, "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": long_id, "output": "ok"},
    ]}
    assistant, tool = chat(body).body["messages"]
    assert assistant["tool_calls"][0]["id"] == tool["tool_call_id"] == chat_call_id(long_id)
    assert len(chat_call_id(long_id)) <= 40


def test_item_reference_is_resolved():
    stored = {"type": "message", "role": "user", "content": "from the store"}
    body = {"model": "m", "input": [{"type": "item_reference", "id": "msg_x"}, {"id": "msg_y"}]}
    out = chat(body, resolve=lambda item_id: stored if item_id in ("msg_x", "msg_y") else None).body
    assert out["messages"] == [{"role": "user", "content": "from the store"}] * 2
    error = refused(body, resolve=lambda item_id: None)
    assert error.param == "input[0].id" and error.code == "item_not_found"


@pytest.mark.parametrize("body, param, words", [
    ({"input": "x"}, "model", "Missing required parameter"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_audio"}]}]},
     "input[0].content[1].type", "expected one of"),
    ({"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"},
                              {"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "input[3].content[0].type", "expected one of"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text", "Missing"),
    ({"model": "m", "input": [{"role": "robot", "content": "a"}]}, "input[0].role", "expected one of"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments", "Missing"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "extra": 1}]},
     "input[0].extra", "Unrecognized"),
    ({"model": "m", "input": [{"type": "teleport"}]}, "input[0].type", "expected one of"),
    ({"model": "m", "input": [{"content": "no role"}]}, "input[0].type", "Missing"),
    ({"model": "m", "input": ["just a string"]}, "input[0]", "expected an object"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "Missing"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name", "pattern"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature", "<= 2"),
    ({"model": "m", "input": "x", "max_output_tokens": 5}, "max_output_tokens", ">= 16"),
    ({"model": "m", "input": "x", "include": ["everything"]}, "include[0]", "expected one of"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema", "Missing"),
    ({"model": "m", "input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort", "expected one of"),
    ({"model": "m", "input": "x", "frequency_penalty": 1}, "frequency_penalty", "Unrecognized request argument"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream", "expected a boolean"),
])
def test_malformed_fields_are_named(body, param, words):
    error = refused(body)
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param == param, error.message
    assert words in error.message


@pytest.mark.parametrize("body, param, words", [
    ({"model": "m", "input": "x", "background": True}, "background", "not supported"),
    ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "not supported"),
    ({"model": "m", "input": "x", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type", "hosted tool"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "web_search_preview"}},
     "tool_choice.type", "hosted tool"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice.name", "not found"),
    ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice", "must be specified with 'tools'"),
    ({"model": "m", "input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input[0].type", "hosted tools"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0].type", "file inputs are not supported"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}]}]},
     "input[0].content[0].file_id", "file_id"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x", "detail": "auto"}]}]},
     "input[0].content[0].image_url", "http"),
    ({"model": "m", "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]}]},
     "input[0].content[0].type", "not allowed in system messages"),
    ({"model": "m", "input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]}]},
     "input[0].content[0].type", "not allowed in assistant messages"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input[0].call_id", "No tool call found"),
    ({"model": "m", "input": [{"role": "user", "content": "x"},
                              {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]}, "input[1]", "No tool output found"),
    ({"model": "m", "instructions": "only this"}, "input", "Missing required parameter"),
])
def test_unsupported_or_inconsistent_requests_are_explained(body, param, words):
    error = refused(body)
    assert error.status == 400
    assert error.param == param, error.message
    assert words in error.message


def test_limits_hold():
    limits = RequestLimits(messages=2, text_chars=10, tools=1)
    assert refused({"model": "m", "input": [{"role": "user", "content": "a"}] * 3}, limits=limits).code == "array_above_max_length"
    assert refused({"model": "m", "input": "x" * 11}, limits=limits).code == "context_length_exceeded"
    two_tools = {"model": "m", "input": "x", "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]}
    assert refused(two_tools, limits=limits).param == "tools"


def test_free_form_json_must_travel():
    raw = b'{"model":"m","input":"x","tools":[{"type":"namespace","name":"ns","description":"d","tools":[{"type":"function","name":"f","parameters":{"n":1180591620717411303424}}]}]}'
    with pytest.raises(InvalidRequest) as caught:
        parse_responses_request(raw)
    assert caught.value.param == "tools[0].tools[0].parameters.n"


def test_invalid_json_and_non_object_bodies():
    for raw in (b"{", b"[]", b""):
        with pytest.raises(InvalidRequest) as caught:
            parse_responses_request(raw)
        assert caught.value.param == "body"
