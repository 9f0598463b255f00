"""Fake LLM provider: a real, fast HTTP server speaking OpenAI Chat Completions.

Used by the test suite, the benchmark, the load test and the demo. Run it with
``python -m bench.fake_upstream --host 127.0.0.1 --port 8001 [--mode openai|gemini]
[--chunks 8] [--chunk-size 1] [--delay 0.0] [--think 0.0]`` or in-process with
``server = await start("127.0.0.1", 0)`` (``server.port``, ``server.base_url``,
``await server.close()``).

Routes: ``POST /v1/chat/completions`` (also ``/v1beta/openai/chat/completions`` and
``/chat/completions``); ``GET /_fake/requests?n=K``, ``GET /_fake/stats``,
``POST /_fake/reset`` for introspection.

Deterministic output
  * token ``i`` is ``f"t{i}" + "x" * (chunk_size - 1) + " "``; the reply is the
    concatenation of ``chunks`` tokens (see :func:`reply_text`). Streams send one
    token per chunk.
  * usage (see :func:`usage_for`):
    ``prompt_tokens = 1 + C // 4`` where ``C`` is the number of characters of every
    message's text (string contents and ``text`` parts, all roles, system included);
    ``completion_tokens = chunks * n`` (``n`` = number of choices, default 1) for every
    successful response, whatever its kind (text, echo, JSON, tool call, refusal,
    content filter); ``total_tokens`` is the sum.
  * non-stream responses wait ``think + delay * chunks`` seconds; streams wait ``think``
    before the headers and ``delay`` between chunks.
  * ``response_format`` json_object/json_schema -> content ``{"answer": "<reply>"}``;
    image_url parts -> reply prefixed with ``saw N image(s) ``; ``logprobs: true`` ->
    a logprobs object per choice (non-stream) or per chunk (stream).
  * tools: when ``tools`` is set and ``tool_choice`` is not ``"none"`` and the last user
    message contains ``call a tool`` (or ``tool_choice`` is ``"required"`` or names a
    function) the reply is a call of the first (or named) tool with arguments
    ``{"city": "Tashkent"}`` (``finish_reason: "tool_calls"``; streamed in 4 pieces); after a
    tool's result (the last message a ``tool`` one) it answers with text unless ``tool_choice``
    requires or names a tool.

Directives: ``[[fake:key=value,key=value]]`` anywhere in the LAST user message (all
occurrences are read, later ones win); they never appear in the reply.
  status=<code>        respond with that status and an error body (429 adds retry-after: 1)
  hang=headers         never send headers (until the client leaves, at most 300 s)
  hang=body            non-stream: headers then stall; stream: ``after`` events then stall
  hang=flood           non-stream: headers, then a body that never ends (64 KiB writes, until
                       the client leaves, at most 300 s)
  after=<n>            events sent before ``hang=body`` stalls a stream (default 1)
  cut=<n>              stream: n events then close the connection (no [DONE]);
                       non-stream: headers and half the body then close
  malformed=<n>        stream: after n events send ``data: {not json`` then go on
  error_event=<n>      stream: after n events send an error event and end the stream
  chunks=<n> size=<n> delay=<s> think=<s>   per-request overrides
  honor_max=1          a text answer stops at the request's max_completion_tokens / max_tokens
                       (per choice) with finish_reason "length", as providers do
  echo=system          content = text of the first system/developer message
  echo=body            content = the raw request body
  content_filter=1     finish_reason "content_filter", content ""
  refusal=1            content null, refusal "I can't help with that."
  fail_first=<n>,key=<id>   the first n requests with that key get a 503
  mode=openai|gemini   per-request mode
  thinking=<n>         gemini: n hidden thinking tokens, counted in total_tokens only
  calls=<n>            with a tool call: n parallel calls (all in one chunk in gemini mode)
  no_id=1              gemini: chunks without a top-level "id" (as gemini-2.0-flash sends them)
  usage=0              stream: no usage at all, even when ``include_usage`` is asked for
  spaced=1             stream: each event's JSON written with spaces (``", "``, ``": "``), as
                       Python's ``json.dumps`` writes it, and no ``"usage": null`` on content chunks
Events are counted from 0 in stream order: role chunk, content chunks, finish chunk,
usage chunk (if any), ``[DONE]``; "after n events" means after the n-th was sent.

Modes
  openai  error ``{"error": {"message", "type", "param", "code"}}``.
  gemini  Google's OpenAI-compatible endpoint as recorded (tests/conformance/recordings):
          compact JSON with keys in alphabetical order; ``model`` the bare requested name; no
          ``system_fingerprint``; a 23-character id without ``chatcmpl-``; ``role`` in every
          delta and no ``finish_reason`` key until the last content chunk, which carries it;
          with ``include_usage`` a running usage on every chunk, the final one on the last
          content chunk (no chunk of its own); a tool call whole in one chunk, without
          ``index``, with ``extra_content.google.thought_signature``; error bodies a
          pretty-printed JSON list ``[{"error": {"code", "message", "status"}}]``; 400 for
          fields Gemini does not know (:data:`GEMINI_REJECTED_FIELDS`), and for a gemini-3
          model, 400 when an assistant tool call sent back lacks its thought signature.

Introspection: ``/_fake/requests?n=K`` returns a JSON list of the last K (default: all)
records ``{"path", "headers" (lowercased), "body" (parsed JSON, else text), "received_at"}``
newest last (200 kept); ``POST /_fake/reset`` clears them, the counters, the disconnects
and the fail_first counts; ``/_fake/stats`` returns ``{"requests",
"open", "connections", "disconnects": [{"at", "during", "events_sent"}], "clock"}``;
times are ``time.monotonic()`` (system-wide on Linux). A disconnect is a client that
went away before its response completed; the handler is cancelled by aiohttp
(``handler_cancellation=True``) the moment the connection is lost, so ``at`` is taken
within milliseconds of the close.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import secrets
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

__all__ = [
    "CHAT_PATHS",
    "GEMINI_REJECTED_FIELDS",
    "REFUSAL_TEXT",
    "TOOL_ARGUMENTS",
    "FakeUpstream",
    "main",
    "parse_directives",
    "reply_text",
    "start",
    "token",
    "usage_for",
]

CHAT_PATHS = frozenset(
    {"/v1/chat/completions", "/v1beta/openai/chat/completions", "/chat/completions"}
)
GEMINI_REJECTED_FIELDS = frozenset(
    {
        "logit_bias",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
        "user",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
    }
)
SYSTEM_FINGERPRINT = "fp_fake123"
TOOL_CALL_ID = "call_fake1"
THOUGHT_SIGNATURE = "EjQKMgG+Pvb7c2lnbmF0dXJlLW9mLXRoZS1mYWtlLXVwc3RyZWFt"
TOOL_ARGUMENTS = '{"city": "Tashkent"}'
TOOL_ARGUMENT_PIECES = ('{"city', '": "Tash', "kent", '"}')
REFUSAL_TEXT = "I can't help with that."
HANG_MAX = 300.0
MAX_BODY = 64 * 1024 * 1024
RECORDS_KEPT = 200

_DIRECTIVE = re.compile(r"\[\[fake:([^\]]*)\]\]")
_INT_KEYS = frozenset(
    {"status", "cut", "malformed", "chunks", "size", "error_event", "fail_first", "after",
     "content_filter", "refusal", "thinking", "calls", "no_id", "usage", "spaced", "honor_max"}
)
_FLOAT_KEYS = frozenset({"delay", "think"})
_STR_KEYS = frozenset({"hang", "echo", "key", "mode"})
_MODES = ("openai", "gemini")

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "forbidden", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    429: ("rate_limit_error", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "overloaded", "The engine is currently overloaded."),
    504: ("server_error", None, "The upstream timed out."),
}

_MALFORMED_EVENT = b"data: {not json\n\n"
_ERROR_EVENT = b'data: {"error": {"message": "upstream exploded", "type": "server_error"}}\n\n'
_DONE_EVENT = b"data: [DONE]\n\n"
_JSON_CT = "application/json"


# ---------------------------------------------------------------- pure helpers


def token(i: int, chunk_size: int = 1) -> str:
    """Token ``i`` of every reply."""
    return f"t{i}" + "x" * (chunk_size - 1) + " "


def reply_text(chunks: int = 8, chunk_size: int = 1) -> str:
    """The plain reply for ``chunks`` tokens of ``chunk_size``."""
    return "".join(token(i, chunk_size) for i in range(chunks))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or ""
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def usage_for(body: dict, n_chunks: int) -> dict:
    """Usage the server reports for ``body`` answered with ``n_chunks`` chunks per choice."""
    chars = 0
    for m in body.get("messages") or ():
        if isinstance(m, dict):
            chars += len(_text_of(m.get("content")))
    n = body.get("n")
    n = n if isinstance(n, int) and n > 1 else 1
    prompt = 1 + chars // 4
    completion = n_chunks * n
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def parse_directives(text: str) -> dict:
    """Parse every ``[[fake:k=v,...]]`` in ``text`` into a dict of typed values."""
    out: dict[str, Any] = {}
    for group in _DIRECTIVE.findall(text):
        for item in group.split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip() or "1"
            if key in _INT_KEYS:
                out[key] = int(value)
            elif key in _FLOAT_KEYS:
                out[key] = float(value)
            elif key in _STR_KEYS:
                out[key] = value
            else:
                raise ValueError(f"unknown fake directive {key!r}")
    return out


def _last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _first_system_text(messages: list) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            return _text_of(m.get("content"))
    return ""


def _count_images(messages: list) -> int:
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    n += 1
    return n


def _split(text: str, n: int) -> list[str]:
    """``text`` cut into at most ``n`` non-empty consecutive pieces."""
    if not text:
        return []
    n = max(1, n)
    step = -(-len(text) // n)
    return [text[i:i + step] for i in range(0, len(text), step)]


def _tool_name(body: dict, user_text: str) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return name
    elif choice != "required" and ("call a tool" not in user_text.lower() or _answers_a_call(body)):
        return None
    first = tools[0] if isinstance(tools[0], dict) else {}
    return (first.get("function") or {}).get("name") or first.get("name") or "tool"


def _answers_a_call(body: dict) -> bool:
    """Whether the conversation ends with a tool's result: the model's turn after its call."""
    messages = body.get("messages")
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def _logprob_entry(tok: str, top: int) -> dict:
    alts = [{"token": tok, "logprob": -0.1, "bytes": list(tok.encode())}]
    for j in range(1, top):
        alt = f"alt{j}"
        alts.append({"token": alt, "logprob": -1.0 - j, "bytes": list(alt.encode())})
    return {"token": tok, "logprob": -0.1, "bytes": list(tok.encode()),
            "top_logprobs": alts[:top]}


def _error_body(mode: str, status: int, message: str, *, param: str | None = None,
                type_: str | None = None, code: str | None = None) -> bytes:
    if mode == "gemini":
        gstatus = _GEMINI_STATUS.get(status) or (
            "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        doc = [{"error": {"code": status, "message": message, "status": gstatus}}]
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    dtype, dcode, _ = _OPENAI_ERRORS.get(status) or (
        ("server_error" if status >= 500 else "invalid_request_error"), None, "")
    return orjson.dumps({"error": {"message": message, "type": type_ or dtype,
                                   "param": param, "code": code or dcode}})


def _new_id(mode: str) -> str:
    if mode == "gemini":
        return secrets.token_urlsafe(18)[:23]
    return "chatcmpl-" + secrets.token_urlsafe(21)[:28]


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class _Progress:
    __slots__ = ("phase", "events", "aborted", "response")

    def __init__(self) -> None:
        self.phase = "headers"
        self.events = 0
        self.aborted = False
        self.response: web.StreamResponse | None = None


class _State:
    """Per-server memory: request records, counters, disconnects, fail_first counts."""

    def __init__(self) -> None:
        self.records: collections.deque = collections.deque(maxlen=RECORDS_KEPT)
        self.total = 0
        self.open = 0
        self.disconnects: collections.deque = collections.deque(maxlen=1000)
        self.fail_counts: dict[str, int] = {}

    def reset(self) -> None:
        self.records.clear()
        self.total = 0
        self.disconnects.clear()
        self.fail_counts.clear()


# ---------------------------------------------------------------- the server


class FakeUpstream:
    """One fake provider server; build with :func:`start`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, mode: str = "openai", *,
                 chunks: int = 8, chunk_size: int = 1, delay: float = 0.0,
                 think: float = 0.0) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self.host, self.port, self.mode = host, port, mode
        self.chunks, self.chunk_size = int(chunks), int(chunk_size)
        self.delay, self.think = float(delay), float(think)
        self.state = _State()
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._reply_cache: dict[tuple[int, int], list[str]] = {}

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def start(self) -> FakeUpstream:
        self._server = web.Server(
            self._handle, request_factory=self._make_request,
            handler_cancellation=True, access_log=None,
        )
        self._runner = web.ServerRunner(self._server, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_request(self, message, payload, protocol, writer, task) -> BaseRequest:
        return BaseRequest(message, payload, protocol, writer, task, protocol._loop,
                           client_max_size=MAX_BODY)

    # -- introspection

    def requests(self, n: int | None = None) -> list[dict]:
        """The last ``n`` request records, newest last."""
        records = list(self.state.records)
        return records if n is None else (records[-n:] if n > 0 else [])

    def stats(self) -> dict:
        s = self.state
        return {
            "requests": s.total,
            "open": s.open,
            "connections": len(self._server.connections) if self._server else 0,
            "disconnects": list(s.disconnects),
            "clock": time.monotonic(),
        }

    def reset(self) -> None:
        self.state.reset()

    # -- dispatch

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        path = request.path
        if path in CHAT_PATHS:
            if request.method != "POST":
                return self._error(self.mode, 405, f"Method {request.method} not allowed.")
            return await self._chat(request, path)
        if path.startswith("/_fake/"):
            return self._introspect(request, path)
        return self._error(self.mode, 404, f"Unknown path {path}.", code="not_found")

    def _introspect(self, request: BaseRequest, path: str) -> web.Response:
        if path == "/_fake/requests" and request.method == "GET":
            raw_n = request.query.get("n")
            data: Any = self.requests(int(raw_n) if raw_n else None)
        elif path == "/_fake/stats" and request.method == "GET":
            data = self.stats()
        elif path == "/_fake/reset" and request.method == "POST":
            self.reset()
            data = {"ok": True}
        else:
            return self._error(self.mode, 404, f"Unknown path {path}.", code="not_found")
        return web.Response(body=orjson.dumps(data), headers={"Content-Type": _JSON_CT})

    def _error(self, mode: str, status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> web.Response:
        headers = {"Content-Type": _JSON_CT, "server": "fake-provider",
                   "x-request-id": "req_upstream" + secrets.token_hex(8)}
        if status == 429:
            headers["retry-after"] = "1"
        return web.Response(status=status, headers=headers,
                            body=_error_body(mode, status, message, param=param, code=code))

    async def _chat(self, request: BaseRequest, path: str) -> web.StreamResponse:
        state = self.state
        state.total += 1
        state.open += 1
        progress = _Progress()
        try:
            return await self._chat_inner(request, path, progress)
        except asyncio.CancelledError:
            if not progress.aborted:
                self._record_disconnect(progress)
            raise
        except ConnectionError:
            if not progress.aborted:
                self._record_disconnect(progress)
            return progress.response or web.Response(status=499)
        finally:
            state.open -= 1

    def _record_disconnect(self, progress: _Progress) -> None:
        self.state.disconnects.append(
            {"at": time.monotonic(), "during": progress.phase, "events_sent": progress.events})

    async def _chat_inner(self, request: BaseRequest, path: str,
                          progress: _Progress) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.state.records.append({
            "path": path, "headers": headers,
            "body": body if body is not None else raw.decode("utf-8", "replace"),
            "received_at": time.monotonic(),
        })

        mode = self.mode
        messages = body.get("messages") if isinstance(body, dict) else None
        directives: dict = {}
        user_text = ""
        if isinstance(messages, list):
            user_text = _last_user_text(messages)
            if "[[fake:" in user_text:
                try:
                    directives = parse_directives(user_text)
                except ValueError as exc:
                    return self._error(mode, 400, f"Bad fake directive: {exc}")
                mode = directives.get("mode", mode)
                if mode not in _MODES:
                    return self._error(self.mode, 400, f"Unknown mode {mode!r}.")

        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._error(mode, 401, "Missing bearer authentication in header.")
        if not isinstance(body, dict):
            return self._error(mode, 400, "We could not parse the JSON body of your request.")
        try:
            self._validate(mode, body, messages)
        except _BadRequest as exc:
            return self._error(mode, 400, exc.message, param=exc.param)

        hang = directives.get("hang")
        if hang == "headers":
            await asyncio.sleep(HANG_MAX)
            return self._error(mode, 504, "Hung for too long.")

        think = directives.get("think", self.think)
        if think > 0:
            await asyncio.sleep(think)

        if "fail_first" in directives:
            key = str(directives.get("key", ""))
            seen = self.state.fail_counts.get(key, 0)
            if seen < directives["fail_first"]:
                self.state.fail_counts[key] = seen + 1
                return self._error(mode, 503, "The service is temporarily unavailable.")

        status = directives.get("status")
        if status is not None and status >= 400:
            model = body.get("model")
            if status == 404:
                msg = f"The model `{model}` does not exist or you do not have access to it."
            else:
                msg = (_OPENAI_ERRORS.get(status) or (None, None, f"Upstream error {status}."))[2]
            return self._error(mode, status, msg)

        plan = self._plan(mode, body, raw, messages, user_text, directives)
        if body.get("stream") is True:
            return await self._stream(request, plan, directives, progress)
        return await self._complete(request, plan, directives, progress)

    def _validate(self, mode: str, body: dict, messages: Any) -> None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise _BadRequest("you must provide a model parameter", "model")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty array", "messages")
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
            raise _BadRequest("n must be an integer between 1 and 128", "n")
        top = body.get("top_logprobs")
        if top is not None and (
                not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20):
            raise _BadRequest("top_logprobs must be an integer between 0 and 20", "top_logprobs")
        if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
            raise _BadRequest("stream_options must be an object", "stream_options")
        if mode == "gemini" and body["model"].startswith("gemini-3"):
            for i, m in enumerate(messages):
                for call in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
                    google = ((call.get("extra_content") or {}).get("google") or {})
                    if not google.get("thought_signature"):
                        raise _BadRequest(
                            "Function call is missing a thought_signature in functionCall parts. "
                            f"Additional data, function call `default_api:{(call.get('function') or {}).get('name')}` , "
                            f"position {i + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures "
                            "for more details.")
        if mode == "gemini":
            for field in body:
                if field in GEMINI_REJECTED_FIELDS:
                    raise _BadRequest(
                        f'Invalid JSON payload received. Unknown name "{field}": '
                        "Cannot find field.", field)

    # -- response planning

    def _plan(self, mode: str, body: dict, raw: bytes, messages: list, user_text: str,
              d: dict) -> dict:
        chunks = max(0, d.get("chunks", self.chunks))
        size = max(1, d.get("size", self.chunk_size))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        stopped = bool(d.get("honor_max")) and isinstance(limit, int) and 0 < limit < chunks
        if stopped:
            chunks = limit
        plan: dict[str, Any] = {
            "mode": mode,
            "id": _new_id(mode),
            "created": int(time.time()),
            "model": body["model"],
            "n": body.get("n") or 1,
            "chunks": chunks,
            "delay": max(0.0, d.get("delay", self.delay)),
            "usage": usage_for(body, chunks),
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage")) and d.get("usage", 1) != 0,
            "logprobs": body.get("logprobs") is True,
            "top_logprobs": body.get("top_logprobs") or 0,
        }
        if d.get("refusal"):
            plan["kind"], plan["finish"] = "refusal", "stop"
            plan["pieces"] = _split_words(REFUSAL_TEXT)
            return plan
        if d.get("content_filter"):
            plan["kind"], plan["finish"], plan["pieces"] = "text", "content_filter", []
            return plan
        plan["thinking"] = max(0, d.get("thinking", 0))
        plan["no_id"] = bool(d.get("no_id"))
        tool = _tool_name(body, user_text)
        if tool is not None:
            plan["kind"], plan["finish"], plan["tool"] = "tool", "tool_calls", tool
            plan["calls"] = max(1, d.get("calls", 1))
            plan["pieces"] = list(TOOL_ARGUMENT_PIECES)
            return plan
        plan["kind"], plan["finish"] = "text", "length" if stopped else "stop"
        echo = d.get("echo")
        if echo == "system":
            plan["pieces"] = _split(_first_system_text(messages), chunks)
            return plan
        if echo == "body":
            plan["pieces"] = _split(raw.decode("utf-8", "replace"), chunks)
            return plan
        key = (chunks, size)
        tokens = self._reply_cache.get(key)
        if tokens is None:
            tokens = self._reply_cache[key] = [token(i, size) for i in range(chunks)]
        images = _count_images(messages)
        if images:
            prefix = f"saw {images} image(s) "
            tokens = [prefix + tokens[0], *tokens[1:]] if tokens else [prefix]
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
            tokens = _split(orjson.dumps({"answer": "".join(tokens)}).decode(), chunks)
        plan["pieces"] = tokens
        return plan

    # -- non-stream

    def _headers(self, plan: dict, content_type: str) -> dict:
        return {"Content-Type": content_type, "server": "fake-provider",
                "x-request-id": "req_upstream" + secrets.token_hex(12),
                "openai-model": plan["model"]}

    def _completion_bytes(self, plan: dict) -> bytes:
        if plan["mode"] == "gemini":
            return _gemini_completion(plan)
        kind, pieces = plan["kind"], plan["pieces"]
        if kind == "tool":
            message: dict = {"role": "assistant", "content": None, "tool_calls": [{
                "id": _call_id(TOOL_CALL_ID, i), "type": "function",
                "function": {"name": plan["tool"], "arguments": TOOL_ARGUMENTS}}
                for i in range(plan["calls"])], "refusal": None}
        elif kind == "refusal":
            message = {"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}
        else:
            message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        logprobs = None
        if plan["logprobs"] and kind == "text":
            top = plan["top_logprobs"]
            logprobs = {"content": [_logprob_entry(p, top) for p in pieces], "refusal": None}
        finish = plan["finish"]
        choices = [{"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
                   for i in range(plan["n"])]
        usage = dict(plan["usage"])
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        return orjson.dumps({
            "id": plan["id"], "object": "chat.completion", "created": plan["created"],
            "model": plan["model"], "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices, "usage": usage})

    async def _complete(self, request: BaseRequest, plan: dict, d: dict,
                        progress: _Progress) -> web.StreamResponse:
        wait = plan["delay"] * plan["chunks"]
        if wait > 0:
            await asyncio.sleep(wait)
        data = self._completion_bytes(plan)
        headers = self._headers(plan, _JSON_CT)
        hang, cut = d.get("hang"), d.get("cut")
        if hang == "flood":
            return await self._flood(request, headers, progress)
        if hang != "body" and cut is None:
            return web.Response(body=data, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(data)
        progress.response = resp
        await resp.prepare(request)
        progress.phase = "body"
        if hang == "body":
            await asyncio.sleep(HANG_MAX)
            await resp.write(data)
            return resp
        await resp.write(data[: len(data) // 2])
        return await self._abort(request, progress)

    async def _flood(self, request: BaseRequest, headers: dict, progress: _Progress) -> web.StreamResponse:
        """A JSON body that starts and never ends: a string that grows until the client leaves."""
        resp = web.StreamResponse(headers=headers)
        progress.response = resp
        await resp.prepare(request)
        progress.phase = "body"
        await resp.write(b'{"choices": [{"message": {"content": "')
        piece = b"x" * 65536
        deadline = time.monotonic() + HANG_MAX
        while time.monotonic() < deadline:
            await resp.write(piece)
        return resp

    async def _abort(self, request: BaseRequest, progress: _Progress) -> web.StreamResponse:
        """Close the connection under the response; aiohttp then cancels this handler."""
        progress.aborted = True
        transport = request.transport
        if transport is not None:
            transport.close()  # flushes what was written, then FIN: no terminator, no [DONE]
        await asyncio.sleep(5)
        assert progress.response is not None
        return progress.response

    # -- stream

    def _events(self, plan: dict) -> list[bytes]:
        if plan["mode"] == "gemini":
            return _gemini_events(plan)
        n, kind, pieces = plan["n"], plan["kind"], plan["pieces"]
        gemini = False
        model = plan["model"]
        head = b"".join((
            b'data: {"id":', orjson.dumps(plan["id"]),
            b',"object":"chat.completion.chunk","created":', str(plan["created"]).encode(),
            b',"model":', orjson.dumps(model),
            b"" if gemini else b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"',
            b',"choices":',
        ))
        openai_usage = not gemini and plan["include_usage"]
        tail = b',"usage":null}\n\n' if openai_usage else b"}\n\n"
        dumps = orjson.dumps

        def event(choice: dict) -> bytes:
            return head + dumps([choice]) + tail

        with_lp = plan["logprobs"] and kind == "text"
        top = plan["top_logprobs"]
        events: list[bytes] = []
        for c in range(n):
            if kind == "tool":
                first = {"role": "assistant", "content": None, "tool_calls": [{
                    "index": i, "id": _call_id(TOOL_CALL_ID, i), "type": "function",
                    "function": {"name": plan["tool"], "arguments": ""}} for i in range(plan["calls"])],
                    "refusal": None}
            elif kind == "refusal":
                first = {"role": "assistant", "content": None, "refusal": ""}
            else:
                first = {"role": "assistant", "content": "", "refusal": None}
            lp0 = {"content": [], "refusal": None} if with_lp else None
            events.append(event({"index": c, "delta": first, "logprobs": lp0,
                                 "finish_reason": None}))
        for p in pieces:
            if kind == "tool":
                delta: dict = {"tool_calls": [{"index": i, "function": {"arguments": p}}
                                              for i in range(plan["calls"])]}
            elif kind == "refusal":
                delta = {"refusal": p}
            else:
                delta = {"content": p}
            lp = {"content": [_logprob_entry(p, top)], "refusal": None} if with_lp else None
            for c in range(n):
                events.append(event({"index": c, "delta": delta, "logprobs": lp,
                                     "finish_reason": None}))
        for c in range(n):
            final = {"index": c, "delta": {}, "logprobs": None, "finish_reason": plan["finish"]}
            if gemini and c == n - 1:
                events.append(head + dumps([final]) + b',"usage":' + dumps(plan["usage"])
                              + b"}\n\n")
            else:
                events.append(event(final))
        if openai_usage:
            usage = dict(plan["usage"])
            usage["prompt_tokens_details"] = {"cached_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": 0}
            events.append(head + b'[],"usage":' + dumps(usage) + b"}\n\n")
        events.append(_DONE_EVENT)
        return events

    async def _stream(self, request: BaseRequest, plan: dict, d: dict,
                      progress: _Progress) -> web.StreamResponse:
        events = self._events(plan)
        if d.get("spaced"):
            events = [_spaced(e) for e in events]
        gemini = plan["mode"] == "gemini"
        ctype = "text/event-stream" if gemini else "text/event-stream; charset=utf-8"
        headers = self._headers(plan, ctype)
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        progress.response = resp
        await resp.prepare(request)
        progress.phase = "body"

        cut, malformed, error_at = d.get("cut"), d.get("malformed"), d.get("error_event")
        hang_at = d.get("after", 1) if d.get("hang") == "body" else None
        delay = plan["delay"]
        last = len(events) - 1
        write = resp.write
        for i, ev in enumerate(events):
            if i == malformed:
                await write(_MALFORMED_EVENT)
                progress.events += 1
            if i == error_at:
                await write(_ERROR_EVENT)
                progress.events += 1
                await resp.write_eof()
                return resp
            if i == cut:
                return await self._abort(request, progress)
            if i == hang_at:
                await asyncio.sleep(HANG_MAX)
            if delay > 0 and 0 < i < last:
                await asyncio.sleep(delay)
            await write(ev)
            progress.events += 1
        await resp.write_eof()
        return resp


def _call_id(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def _spaced(event: bytes) -> bytes:
    """An SSE event whose JSON is rewritten with Python's default separators, without a null usage."""
    data = event[6:-2]
    if data == b"[DONE]":
        return event
    doc = orjson.loads(data)
    if "usage" in doc and doc["usage"] is None:
        del doc["usage"]
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _gemini_usage(plan: dict, final: bool) -> dict:
    usage = plan["usage"]
    if not final:
        return {"completion_tokens": 0, "prompt_tokens": usage["prompt_tokens"],
                "total_tokens": usage["prompt_tokens"]}
    return {"completion_tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"],
            "total_tokens": usage["total_tokens"] + plan["thinking"]}


def _gemini_calls(plan: dict, stream: bool) -> list[dict]:
    """Gemini's tool calls: whole, in key order, with a thought signature and no index."""
    return [{"extra_content": {"google": {"thought_signature": THOUGHT_SIGNATURE}},
             "function": {"arguments": TOOL_ARGUMENTS, "name": plan["tool"]},
             "id": _call_id(TOOL_CALL_ID, i), "type": "function"} for i in range(plan["calls"])]


def _gemini_completion(plan: dict) -> bytes:
    kind = plan["kind"]
    if kind == "tool":
        message: dict = {"role": "assistant", "tool_calls": _gemini_calls(plan, False)}
    else:
        text = REFUSAL_TEXT if kind == "refusal" else "".join(plan["pieces"])
        message = {"content": text, "role": "assistant"}
    choices = [{"finish_reason": plan["finish"], "index": i, "message": message} for i in range(plan["n"])]
    doc = {"choices": choices, "created": plan["created"], "id": plan["id"], "model": plan["model"],
           "object": "chat.completion", "usage": _gemini_usage(plan, True)}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _gemini_events(plan: dict) -> list[bytes]:
    """A Gemini stream: one chunk per piece (the tool call whole in one), the last content chunk
    carrying finish_reason and the final usage, then [DONE]."""
    kind, n = plan["kind"], plan["n"]
    include_usage = plan["include_usage"]
    if kind == "tool":
        deltas = [{"role": "assistant", "tool_calls": _gemini_calls(plan, True)}]
    else:
        pieces = [REFUSAL_TEXT] if kind == "refusal" else (plan["pieces"] or [""])
        deltas = [{"content": p, "role": "assistant"} for p in pieces]
    events = []
    for i, delta in enumerate(deltas):
        last = i == len(deltas) - 1
        choices = []
        for c in range(n):
            choice: dict = {"delta": delta, "index": c}
            if last:
                choice["finish_reason"] = plan["finish"]
            choices.append(choice)
        chunk: dict = {"choices": choices, "created": plan["created"], "model": plan["model"],
                       "object": "chat.completion.chunk"}
        if not plan["no_id"]:
            chunk["id"] = plan["id"]
        if include_usage:
            chunk["usage"] = _gemini_usage(plan, last)
        events.append(b"data: " + orjson.dumps(chunk, option=orjson.OPT_SORT_KEYS) + b"\n\n")
    events.append(_DONE_EVENT)
    return events


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


# ---------------------------------------------------------------- entry points


async def start(host: str = "127.0.0.1", port: int = 0, mode: str = "openai", *,
                chunks: int = 8, chunk_size: int = 1, delay: float = 0.0,
                think: float = 0.0) -> FakeUpstream:
    """Start a fake upstream on ``host:port`` (0 = a free port) in the running loop."""
    server = FakeUpstream(host, port, mode, chunks=chunks, chunk_size=chunk_size,
                          delay=delay, think=think)
    return await server.start()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fake_upstream",
                                description="Fake OpenAI-compatible LLM provider.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--mode", choices=_MODES, default="openai")
    p.add_argument("--chunks", type=int, default=8, help="tokens per reply (default 8)")
    p.add_argument("--chunk-size", type=int, default=1, help="characters per token word")
    p.add_argument("--delay", type=float, default=0.0, help="seconds between stream chunks")
    p.add_argument("--think", type=float, default=0.0, help="seconds before response headers")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = await start(args.host, args.port, args.mode, chunks=args.chunks,
                         chunk_size=args.chunk_size, delay=args.delay, think=args.think)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    print(f"fake upstream listening on http://{args.host}:{server.port} ({args.mode})",
          flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - optional speed-up
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
