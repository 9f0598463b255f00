"""The demo model: what answers in demo mode (no provider key configured), in process, through the
mock transport. It speaks OpenAI's chat completions, streams word by word, and reports usage.

Offered tools and asked to run, call, execute or use something (or made to by ``tool_choice``), it
calls the first offered function (or the one ``tool_choice`` names) with arguments made from the
request: each required parameter (or the first, when none is required) gets the text between
backticks, or the whole message; given the tool's result, it answers with it. Deterministic, so a
newcomer's ``codex exec`` asked to run a command runs it against ``make run``."""
from __future__ import annotations

import asyncio
import re
import time
from typing import AsyncIterator

import orjson

from ..core.ids import new_request_id
from .mock import MockRequest, MockResponse

REPLY = (
    "Hello! I am Zowy AI, running in demo mode: this answer comes from a built-in demo model. "
    "Set GEMINI_API_KEY or OPENAI_API_KEY to talk to a real one."
)
WORD_DELAY = 0.02
WORDS_PER_CHUNK = 8
RESULT_CHARS = 2000
_ASKS = re.compile(r"\b(run|call|execute|exec|use)\b", re.IGNORECASE)
_QUOTED = re.compile(r"`([^`]+)`")


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _usage(body: dict, reply: str) -> dict:
    prompt = 1 + sum(len(_text(m.get("content"))) for m in body.get("messages", [])) // 4
    completion = max(1, len(reply) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def answer(request: MockRequest) -> MockResponse:
    """The demo model's answer to one upstream request."""
    body = request.body
    base = {"id": "demo-" + new_request_id(), "created": int(time.time()), "model": body.get("model", "demo")}
    call = tool_call(body)
    reply = REPLY if call is None else ""
    result = tool_result(body)
    if result is not None and call is None:
        reply = "The tool returned:\n\n" + result[-RESULT_CHARS:]
    usage = _usage(body, reply or call[1])
    if not request.stream:
        message: dict = {"role": "assistant", "content": reply or None}
        if call is not None:
            message["tool_calls"] = [{"id": "call_" + base["id"], "type": "function",
                                      "function": {"name": call[0], "arguments": call[1]}}]
        doc = {**base, "object": "chat.completion", "usage": usage,
               "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}]}
        return MockResponse.json(doc)
    return MockResponse(200, _stream(base, usage, reply, call), {"content-type": "text/event-stream"})


def tool_call(body: dict) -> tuple[str, str] | None:
    """The call the demo model makes of the request's tools (name, JSON arguments), if it makes one."""
    tools = [t["function"] for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    forced = choice == "required" or named is not None
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    text = _text(last.get("content")) if last.get("role") == "user" else ""
    if not forced and not (_QUOTED.search(text) or _ASKS.search(text)):
        return None
    tool = next((t for t in tools if t.get("name") == named), tools[0])
    return tool.get("name", "tool"), orjson.dumps(_arguments(tool.get("parameters") or {}, text)).decode()


def _arguments(schema: dict, text: str) -> dict:
    quoted = _QUOTED.search(text)
    value = quoted.group(1) if quoted else text
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    names = [n for n in schema.get("required") or () if n in properties] or list(properties)[:1]
    args: dict = {}
    for name in names:
        kind = properties[name].get("type") if isinstance(properties[name], dict) else "string"
        if kind == "string":
            args[name] = value
        elif kind in ("integer", "number"):
            args[name] = 1
        elif kind == "boolean":
            args[name] = False
        elif kind == "array":
            args[name] = [value]
        elif kind == "object":
            args[name] = {}
        else:
            args[name] = value
    return args


def tool_result(body: dict) -> str | None:
    """What the tool returned, when the request ends with a tool's result."""
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    return _text(last.get("content")) if last.get("role") == "tool" else None


async def _stream(base: dict, usage: dict, reply: str, call: tuple[str, str] | None) -> AsyncIterator[bytes]:
    chunk = {**base, "object": "chat.completion.chunk"}

    def event(doc: dict) -> bytes:
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    def delta(d: dict, finish: str | None = None) -> bytes:
        return event({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})

    yield delta({"role": "assistant", "content": ""})
    if call is not None:
        name, arguments = call
        await asyncio.sleep(WORD_DELAY)
        yield delta({"tool_calls": [{"index": 0, "id": "call_" + base["id"], "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            yield delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield delta({}, "tool_calls")
    else:
        words = reply.split(" ")
        step = 1 if reply == REPLY else WORDS_PER_CHUNK  # a tool's result goes out a few words a chunk
        pieces = [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
        for i, piece in enumerate(pieces):
            await asyncio.sleep(WORD_DELAY)
            yield delta({"content": piece if i == len(pieces) - 1 else piece + " "})
        yield delta({}, "stop")
    yield event({**chunk, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
