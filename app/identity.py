"""What callers see of who answered: the guard prompt, and upstream answers with identity rewritten.

Upstream ids, model names and ``system_fingerprint`` never reach a caller. Streams are rewritten
event by event at the byte level; only the first event and the usage event are parsed as JSON.
"""
from __future__ import annotations

import re
from typing import Iterable

import orjson

from .metering import Usage
from .sse import DONE, EventFramer, event_data, format_event

_FAMILIES = re.compile(
    r"\b(?:models/)?(?:gpt-[\w.\-]+|gemini-[\w.\-]+|o[1345](?:-[\w.\-]+)?|claude-[\w.\-]+|chatgpt-[\w.\-]+)",
    re.IGNORECASE,
)
_URLS = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def scrub(text: str, names: Iterable[str] = ()) -> str:
    """Remove upstream model names, hosts and URLs from a message meant for a caller."""
    for name in names:
        if name:
            text = text.replace(name, "the model")
    text = _URLS.sub("[redacted]", text)
    return _FAMILIES.sub("the model", text)


class MalformedUpstream(ValueError):
    """The upstream sent something that is not a chat completion."""


def rewrite_completion(raw: bytes, public_model: str, completion_id: str) -> tuple[bytes, Usage | None]:
    """A non-stream upstream answer with identity fields replaced; and its usage."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedUpstream("not JSON") from None
    if type(doc) is not dict or type(doc.get("choices")) is not list:
        raise MalformedUpstream("no choices")
    doc["id"] = completion_id
    doc["model"] = public_model
    doc["object"] = "chat.completion"
    doc.pop("system_fingerprint", None)
    return orjson.dumps(doc), Usage.from_upstream(doc.get("usage"))


_FIELDS = {
    key: re.compile(rb'"' + key.encode() + rb'"\s*:\s*"((?:[^"\\]|\\.)*)"')
    for key in ("id", "model", "system_fingerprint")
}


def _top_level_token(data: bytes, key: str, value: object) -> bytes | None:
    """The exact bytes of ``"key":"value"`` as the upstream wrote them in one event."""
    if type(value) is not str:
        return None
    match = _FIELDS[key].search(data)
    if match is None or orjson.loads(b'"' + match.group(1) + b'"') != value:
        return None
    return match.group(0)


class StreamRewriter:
    """Turns upstream SSE bytes into the bytes a caller receives, one read at a time."""

    __slots__ = (
        "_framer", "_public_model", "_completion_id", "_include_usage", "_swaps", "_model_token",
        "_created", "_shortest", "usage", "events", "payload_bytes", "done", "error", "_usage_pending",
    )

    def __init__(self, public_model: str, completion_id: str, include_usage: bool) -> None:
        self._framer = EventFramer()
        self._public_model = public_model
        self._completion_id = completion_id
        self._include_usage = include_usage
        self._swaps: list[tuple[bytes, bytes]] = []
        self._model_token: bytes | None = None
        self._created = 0
        self._shortest = 0
        self._usage_pending = False
        self.usage: Usage | None = None
        self.events = 0
        self.payload_bytes = 0
        self.done = False
        self.error: dict | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Rewrite the events completed by ``chunk``; raise MalformedUpstream on a broken event.

        After an upstream error event, ``error`` is set and nothing more is produced.
        """
        out = []
        for event in self._framer.feed(chunk):
            if self.done or self.error is not None:
                break
            rewritten = self._event(event)
            if rewritten:
                out.append(rewritten)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None:
            return event
        if data == DONE:
            self.done = True
            if self._usage_pending:
                return self._usage_chunk() + event
            return event
        if not (data.startswith(b"{") and data.endswith(b"}")):
            raise MalformedUpstream("event is not a JSON object")
        self.events += 1
        self.payload_bytes += len(data)
        if len(data) < self._shortest or not self._shortest:
            self._shortest = len(data)
        if data.find(b'"error"', 0, 12) != -1:
            return self._error_event(data)
        if b'"usage":null' not in data and _USAGE.search(data):
            return self._usage_event(data)
        token = self._model_token
        if token is None or token not in data:
            return self._slow(event, data)
        for old, new in self._swaps:
            event = event.replace(old, new)
        return event

    def _learn(self, doc: dict, data: bytes) -> bool:
        """Learn the byte tokens to swap from one event; True if they cover all its identity fields."""
        swaps = []
        model_token = _top_level_token(data, "model", doc.get("model"))
        if model_token:
            swaps.append((model_token, b'"model":' + orjson.dumps(self._public_model)))
        id_token = _top_level_token(data, "id", doc.get("id"))
        if id_token:
            swaps.append((id_token, b'"id":' + orjson.dumps(self._completion_id)))
        fingerprint = doc.get("system_fingerprint")
        fingerprint_token = _top_level_token(data, "system_fingerprint", fingerprint)
        if fingerprint_token:
            swaps.append((fingerprint_token, b'"system_fingerprint":null'))
        self._swaps = swaps
        self._model_token = model_token
        if type(doc.get("created")) is int:
            self._created = doc["created"]
        return bool(model_token and id_token and (fingerprint is None or fingerprint_token))

    def _parse(self, data: bytes) -> dict:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedUpstream("event is not JSON") from None
        if type(doc) is not dict:
            raise MalformedUpstream("event is not a JSON object")
        return doc

    def _slow(self, event: bytes, data: bytes) -> bytes | None:
        """An event the learned byte swaps do not cover: learn from it, else re-encode it."""
        doc = self._parse(data)
        if "error" in doc:
            return self._error_event(data, doc)
        if self._learn(doc, data):
            for old, new in self._swaps:
                event = event.replace(old, new)
            return event
        return format_event(self._rewrite(doc))

    def _rewrite(self, doc: dict) -> bytes:
        doc["id"] = self._completion_id
        doc["model"] = self._public_model
        if "system_fingerprint" in doc:
            doc["system_fingerprint"] = None
        return orjson.dumps(doc)

    def _usage_event(self, data: bytes) -> bytes | None:
        doc = self._parse(data)
        self.usage = Usage.from_upstream(doc.get("usage"))
        if not doc.get("choices"):
            return format_event(self._rewrite(doc)) if self._include_usage else None
        # Usage riding on a content chunk (Gemini): strip it here, send it as OpenAI does,
        # in its own chunk with empty choices just before [DONE].
        doc["usage"] = None
        self._usage_pending = self._include_usage and self.usage is not None
        if self._model_token is None:
            self._learn(doc, data)
        return format_event(self._rewrite(doc))

    def _usage_chunk(self) -> bytes:
        usage = self.usage
        chunk = {
            "id": self._completion_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._public_model,
            "choices": [],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        self._usage_pending = False
        return format_event(orjson.dumps(chunk))

    def _error_event(self, data: bytes, doc: dict | None = None) -> None:
        doc = doc if doc is not None else self._parse(data)
        error = doc.get("error")
        if error is None:
            raise MalformedUpstream("unexpected event")
        self.error = error if isinstance(error, dict) else {"message": str(error)}
        return None

    def finish(self) -> bytes:
        """Bytes owed to the caller when the upstream's body ended: its last events, if a held-back
        line end completed them, and the usage chunk if one is owed."""
        out = [e for e in map(self._event, self._framer.finish()) if e]
        if self._framer.pending().strip():
            raise MalformedUpstream("stream ended inside an event")
        if self._usage_pending and not self.done:
            out.append(self._usage_chunk())
        return b"".join(out)

    def estimated_completion_tokens(self) -> int:
        """Roughly how many tokens were relayed, for streams that ended without upstream usage.

        A content event carries about one token; text beyond the shortest event's adds ~1 per 4 bytes.
        """
        if self.events <= 1:
            return 0
        extra = self.payload_bytes - self.events * self._shortest
        return self.events - 1 + extra // 4
