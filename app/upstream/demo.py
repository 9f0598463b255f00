"""The demo model: what answers in demo mode (no provider key configured), in process, through the
mock transport. It speaks OpenAI's chat completions, streams word by word, and reports usage."""
from __future__ import annotations

import asyncio
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
    usage = _usage(body, REPLY)
    if not request.stream:
        message = {"role": "assistant", "content": REPLY}
        doc = {**base, "object": "chat.completion", "usage": usage,
               "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return MockResponse.json(doc)
    return MockResponse(200, _stream(base, usage), {"content-type": "text/event-stream"})


async def _stream(base: dict, usage: dict) -> AsyncIterator[bytes]:
    chunk = {**base, "object": "chat.completion.chunk"}

    def event(doc: dict) -> bytes:
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    yield event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    words = REPLY.split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(WORD_DELAY)
        text = word if i == len(words) - 1 else word + " "
        yield event({**chunk, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    yield event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield event({**chunk, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
