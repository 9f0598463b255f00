"""Google's OpenAI-compatible endpoint for Gemini, and how its answers differ from OpenAI's.

As recorded (tests/conformance/recordings; README there cites each source):
- compact JSON with keys in alphabetical order, so a tool call's ``"id"`` comes before the chunk's;
- no top-level ``id`` on some models' chunks (and no ``created`` on some), ``model`` the bare name;
- ``role`` in every delta, no ``finish_reason`` key until the last content chunk;
- a streamed tool call whole in one chunk, ``delta.tool_calls[]`` without ``index``, its ``id``
  ``""`` or short, with ``extra_content.google.thought_signature`` that the next request must carry
  back (Gemini 3 refuses the call otherwise); 2.5 models put ``extra_content`` and a top-level
  ``thought_signature`` on the assistant message;
- with ``include_usage``, a running usage on every chunk and the final one on the last content
  chunk, no chunk of its own; ``total_tokens`` counts thinking tokens beyond prompt + completion;
- error bodies a JSON list ``[{"error": {"code", "message", "status"}}]``; an invalid key is a 400.
The rewriter, through ``GeminiDialect`` below, gives every tool-call delta an ``index`` (stable per
call) and its first an ``id`` and ``type``, adds ``finish_reason: null``, moves the usage into its
own chunk only when asked, and lets vendor fields pass both ways untouched.
"""
from __future__ import annotations

from ...wire.rewrite import Dialect, StreamRewriter
from .base import Provider


class GeminiDialect(Dialect):
    markers = (b'"tool_calls"',)

    def chunk(self, doc: dict, stream: StreamRewriter) -> bool:
        choices = doc.get("choices")
        if type(choices) is not list:
            return False
        changed = False
        for choice in choices:
            if type(choice) is not dict:
                continue
            if "finish_reason" not in choice:
                choice["finish_reason"] = None
                changed = True
            delta = choice.get("delta")
            calls = delta.get("tool_calls") if type(delta) is dict else None
            if type(calls) is list:
                seen = stream.tool_calls.setdefault(choice.get("index", 0), {})
                delta["tool_calls"] = [_numbered(call, seen, stream.completion_id) for call in calls]
                changed = True
        return changed

    def completion(self, doc: dict, completion_id: str) -> None:
        for choice in doc.get("choices") or ():
            message = choice.get("message") if type(choice) is dict else None
            calls = message.get("tool_calls") if type(message) is dict else None
            if type(calls) is list:
                for i, call in enumerate(calls):
                    if type(call) is dict:
                        call.setdefault("type", "function")
                        if not call.get("id"):
                            call["id"] = _call_id(completion_id, i)


def _call_id(completion_id: str, n: int) -> str:
    return f"call_{completion_id[-12:]}_{n}"


def _numbered(call: object, seen: dict[str, int], completion_id: str) -> object:
    """A tool-call delta with an integer ``index`` stable for its call, and its id and type."""
    if type(call) is not dict:
        return call
    if type(call.get("index")) is int:
        if call.get("id"):
            seen.setdefault(call["id"], call["index"])
        return call
    call_id = call.get("id") or _call_id(completion_id, len(seen))
    index = seen.get(call_id)
    if index is None:
        index = seen[call_id] = len(seen)
        return {"index": index, **call, "id": call_id, "type": call.get("type") or "function"}
    return {"index": index, **call}


class GeminiProvider(Provider):
    name = "gemini"
    dialect = GeminiDialect()
    foreign_fields = ()

    def error_status(self, status: int, raw: bytes) -> int:
        # An invalid API key (ours, not the caller's) comes back as 400 INVALID_ARGUMENT.
        return 401 if status == 400 and b"API_KEY_INVALID" in raw else status

    def body(self, request: dict, target, guard: dict, stream: bool) -> bytes:
        options = request.get("stream_options")
        if options and options.get("include_obfuscation") is not None:
            request = {**request, "stream_options": {"include_usage": options.get("include_usage")}}
        return super().body(request, target, guard, stream)
