"""The fake provider: an upstream double speaking OpenAI's Chat Completions (as OpenAI and as
Gemini's OpenAI-compatible endpoint send it), deterministic, steered per request by directives.
A handler (``FakeProvider(...)(request) -> MockResponse``): in process through ``MockTransport``, or
behind a socket as ``python -m bench.fake_upstream`` (bench/fake_upstream.py).

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
  hang=flood           non-stream: headers, then a body that never ends (64 KiB pieces, until
                       the client leaves, at most 300 s)
  after=<n>            events sent before ``hang=body`` stalls a stream (default 1)
  cut=<n>              stream: n events then the connection drops (no [DONE]);
                       non-stream: headers and half the body then the connection drops
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

A dropped connection is a body piece raised as ``ConnectionResetError``: in process the gateway
reads it as a transport failure, behind a socket the server closes the connection there.

Modes
  openai  error ``{"error": {"message", "type", "param", "code"}}``; stream chunks carry
          ``"service_tier":"default"`` after the model and end in ``"obfuscation"`` (other letters
          on every chunk; none when ``stream_options.include_obfuscation`` is false), as recorded.
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

Behind a socket the request's path must be one of :data:`CHAT_PATHS` (else 404) and its method
POST (else 405), and a bearer token is required (else 401); in process the target stands for both.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from typing import Any, AsyncIterator

import orjson

from app.upstream.mock import MockRequest, MockResponse

__all__ = [
    "CHAT_PATHS",
    "GEMINI_REJECTED_FIELDS",
    "MODES",
    "REFUSAL_TEXT",
    "TOOL_ARGUMENTS",
    "FakeProvider",
    "parse_directives",
    "reply_text",
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
# OpenAI ends every stream chunk with "obfuscation": letters of varying length, other on each chunk,
# unless stream_options.include_obfuscation is false (tests/conformance/recordings/openai-stream-*).
_OBFUSCATIONS = (b"pCjdYd4kX4W2q", b"DJ94I8XQj86", b"qgSSFwDBmaW", b"4xVBYer6Uy1atr", b"XxMhsMje0", b"J3eKDOHW",
                 b"6cMX", b"fi9kQktKY7", b"Ye", b"r6Uy1atr", b"SsIn2EHgbpN5hHC")
TOOL_CALL_ID = "call_fake1"
THOUGHT_SIGNATURE = "EjQKMgG+Pvb7c2lnbmF0dXJlLW9mLXRoZS1mYWtlLXVwc3RyZWFt"
TOOL_ARGUMENTS = '{"city": "Tashkent"}'
TOOL_ARGUMENT_PIECES = ('{"city', '": "Tash', "kent", '"}')
REFUSAL_TEXT = "I can't help with that."
HANG_MAX = 300.0

_DIRECTIVE = re.compile(r"\[\[fake:([^\]]*)\]\]")
_INT_KEYS = frozenset(
    {"status", "cut", "malformed", "chunks", "size", "error_event", "fail_first", "after",
     "content_filter", "refusal", "thinking", "calls", "no_id", "usage", "spaced", "honor_max"}
)
_FLOAT_KEYS = frozenset({"delay", "think"})
_STR_KEYS = frozenset({"hang", "echo", "key", "mode"})
MODES = ("openai", "gemini")

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


def _error(mode: str, status: int, message: str, *, param: str | None = None,
           code: str | None = None) -> MockResponse:
    headers = {"content-type": "application/json", "server": "fake-provider",
               "x-request-id": "req_upstream" + secrets.token_hex(8)}
    if status == 429:
        headers["retry-after"] = "1"
    return MockResponse(status, _error_body(mode, status, message, param=param, code=code), headers)


class FakeProvider:
    """The fake provider's answers, in ``mode`` with these defaults; ``reset()`` forgets the
    fail_first counts."""

    def __init__(self, mode: str = "openai", *, chunks: int = 8, chunk_size: int = 1,
                 delay: float = 0.0, think: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.chunks, self.chunk_size = int(chunks), int(chunk_size)
        self.delay, self.think = float(delay), float(think)
        self.fail_counts: dict[str, int] = {}
        self._reply_cache: dict[tuple[int, int], list[str]] = {}

    def reset(self) -> None:
        self.fail_counts.clear()

    async def __call__(self, request: MockRequest) -> MockResponse:
        path = getattr(request, "path", None)
        if path is not None and path not in CHAT_PATHS:
            return _error(self.mode, 404, f"Unknown path {path}.", code="not_found")
        method = getattr(request, "method", "POST")
        if method != "POST":
            return _error(self.mode, 405, f"Method {method} not allowed.")
        body = request.body
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
                    return _error(mode, 400, f"Bad fake directive: {exc}")
                mode = directives.get("mode", mode)
                if mode not in MODES:
                    return _error(self.mode, 400, f"Unknown mode {mode!r}.")

        headers = request.headers
        auth = headers.get("authorization") or headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _error(mode, 401, "Missing bearer authentication in header.")
        if not isinstance(body, dict):
            return _error(mode, 400, "We could not parse the JSON body of your request.")
        try:
            _validate(mode, body, messages)
        except _BadRequest as exc:
            return _error(mode, 400, exc.message, param=exc.param)

        hang = directives.get("hang")
        if hang == "headers":
            await asyncio.sleep(HANG_MAX)
            return _error(mode, 504, "Hung for too long.")

        think = directives.get("think", self.think)
        if think > 0:
            await asyncio.sleep(think)

        if "fail_first" in directives:
            key = str(directives.get("key", ""))
            seen = self.fail_counts.get(key, 0)
            if seen < directives["fail_first"]:
                self.fail_counts[key] = seen + 1
                return _error(mode, 503, "The service is temporarily unavailable.")

        status = directives.get("status")
        if status is not None and status >= 400:
            model = body.get("model")
            if status == 404:
                msg = f"The model `{model}` does not exist or you do not have access to it."
            else:
                msg = (_OPENAI_ERRORS.get(status) or (None, None, f"Upstream error {status}."))[2]
            return _error(mode, status, msg)

        raw = getattr(request, "raw", None) or orjson.dumps(body)
        plan = self._plan(mode, body, raw, messages, user_text, directives)
        if body.get("stream") is True:
            return self._stream(plan, directives)
        return await self._complete(plan, directives)

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
            "obfuscation": (body.get("stream_options") or {}).get("include_obfuscation") is not False,
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

    async def _complete(self, plan: dict, d: dict) -> MockResponse:
        wait = plan["delay"] * plan["chunks"]
        if wait > 0:
            await asyncio.sleep(wait)
        data = self._completion_bytes(plan)
        headers = _headers(plan, "application/json")
        hang, cut = d.get("hang"), d.get("cut")
        if hang == "flood":
            return MockResponse(200, _flood(), headers)
        if hang == "body":
            return MockResponse(200, _stalled(data), {**headers, "content-length": str(len(data))})
        if cut is not None:
            return MockResponse(200, _cut_short(data), {**headers, "content-length": str(len(data))})
        return MockResponse(200, data, headers)

    # -- stream

    def _events(self, plan: dict) -> list[bytes]:
        if plan["mode"] == "gemini":
            return _gemini_events(plan)
        n, kind, pieces = plan["n"], plan["kind"], plan["pieces"]
        head = b"".join((
            b'data: {"id":', orjson.dumps(plan["id"]),
            b',"object":"chat.completion.chunk","created":', str(plan["created"]).encode(),
            b',"model":', orjson.dumps(plan["model"]),
            b',"service_tier":"default"',
            b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"',
            b',"choices":',
        ))
        include_usage = plan["include_usage"]
        usage_null = b',"usage":null' if include_usage else b""
        dumps = orjson.dumps
        obfuscations = itertools.cycle(_OBFUSCATIONS) if plan["obfuscation"] else None

        def end() -> bytes:
            return b',"obfuscation":"' + next(obfuscations) + b'"}\n\n' if obfuscations is not None else b"}\n\n"

        def event(choice: dict) -> bytes:
            return head + dumps([choice]) + usage_null + end()

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
            events.append(event({"index": c, "delta": {}, "logprobs": None, "finish_reason": plan["finish"]}))
        if include_usage:
            usage = dict(plan["usage"])
            usage["prompt_tokens_details"] = {"cached_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": 0}
            events.append(head + b'[],"usage":' + dumps(usage) + end())
        events.append(_DONE_EVENT)
        return events

    def _stream(self, plan: dict, d: dict) -> MockResponse:
        events = self._events(plan)
        if d.get("spaced"):
            events = [_spaced(e) for e in events]
        ctype = "text/event-stream" if plan["mode"] == "gemini" else "text/event-stream; charset=utf-8"
        headers = _headers(plan, ctype)
        headers["cache-control"] = "no-cache"
        cut, malformed, error_at = d.get("cut"), d.get("malformed"), d.get("error_event")
        hang_at = d.get("after", 1) if d.get("hang") == "body" else None
        delay = plan["delay"]
        if cut is None and malformed is None and error_at is None and hang_at is None and delay <= 0:
            return MockResponse(200, events, headers)
        return MockResponse(200, _paced(events, delay, cut, malformed, error_at, hang_at), headers)


def _headers(plan: dict, content_type: str) -> dict:
    return {"content-type": content_type, "server": "fake-provider",
            "x-request-id": "req_upstream" + secrets.token_hex(12), "openai-model": plan["model"]}


async def _paced(events: list[bytes], delay: float, cut: int | None, malformed: int | None,
                 error_at: int | None, hang_at: int | None) -> AsyncIterator[bytes]:
    """A stream's events with its directives: pauses, a malformed event, an error event that ends
    it, a stall, or the connection dropped."""
    last = len(events) - 1
    for i, ev in enumerate(events):
        if i == malformed:
            yield _MALFORMED_EVENT
        if i == error_at:
            yield _ERROR_EVENT
            return
        if i == cut:
            raise ConnectionResetError("the fake provider dropped the connection")
        if i == hang_at:
            await asyncio.sleep(HANG_MAX)
        if delay > 0 and 0 < i < last:
            await asyncio.sleep(delay)
        yield ev


async def _stalled(data: bytes) -> AsyncIterator[bytes]:
    await asyncio.sleep(HANG_MAX)
    yield data


async def _cut_short(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    raise ConnectionResetError("the fake provider dropped the connection")


async def _flood() -> AsyncIterator[bytes]:
    """A JSON body that starts and never ends: a string that grows until the client leaves."""
    yield b'{"choices": [{"message": {"content": "'
    piece = b"x" * 65536
    deadline = time.monotonic() + HANG_MAX
    while time.monotonic() < deadline:
        yield piece
        await asyncio.sleep(0)


def _validate(mode: str, body: dict, messages: Any) -> None:
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
        for name in body:
            if name in GEMINI_REJECTED_FIELDS:
                raise _BadRequest(
                    f'Invalid JSON payload received. Unknown name "{name}": '
                    "Cannot find field.", name)


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


