"""A scripted upstream: a handler (bench/fakes) speaking OpenAI Chat Completions, whose answers a
test's function decides from each request (a model that calls a tool, then answers after the tool's
output). It keeps every request body it received. In process: ``MockTransport(Scripted(script))``;
behind a real socket on 127.0.0.1: ``ScriptedUpstream(script).start()``.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import orjson

from app.upstream.mock import MockRequest, MockResponse
from bench.fakes.server import HandlerServer, ServerThread

SCRIPTED_MODEL = "scripted-upstream-model"


class Answer:
    """What the scripted model says: text, or calls of tools (name, arguments as a JSON string)."""

    def __init__(self, text: str | None = None, calls: list[tuple[str, str]] | None = None,
                 prompt_tokens: int = 50, completion_tokens: int = 9) -> None:
        self.text = text
        self.calls = calls or []
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}

    def completion(self, n: int) -> dict:
        message: dict = {"role": "assistant", "content": self.text}
        if self.calls:
            message["tool_calls"] = [
                {"id": f"call_up{n}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(self.calls)
            ]
        return {"id": f"chatcmpl-up{n}", "object": "chat.completion", "created": int(time.time()), "model": SCRIPTED_MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if self.calls else "stop"}],
                "usage": self.usage}

    def chunks(self, n: int) -> list[dict]:
        base = {"id": f"chatcmpl-up{n}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": SCRIPTED_MODEL}

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        out = [chunk({"role": "assistant", "content": ""})]
        if self.text:
            words = self.text.split(" ")
            out += [chunk({"content": w if i == len(words) - 1 else w + " "}) for i, w in enumerate(words)]
        for i, (name, args) in enumerate(self.calls):
            out.append(chunk({"tool_calls": [{"index": i, "id": f"call_up{n}_{i}", "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        out.append(chunk({}, "tool_calls" if self.calls else "stop"))
        out.append({**base, "choices": [], "usage": self.usage})
        return out


class Scripted:
    """Answers every chat request with what ``script`` makes of its body."""

    def __init__(self, script: Callable[[dict], Answer]) -> None:
        self.script = script
        self.received: list[dict] = []
        self._lock = threading.Lock()  # bodies are kept from the server's thread, read from the tests'

    async def __call__(self, request: MockRequest) -> MockResponse:
        path = getattr(request, "path", None)
        if path is not None and not path.endswith("/chat/completions"):
            return MockResponse.json({"error": {"message": f"Unknown path {path}."}}, status=404)
        body = request.body
        with self._lock:
            self.received.append(body)
            n = len(self.received)
        answer = self.script(body)
        if not body.get("stream"):
            return MockResponse.json(answer.completion(n))
        events = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in answer.chunks(n)] + [b"data: [DONE]\n\n"]
        return MockResponse(200, events, {"content-type": "text/event-stream"})


class ScriptedUpstream(Scripted):
    """The scripted upstream behind a real socket on 127.0.0.1, served from a thread of its own."""

    def __init__(self, script: Callable[[dict], Answer]) -> None:
        super().__init__(script)
        self._thread = ServerThread(HandlerServer(self))

    @property
    def url(self) -> str:
        return self._thread.url

    def start(self) -> "ScriptedUpstream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()


def models_file(path, url: str):
    """Every public model served by the scripted upstream, as an OpenAI-compatible target."""
    from tests import support

    targets = "\n".join(
        f'[models.{name}]\ntargets = ["scripted"]' for name in ("zowy-1", "zowy-1-pro", "zowy-2")
    )
    path.write_text(f"""
[timeouts]
connect = 2.0
first_byte = 20.0
idle = 20.0
total = 60.0
{targets}
[targets.scripted]
provider = "openai"
base_url = "{url}/v1"
model = "{SCRIPTED_MODEL}"
api_key_env = "{support.UPSTREAM_KEY_ENV}"
""")
    return path


def last_tool_output(body: dict) -> str | None:
    """The content of the request's last message when it is a tool result (the model's turn after a call)."""
    last = body["messages"][-1]
    return last.get("content") if last.get("role") == "tool" else None
