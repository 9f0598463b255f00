"""Upstream chat chunks turned into Anthropic's stream events, one read at a time.

``MessagesStream`` has the interface of the chat relay's StreamRewriter (``feed(bytes)`` → bytes to
send, ``finish()``, ``done``, ``error``, ``usage``, ``estimated_completion_tokens()``), so the
upstream client drives it the same way. Every upstream event is parsed once, put through the
provider's dialect (Gemini's tool-call numbering), and written with pre-encoded byte templates:
``message_start`` and a ``ping`` at the first chunk; per block ``content_block_start`` → deltas →
``content_block_stop`` (blocks never interleaved, every one stopped); at ``[DONE]``
``message_delta`` with the stop reason and usage, then ``message_stop``.

Vendor fields the next request must send back (Gemini's thought signatures) go out in a thinking
block whose ``signature`` carries them (``signature.py``): just before the tool_use block of the
call they came with, or, for any that came later, before ``message_delta``.
"""
from __future__ import annotations

import re
from typing import Callable

import orjson

from ..rewrite import MalformedUpstream, read_chunk
from ..sse import DONE, EventFramer, event_data
from ..usage import Usage, estimate_tokens
from . import signature
from .answer import message_id, stop_reason, token_counts, tool_use_id, usage_object

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_END = b"}}\n\n"
_TEXT_START = b',"content_block":{"type":"text","text":""}}\n\n'
_THINKING_START = b',"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
_TEXT_DELTA = b',"delta":{"type":"text_delta","text":'
_THINKING_DELTA = b',"delta":{"type":"thinking_delta","thinking":'
_SIGNATURE_DELTA = b',"delta":{"type":"signature_delta","signature":'
_JSON_DELTA = b',"delta":{"type":"input_json_delta","partial_json":'
_EMPTY_JSON = b',"delta":{"type":"input_json_delta","partial_json":""}}\n\n'


# The common chunk, content alone in one choice, in OpenAI's compact key order: its JSON string is
# copied into the text_delta as it is (a ``"`` inside a JSON string is always escaped, so these bytes
# cannot come from inside one). Anything else (Gemini's key order, usage, tool calls) is parsed.
_TEXT_CHUNK = re.compile(
    rb'"choices":\[\{"index":0,"delta":\{(?:"role":"assistant",)?"content":("(?:[^"\\]|\\.)*")\},'
    rb'"logprobs":null,"finish_reason":null\}\]'
)
_USAGE = b'"usage"'
_NULL_USAGE = b'"usage":null'


def _event(name: bytes, doc: dict) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


