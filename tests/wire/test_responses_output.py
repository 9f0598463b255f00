"""A chat completion as a Responses API response object: items, ids, status, usage, echoes."""
from __future__ import annotations

import orjson

from app.wire.usage import Usage
from app.wire.responses import signatures
from app.wire.responses.output import Frame, completion_output, usage_object
from app.wire.responses.request import parse_responses_request
from app.wire.responses.translate import Tool

RID = "00112233445566778899aabb"


def frame(**request) -> Frame:
    return Frame(parse_responses_request(orjson.dumps({"model": "zowy-1", "input": "hi", **request})), "zowy-1", RID, 1700000000)


def completion(message: dict, finish: str = "stop", logprobs=None) -> dict:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "zowy-1",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "logprobs": logprobs, "finish_reason": finish}]}


def test_text_answer():
    output, incomplete = completion_output(completion({"content": "Hi!"}), frame().ids, {})
    assert incomplete is None
    assert output == [{"id": f"msg_{RID}0000", "type": "message", "status": "completed",
                       "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi!"}], "role": "assistant"}]


def test_tool_calls_with_signatures_and_text():
    tools = {"get": Tool("function", "get"), "patch": Tool("custom", "patch"), "ns__f": Tool("function", "f", "ns")}
    message = {"content": "Checking.", "tool_calls": [
        {"id": "up1", "type": "function", "function": {"name": "get", "arguments": "{}"},
         "extra_content": {"google": {"thought_signature": "S1"}}},
        {"id": "up2", "type": "function", "function": {"name": "patch", "arguments": '{"input":"diff"}'}},
        {"id": "up3", "type": "function", "function": {"name": "ns__f", "arguments": '{"a":1}'}},
    ]}
    output, _ = completion_output(completion(message, "tool_calls"), frame().ids, tools)
    assert [i["type"] for i in output] == ["reasoning", "message", "function_call", "custom_tool_call", "function_call"]
    carrier = signatures.decode(output[0]["encrypted_content"])
    assert carrier == {output[2]["call_id"]: {"google": {"thought_signature": "S1"}}}
    assert output[3]["input"] == "diff" and output[3]["id"] == f"ctc_{RID}0003"
    assert output[4]["namespace"] == "ns" and output[4]["name"] == "f"
    assert len({i["id"] for i in output}) == 5


def test_length_is_incomplete_and_refusal_is_a_part():
    output, incomplete = completion_output(completion({"content": "cut"}, "length"), frame().ids, {})
    assert incomplete == "max_output_tokens" and output[0]["status"] == "incomplete"
    output, _ = completion_output(completion({"content": None, "refusal": "No."}), frame().ids, {})
    assert output[0]["content"] == [{"type": "refusal", "refusal": "No."}]


def test_response_object_echoes_its_request():
    f = frame(instructions="Be brief.", temperature=0.3, store=False, metadata={"a": "b"},
              text={"format": {"type": "json_schema", "name": "X", "schema": {"type": "object"}, "strict": True}},
              tools=[{"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": True}],
              reasoning={"effort": "low"}, service_tier="flex")
    doc = f.response("completed", [], usage_object(Usage(3, 4, 7)))
    assert list(doc)[:4] == ["id", "object", "created_at", "status"]
    assert doc["instructions"] == "Be brief." and doc["temperature"] == 0.3 and doc["store"] is False
    assert doc["metadata"] == {"a": "b"} and doc["service_tier"] == "flex"
    assert doc["text"]["format"] == {"type": "json_schema", "description": None, "name": "X", "schema": {"type": "object"}, "strict": True}
    assert doc["tools"] == [{"type": "function", "description": None, "name": "get", "parameters": {"type": "object"}, "strict": True}]
    assert doc["reasoning"] == {"effort": "low", "summary": None}
    assert doc["usage"]["total_tokens"] == 7 and doc["completed_at"] is not None
    defaults = frame().response("in_progress", [])
    assert (defaults["store"], defaults["temperature"], defaults["top_p"], defaults["tool_choice"], defaults["service_tier"]) == (
        True, 1.0, 1.0, "auto", "auto")
    assert frame().response("completed", [])["service_tier"] == "default"
