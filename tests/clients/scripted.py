"""A scripted upstream: a real HTTP server on 127.0.0.1 speaking OpenAI Chat Completions, whose
answers a test's function decides from each request (a model that calls a tool, then answers
after the tool's output). It keeps every request body it received.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Callable

from aiohttp import web

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


class ScriptedUpstream:
    def __init__(self, script: Callable[[dict], Answer]) -> None:
        self.script = script
        self.received: list[dict] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ScriptedUpstream":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        n = len(self.received)
        answer = self.script(body)
        if not body.get("stream"):
            return web.json_response(answer.completion(n))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in answer.chunks(n):
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


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