class MessagesStream:
    """Turns upstream chat SSE bytes into the Messages events a caller receives."""

    __slots__ = (
        "dialect", "completion_id", "tool_calls", "usage", "done", "error", "events", "text_chars",
        "_model", "_request_id", "_estimate", "_prompt_estimate", "_framer", "_started", "_open", "_blocks",
        "_prefix", "_calls", "_current", "_finish", "_tool_use", "_refusal", "_carried", "_extra", "_thought",
    )

    def __init__(self, public_model: str, request_id: str, dialect, estimate: Callable[[int], Usage],
                 prompt_estimate: int = 0) -> None:
        """``estimate`` gives the usage billed for a completion of so many tokens when the upstream
        reports none; ``prompt_estimate`` is the input shown by message_start until it does."""
        self.dialect = dialect
        self.completion_id = "chatcmpl-" + request_id
        # Per choice: the index given to each tool call (by its id) a dialect had to number.
        self.tool_calls: dict[int, dict[str, int]] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: dict | None = None
        self.events = 0
        self.text_chars = 0
        self._model = public_model
        self._request_id = request_id
        self._estimate = estimate
        self._prompt_estimate = prompt_estimate
        self._framer = EventFramer()
        self._started = False
        # The open block: its kind ("text", "thinking", "tool") and the bytes before each delta's
        # payload; how many blocks were started.
        self._open: str | None = None
        self._prefix = b""
        self._blocks = 0
        # Tool calls by the upstream's index: their id and whether their block is over.
        self._calls: dict[int, list] = {}
        self._current: int | None = None
        self._finish: object = None
        self._tool_use = False
        self._refusal = False
        # Vendor fields not yet carried out: per tool_use id, the message's, its thought signature.
        self._carried: dict[str, dict] = {}
        self._extra: dict | None = None
        self._thought: str | None = None

    # reading

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send for the events ``chunk`` completes; an incomplete tail waits.
        Raises MalformedUpstream on an event that is not a JSON object."""
        if self.done or self.error is not None:
            return b""
        out: list[bytes] = []
        for event in self._framer.feed(chunk):
            self._one(event, out)
            if self.done or self.error is not None:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """Bytes owed when the upstream body ended: a last event sent without its blank line."""
        out: list[bytes] = []
        for event in self._framer.finish():
            if not (self.done or self.error is not None):
                self._one(event, out)
        rest = self._framer.pending()
        if rest.strip() and not (self.done or self.error is not None):
            self._one(rest.rstrip(b"\r\n") + b"\n\n", out)
        return b"".join(out)

    def estimated_completion_tokens(self) -> int:
        """Tokens of what was relayed, for a stream that ended without upstream usage."""
        return estimate_tokens(self.text_chars)

    # events

    def _one(self, event: bytes, out: list[bytes]) -> None:
        data = event_data(event)
        if data is None:
            return  # a comment or a field-only event: nothing for the caller
        if data == DONE:
            if not self._started:
                self._start(out, None)
            self._close(out)
            return
        if self._started:
            plain = _TEXT_CHUNK.search(data)
            if plain is not None and data.count(_USAGE) == data.count(_NULL_USAGE) and data.find(b'"error"') < 0:
                text = plain.group(1)
                if len(text) > 2:
                    if self._open != "text":
                        self._begin("text", out)
                    self.text_chars += len(text) - 2
                    out.append(self._prefix + text + _END)
                self.events += 1
                return
        doc, error = read_chunk(data)
        if error is not None:
            self.error = error
            return
        choices = doc.get("choices")
        self.events += 1
        usage = doc.get("usage")
        if usage is not None:
            reported = Usage.from_upstream(usage)
            if reported is not None:
                self.usage = reported
        if not self._started:
            self._start(out, self.usage)
        if type(choices) is not list or not choices:
            return
        self.dialect.chunk(doc, self)
        choice = choices[0]
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is dict:
            self._delta(delta, out)
        if type(choice) is dict and choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._stop(out)

    def _delta(self, delta: dict, out: list[bytes]) -> None:
        get = delta.get
        text = get("content")
        if text and type(text) is str:
            if self._open != "text":
                self._begin("text", out)
            self.text_chars += len(text)
            out.append(self._prefix + orjson.dumps(text) + _END)
        if len(delta) == ("content" in delta) + ("role" in delta):
            return  # the usual chunk: content alone (with the role, on Gemini's)
        reasoning = get("reasoning_content")
        if reasoning and type(reasoning) is str:
            if self._open != "thinking":
                self._begin("thinking", out)
            self.text_chars += len(reasoning)
            out.append(self._prefix + orjson.dumps(reasoning) + _END)
        refusal = get("refusal")
        if refusal and type(refusal) is str:
            self._refusal = True
            if self._open != "text":
                self._begin("text", out)
            self.text_chars += len(refusal)
            out.append(self._prefix + orjson.dumps(refusal) + _END)
        extra = get("extra_content")
        if type(extra) is dict:
            self._extra = {**(self._extra or {}), **extra}
        thought = get("thought_signature")
        if type(thought) is str and thought:
            self._thought = thought
        calls = get("tool_calls")
        if type(calls) is list:
            for call in calls:
                if type(call) is dict:
                    self._call(call, out)

    def _call(self, call: dict, out: list[bytes]) -> None:
        index = call.get("index", 0)
        function = call.get("function") if type(call.get("function")) is dict else {}
        arguments = function.get("arguments")
        known = self._calls.get(index)
        if known is None:
            tool_id = tool_use_id(self._request_id, len(self._calls))
            self._calls[index] = known = [tool_id, False]
            if type(call.get("extra_content")) is dict:
                self._carried[tool_id] = call["extra_content"]
            self._stop(out)
            self._carry(out)
            self._current = index
            self._tool_use = True
            block = {"type": "tool_use", "id": tool_id, "name": str(function.get("name") or ""), "input": {}}
            self._begin("tool", out, b',"content_block":' + orjson.dumps(block) + b"}\n\n")
            out.append(_DELTA + b"%d" % (self._blocks - 1) + _EMPTY_JSON)
        elif known[1] or index != self._current:
            raise MalformedUpstream("tool call deltas interleaved")
        elif type(call.get("extra_content")) is dict:
            self._carried[known[0]] = call["extra_content"]
        if arguments and type(arguments) is str:
            self.text_chars += len(arguments)
            out.append(self._prefix + orjson.dumps(arguments) + _END)

    # blocks

    def _start(self, out: list[bytes], usage: Usage | None) -> None:
        self._started = True
        shown = usage_object(usage) if usage is not None else usage_object(Usage(self._prompt_estimate, 0, self._prompt_estimate))
        shown["output_tokens"] = 0
        out.append(_event(b"message_start", {"type": "message_start", "message": {
            "model": self._model, "id": message_id(self._request_id), "type": "message", "role": "assistant",
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": shown,
        }}))
        out.append(PING)

    def _begin(self, kind: str, out: list[bytes], start: bytes | None = None) -> None:
        """Stop the open block and start one of ``kind`` (its content_block_start tail in ``start``)."""
        self._stop(out)
        index = b"%d" % self._blocks
        self._blocks += 1
        self._open = kind
        if kind == "text":
            out.append(_START + index + _TEXT_START)
            self._prefix = _DELTA + index + _TEXT_DELTA
        elif kind == "thinking":
            out.append(_START + index + _THINKING_START)
            self._prefix = _DELTA + index + _THINKING_DELTA
        else:
            out.append(_START + index + start)
            self._prefix = _DELTA + index + _JSON_DELTA

    def _stop(self, out: list[bytes]) -> None:
        """Stop the open block, if any (a thinking block with its signature, last)."""
        kind = self._open
        if kind is None:
            return
        index = self._blocks - 1
        if kind == "thinking":
            carrier = self._carrier()
            out.append(_DELTA + b"%d" % index + _SIGNATURE_DELTA + orjson.dumps(carrier) + _END)
        elif kind == "tool":
            self._calls[self._current][1] = True
            self._current = None
        out.append(_STOP % index)
        self._open = None

    def _carrier(self) -> str:
        """The signature that carries the vendor fields not yet sent out ("" when there are none)."""
        if not (self._carried or self._extra or self._thought):
            return ""
        carrier = signature.encode(self._carried, self._extra, self._thought)
        self._carried, self._extra, self._thought = {}, None, None
        return carrier

    def _carry(self, out: list[bytes]) -> None:
        """A thinking block of its own for vendor fields waiting to go out."""
        if self._carried or self._extra or self._thought:
            self._begin("thinking", out)
            self._stop(out)

    def _close(self, out: list[bytes]) -> None:
        """[DONE]: the last block stopped, what is owed carried, then message_delta and message_stop."""
        self._stop(out)
        self._carry(out)
        if self.usage is None:
            self.usage = self._estimate(self.estimated_completion_tokens())
        fresh, cached, output = token_counts(self.usage)
        reason = stop_reason(self._finish, self._tool_use, self._refusal)
        out.append(_event(b"message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"input_tokens": fresh, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
                      "output_tokens": output},
        }))
        out.append(MESSAGE_STOP)
        self.done = True
