"""Recorded Gemini and OpenAI chat traffic replayed through the Responses API (POST /v1/responses)
to the openai SDK: every recorded stream becomes well-formed Responses events whose text and calls
are the recorded ones, with no upstream identity; and a recorded Gemini 3 tool call's thought
signature travels back on the next turn (in the reasoning item, and through previous_response_id)."""
from __future__ import annotations

import json

import pytest

from tests.conformance import corpus
from tests.conformance.conftest import PUBLIC
from tests.conformance.test_recordings import STREAMS, assert_no_upstream_identity, capture, client, turns  # noqa: F401


def _function_tools(request: dict | None) -> list[dict]:
    out = []
    for tool in (request or {}).get("tools") or []:
        function = tool["function"]
        out.append({"type": "function", "name": function["name"], "parameters": function.get("parameters"),
                    "strict": function.get("strict")})
    return out


@pytest.mark.parametrize("exchange", [e for e in STREAMS if not e.partial or e.tool_calls()], ids=lambda e: e.id)
def test_recorded_streams_as_responses_events(exchange, client, capture, replay):
    replay.queue(exchange)
    tools = _function_tools(exchange.request)
    kwargs = {"tools": tools} if tools else {}
    stream = client.responses.create(model=PUBLIC[exchange.provider], input="Say hello!", stream=True, store=False, **kwargs)
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == (exchange.text() or "") == "".join(
        p.text for item in final.output if item.type == "message" for p in item.content if p.type == "output_text")
    calls = [(i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == exchange.tool_calls()
    assert final.usage.total_tokens >= final.usage.input_tokens > 0 or final.usage.total_tokens > 0
    assert_no_upstream_identity(exchange, capture.received())


@pytest.mark.parametrize("chained", [False, True])
def test_gemini_3_signature_survives_the_tool_loop(chained, client, replay):
    (call_turn,) = turns("gemini-stream-tool-call-thought-signature-chunk")
    answer = turns("gemini-stream-text-two-chunks")[0]
    replay.queue(call_turn)
    replay.queue(answer)
    tools = [{"type": "function", "name": "read", "strict": False,
              "parameters": {"type": "object", "properties": {"filePath": {"type": "string"}}}}]
    with client.responses.stream(model="zowy-2", input="Read gateway.go", tools=tools, store=chained) as stream:
        first = stream.get_final_response()
    kinds = [item.type for item in first.output]
    assert kinds == ["reasoning", "function_call"]
    call = first.output[1]
    assert json.loads(call.arguments) == {"filePath": "/home/rafael/Projects/git.0ur.uk/nenya/gateway.go"}
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "package main"}
    if chained:
        follow_up = {"previous_response_id": first.id, "input": [output]}
    else:
        replayed = [item.model_dump(exclude_none=True) for item in first.output]
        follow_up = {"input": [{"role": "user", "content": "Read gateway.go"}, *replayed, output], "store": False}
    with client.responses.stream(model="zowy-2", tools=tools, **follow_up) as stream:  # the recorded answer is a stream
        follow = stream.get_final_response()
    assert follow.output_text == answer.text()
    sent = replay.received[-1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    signature = call_turn.chunks[0]["choices"][0]["delta"]["tool_calls"][0]["extra_content"]
    assert assistant["tool_calls"][0]["extra_content"] == signature
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "package main"}
