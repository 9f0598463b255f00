"""The demo model: a text answer, and a tool call when offered tools and asked to run something."""
from __future__ import annotations

import json

import orjson
import pytest

from app.upstream.demo import REPLY, answer, tool_call
from app.upstream.mock import MockRequest

EXEC = {"type": "function", "function": {"name": "exec_command", "parameters": {
    "type": "object", "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}, "yield_time_ms": {"type": "number"}},
    "required": ["cmd"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def body(text: str, tools=(EXEC,), **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "tools": list(tools), **extra}


async def run(doc: dict, stream: bool) -> dict:
    """The demo's answer as one message (stream deltas folded)."""
    response = await answer(MockRequest(None, {**doc, "stream": stream}, {}))
    if not stream:
        raw = b""
        while piece := await response.content.readany():
            raw += piece
        doc = json.loads(raw)
        return {**doc["choices"][0]["message"], "finish": doc["choices"][0]["finish_reason"], "usage": doc["usage"]}
    raw = b""
    while piece := await response.content.readany():
        raw += piece
    text, calls, finish, usage = "", {}, None, None
    for event in raw.decode().split("\n\n")[:-1]:
        data = event[6:]
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                entry["name"] += call["function"].get("name") or ""
                entry["arguments"] += call["function"].get("arguments") or ""
            finish = choice["finish_reason"] or finish
    out = {"content": text, "finish": finish, "usage": usage}
    if calls:
        out["tool_calls"] = [{"function": c} for c in calls.values()]
    return out


@pytest.mark.parametrize("stream", [False, True])
async def test_runs_the_quoted_command_then_answers_with_its_output(stream):
    first = await run(body("run `echo hello` and tell me its output"), stream)
    assert first["finish"] == "tool_calls" and first["usage"]["total_tokens"] > 0
    call = first["tool_calls"][0]["function"]
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "echo hello"}
    follow = body("run `echo hello` and tell me its output")
    follow["messages"] += [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": call}]},
                           {"role": "tool", "tool_call_id": "c", "content": "Output:\nhello\n"}]
    second = await run(follow, stream)
    assert second["finish"] == "stop" and "hello" in second["content"] and "tool_calls" not in second


@pytest.mark.parametrize("stream", [False, True])
async def test_plain_questions_get_the_demo_reply(stream):
    assert (await run(body("what is the weather like?"), stream))["content"] == REPLY
    assert (await run({"model": "m", "messages": [{"role": "user", "content": "run it"}]}, stream))["content"] == REPLY


def test_which_tool_and_which_arguments():
    assert tool_call(body("use the tool", tools=(WEATHER, EXEC))) == ("get_weather", '{"city":"use the tool"}')
    assert tool_call(body("hi", tool_choice="required")) is not None
    assert tool_call(body("run `ls`", tool_choice="none")) is None
    named = body("hi", tools=(WEATHER, EXEC), tool_choice={"type": "function", "function": {"name": "exec_command"}})
    assert tool_call(named) == ("exec_command", '{"cmd":"hi"}')
    arguments = orjson.loads(tool_call(body("execute `make test`"))[1])
    assert arguments == {"cmd": "make test"}
