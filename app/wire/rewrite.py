"""What a caller receives of an upstream answer: the upstream's bytes with the identity fields
swapped for ours, and provider differences turned into exact OpenAI chunks.

A stream is rewritten one read at a time. The complete events of a read form one span; when the
span needs nothing but the identity swaps (found by byte search) they are applied to it whole and
no event is parsed. Only events that carry usage, an error, a fingerprint, a provider difference
(``Dialect.markers``) or unknown identity are parsed, normalised and re-encoded. The byte searches
are written for compact JSON, as both providers send it; where a key is written another way (spaces
around its colon), a regular expression decides, for that read only.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable

import orjson

from .sse import DONE, EventFramer, event_data, format_event
from .usage import Usage, estimate_tokens, estimate_usage


class MalformedUpstream(ValueError):
    """The upstream sent something that is not a chat completion."""


class Dialect:
    """How a provider's chat completions differ from OpenAI's; OpenAI itself differs in nothing.

    ``markers`` are byte strings whose presence in a stream event means ``chunk`` must see it.
    """

    markers: tuple[bytes, ...] = ()

    def chunk(self, doc: dict, stream: "StreamRewriter") -> bool:
        """Make one parsed stream chunk an exact OpenAI chunk, in place; True if it changed."""
        return False

    def completion(self, doc: dict, completion_id: str) -> None:
        """Make one parsed non-stream answer an exact OpenAI completion, in place."""


OPENAI = Dialect()


def read_completion(raw: bytes, completion_id: str, dialect: Dialect = OPENAI) -> dict:
    """A non-stream upstream answer, parsed and made an exact OpenAI completion by its provider's
    dialect; MalformedUpstream when it is not a chat completion."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedUpstream("not JSON") from None
    if type(doc) is not dict or type(doc.get("choices")) is not list:
        raise MalformedUpstream("no choices")
    dialect.completion(doc, completion_id)
    return doc


def read_chunk(data: bytes) -> tuple[dict, dict | None]:
    """An upstream stream event's JSON object, and the error it carries instead of choices (an error
    event); MalformedUpstream when it is no JSON object."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedUpstream("event is not JSON") from None
    if type(doc) is not dict:
        raise MalformedUpstream("event is not a JSON object")
    if "error" in doc and not doc.get("choices"):
        error = doc["error"]
        return doc, error if type(error) is dict else {"message": str(error)}
    return doc, None


def rewrite_completion(raw: bytes, public_model: str, completion_id: str,
                       dialect: Dialect = OPENAI) -> tuple[bytes, Usage | None]:
    """A non-stream upstream answer with identity fields replaced; and its usage."""
    doc = read_completion(raw, completion_id, dialect)
    created = doc.get("created")
    # OpenAI's key order, whatever order the upstream wrote.
    out = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created if type(created) is int else int(time.time()),
        "model": public_model,
    }
    for key, value in doc.items():
        if key not in out and key != "system_fingerprint":
            out[key] = value
    return orjson.dumps(out), Usage.from_upstream(doc.get("usage"))


_KEY = {key: re.compile(rb'"' + key.encode() + rb'"\s*:\s*') for key in ("id", "model", "system_fingerprint")}
_QUOTED = {key: b'"' + key.encode() + b'"' for key in _KEY}
# The byte tests count a key's compact forms (as both providers write JSON); only where they do not
# account for every occurrence of the key (spaces about its colon, as Python's json.dumps writes it)
# does the key's expression decide. They search with ``bytes.find``/``count``, not ``in``: on CPython
# 3.11 ``in`` first tries its operand as an integer and clears the TypeError, which costs more than
# the search itself (bench/micro/relay.py).
_FINGERPRINT = b'"system_fingerprint"'
_NULL_FINGERPRINT = b'"system_fingerprint":null'
_NULL_FINGERPRINT_ANY = re.compile(rb'"system_fingerprint"\s*:\s*null')
_USAGE = b'"usage"'
_NULL_USAGE = b'"usage":null'
_USAGE_OBJECT = b'"usage":{'
_NULL_USAGE_ANY = re.compile(rb'"usage"\s*:\s*null')
_FINISH_KEY = b'"finish_reason"'
_FINISH = b'"finish_reason":"'
_NULL_FINISH = b'"finish_reason":null'
_FINISH_ANY = re.compile(rb'"finish_reason"\s*:\s*"')
_LAST_EVENTS = {separator: b"data: " + DONE + separator for separator in (b"\n\n", b"\r\n\r\n")}
_CONTENT = b'"content":"'
_EMPTY_DELTA = b'"delta":{}'
_FULL_DELTA = b'"delta":{"'
_EMPTY_DELTA_ANY = re.compile(rb'"delta"\s*:\s*\{\s*\}')
_OBFUSCATION = b',"obfuscation":"'


def text_around(event: bytes) -> tuple[bytes, bytes] | None:
    """The bytes before and after the text of a chunk that holds one ``"content"`` string, when that
    text has no escape (so its end is the next quote)."""
    start = event.find(_CONTENT)
    if start < 0 or event.count(_CONTENT) != 1:
        return None
    start += len(_CONTENT)
    end = event.find(b'"', start)
    if end < 0 or event.find(b"\\", start, end) >= 0:
        return None
    return event[:start], event[end:]


def obfuscated(after: bytes, closing: bytes) -> bytes | None:
    """The bytes after a chunk's text cut at the opening quote of the ``obfuscation`` value they end
    with (OpenAI's: the same key on every chunk, other letters in it), when ``closing`` ends that value
    and the value holds no quote or backslash; None otherwise."""
    at = after.rfind(_OBFUSCATION)
    if at < 0 or not after.endswith(closing):
        return None
    value = after[at + len(_OBFUSCATION):len(after) - len(closing)]
    if value.find(b'"') >= 0 or value.find(b"\\") >= 0:
        return None
    return after[:at + len(_OBFUSCATION)]


def text_end(event: bytes, start: int, after: bytes, closing: bytes) -> int:
    """Where the text that begins at ``start`` ends, when the rest of ``event`` is ``after`` (cut by
    ``obfuscated``), a value without quote, backslash or line end, and ``closing``; -1 otherwise."""
    end = event.find(b'"', start)
    value = end + len(after)
    last = len(event) - len(closing)
    if end < 0 or value > last or not event.startswith(after, end) or not event.endswith(closing):
        return -1
    find = event.find
    if find(b'"', value, last) >= 0 or find(b"\\", value, last) >= 0 or find(b"\n", value, last) >= 0:
        return -1
    return end


def _null_usage(data: bytes) -> bool:
    """Whether every ``"usage"`` in ``data`` is null (or there is none), however spaced."""
    usages = data.count(_USAGE)
    return usages == data.count(_NULL_USAGE) or usages == len(_NULL_USAGE_ANY.findall(data))


def top_level_token(data: bytes, key: str, value: Any) -> bytes | None:
    """The exact bytes of ``"key":value`` where the event writes it at the top level.

    Providers order keys differently (Gemini alphabetically, so a tool call's ``"id"`` comes
    before the chunk's): the token is built from the parsed top-level value and must occur once.
    """
    if type(value) is not str:
        return None
    wanted = orjson.dumps(value)
    quoted = _QUOTED[key]
    if data.count(quoted) == 1:
        # The key written once, compactly before its value (as both providers write it): no search.
        token = quoted + b":" + wanted
        if data.find(token) >= 0:
            return token
    found = [m for m in _KEY[key].finditer(data) if data.startswith(wanted, m.end())]
    if len(found) != 1:
        return None
    start = found[0].start()
    return data[start:found[0].end() + len(wanted)]


class _HeadShape:
    """A learned head as OpenAI writes it, ``"id":"<id>",...,"created":<n>`` then the rest (model,
    service tier, fingerprint), but for its id and created value: the next stream of the same
    provider most likely carries the same, so that its first event's identity is taken by comparing
    bytes, with what ``StreamRewriter._learn`` would have found, instead of being searched for."""

    __slots__ = ("after_id", "rest", "model", "model_token", "fingerprint", "fingerprint_token",
                 "fingerprint_key", "forbidden")

    def __init__(self, after_id: bytes, rest: bytes, doc: dict, rewriter: "StreamRewriter") -> None:
        self.after_id = after_id
        self.rest = rest
        self.model = doc["model"]
        self.model_token = rewriter._model_token
        self.fingerprint = doc.get("system_fingerprint")
        self.fingerprint_token = rewriter._fingerprint_token
        self.fingerprint_key = "system_fingerprint" in doc
        self.forbidden = rewriter._forbidden

    @classmethod
    def of(cls, rewriter: "StreamRewriter", doc: dict, data: bytes) -> "_HeadShape | None":
        """The shape of the head ``rewriter`` just learned from ``data``, when it has this form."""
        head, id_token = rewriter._head, rewriter._id_token
        if not data.startswith(b"{" + head) or not head.startswith(id_token) or not id_token.startswith(_ID_OPEN):
            return None
        created = head.find(_CREATED, len(id_token))
        if created < 0 or type(doc.get("created")) is not int:
            return None
        digits = created + len(_CREATED)
        end = head.find(b",", digits)
        if end < 0 or head[digits:end] != b"%d" % doc["created"]:
            return None
        after_id, rest = head[len(id_token):digits], head[end:]
        tokens = [rewriter._model_token] + ([rewriter._fingerprint_token] if rewriter._fingerprint_token else [])
        if any(after_id.find(token) >= 0 or rest.count(token) != 1 for token in tokens):
            return None
        return cls(after_id, rest, doc, rewriter)

    def fits(self, rewriter: "StreamRewriter", doc: dict, data: bytes) -> bool:
        """Teach ``rewriter`` its identity from the first event ``data`` (parsed as ``doc``) when
        its head has this shape; False, teaching nothing, when it has not."""
        if not data.startswith(_FIRST):
            return False
        close = data.find(b'"', len(_FIRST))
        if close < 0 or data.find(b"\\", len(_FIRST), close) >= 0 or not data.startswith(self.after_id, close + 1):
            return False
        digits = close + 1 + len(self.after_id)
        end = data.find(b",", digits)
        if end < 0 or not data.startswith(self.rest, end):
            return False
        created = data[digits:end]
        if (not created.isdigit() or doc.get("created") != int(created) or type(doc["created"]) is not int
                or doc.get("id") != data[len(_FIRST):close].decode() or doc.get("model") != self.model
                or doc.get("system_fingerprint") != self.fingerprint
                or ("system_fingerprint" in doc) != self.fingerprint_key or len(orjson.dumps(doc)) != len(data)):
            return False
        head = data[1:end + len(self.rest)]
        if data.count(head) != 1:
            return False
        rewriter._take_tokens(data[1:close + 1], self.model_token, self.fingerprint_token)
        rewriter._take_head(head, self.forbidden)
        return True


# The last head shape learned of each provider's streams, in this process.
_SHAPES: dict[Dialect, _HeadShape] = {}
_ID_OPEN = b'"id":"'
_FIRST = b"{" + _ID_OPEN
_CREATED = b'"created":'


class StreamRewriter:
    """Turns upstream SSE bytes into the bytes a caller receives, one read at a time."""

    __slots__ = (
        "_public_model", "_completion_id", "_include_usage", "dialect", "_tail", "_framer", "_separator",
        "_id_token", "_model_token", "_fingerprint_token", "_swaps", "_markers", "_new_model", "created",
        "usage", "_usage_doc", "_usage_held", "_usage_owed", "_estimate", "events", "text_chars", "done",
        "error", "tool_calls", "_finished", "_calls", "_head", "_new_head", "_forbidden", "text_tokens",
        "_around", "_value_end",
    )

    def __init__(self, public_model: str, completion_id: str, include_usage: bool, dialect: Dialect = OPENAI,
                 estimate: Callable[[int], Usage] | None = None) -> None:
        """``estimate`` gives the usage billed for a completion of so many tokens when the upstream
        reports none; a caller who asked for usage gets it in the usage chunk."""
        self._public_model = public_model
        self._completion_id = completion_id
        self._include_usage = include_usage
        self._estimate = estimate or _completion_only
        self.dialect = dialect
        self._markers = dialect.markers
        self._new_model = orjson.dumps(public_model)
        self._tail = b""
        self._framer: EventFramer | None = None
        self._separator = b"\n\n"
        self._id_token: bytes | None = None
        self._model_token: bytes | None = None
        self._fingerprint_token: bytes | None = None
        self._swaps: list[tuple[bytes, bytes]] = []
        self.created = 0
        self.usage: Usage | None = None
        self._usage_doc: dict | None = None
        # The upstream's own usage chunk, held to go out last; and whether a usage chunk is still owed.
        self._usage_held: bytes | None = None
        self._usage_owed = include_usage
        self.events = 0
        self.text_chars = 0
        self.done = False
        self.error: dict | None = None
        # Per choice: the index given to each tool call (by its id) a dialect had to number.
        self.tool_calls: dict[int, dict[str, int]] = {}
        # Whether a finish_reason went out, and whether tool calls did: a stream that ends without
        # one gets a finish chunk, as OpenAI always sends.
        self._finished = False
        self._calls = False
        # The fast path's byte tests, set when the identity is learned: the head every event of a
        # plain span carries once, and bytes none of them may hold.
        self._head = b""
        self._new_head = b""
        self._forbidden: tuple[bytes, ...] = ()
        # What a plain content event of this stream holds around its text, as sent and as swapped:
        # an event of one read that is the same but for its text goes out without a test.
        self._around: tuple[bytes, bytes, bytes, bytes] | None = None
        # When the bytes after the text end in a value that changes from event to event (OpenAI's
        # ``obfuscation``): the bytes that close that value, its event and its line; ``_around``'s
        # after then stops at the value's opening quote.
        self._value_end = b""
        self.text_tokens = 0

    @property
    def completion_id(self) -> str:
        return self._completion_id

    # reading

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send for the events ``chunk`` completes; an incomplete tail waits.

        After an upstream error event ``error`` is set and nothing more is produced.
        Raises MalformedUpstream on an event that is not a JSON object.
        """
        if self._framer is not None:
            return self._events(self._framer.feed(chunk))
        buffer = self._tail + chunk if self._tail else chunk
        if buffer.find(b"\r") >= 0 and not self._crlf(buffer):
            # Mixed or lone-CR line ends: frame event by event from here on.
            self._framer = EventFramer()
            self._tail = b""
            return self._events(self._framer.feed(buffer))
        end = buffer.rfind(self._separator)
        if end < 0:
            self._tail = buffer
            return b""
        end += len(self._separator)
        if end == len(buffer):
            self._tail = b""
            return self._span(buffer)
        self._tail = buffer[end:]
        return self._span(buffer[:end])

    def _crlf(self, buffer: bytes) -> bool:
        """Whether every line end seen is CRLF (then events end at CRLF CRLF)."""
        crlf = buffer.count(b"\r\n")
        if crlf != buffer.count(b"\r") - (1 if buffer.endswith(b"\r") else 0) or crlf != buffer.count(b"\n"):
            return False
        self._separator = b"\r\n\r\n"
        return True

    def finish(self) -> bytes:
        """Bytes owed when the upstream body ended: events a held-back line end completed, and the
        usage chunk if one is owed. Raises MalformedUpstream if the body ended inside an event."""
        out = []
        if self._framer is not None:
            out.append(self._events(self._framer.finish()))
            rest = self._framer.pending()
        else:
            rest = self._tail
        if rest.strip() and not (self.done or self.error is not None):
            # The body ended without the blank line after its last event: take the event if it is
            # whole (``data: [DONE]`` or complete JSON); a cut one is malformed.
            event = rest.rstrip(b"\r\n") + self._separator
            if event_data(event) is not None:
                out.append(self._one(event) or b"")
        self._tail = b""
        if self._usage_owed and not self.done and self.error is None:
            out.append(self._usage_chunk())
        return b"".join(out)

    def _end(self, event: bytes) -> bytes:
        """The upstream's [DONE] ``event``: the stream is done, after what OpenAI sends before it."""
        self.done = True
        return self._closing() + event

    def _closing(self) -> bytes:
        """What OpenAI sends before [DONE] and the upstream may not have: a finish chunk, then the
        usage chunk when asked for (always last)."""
        owed = b""
        if not self._finished and self.events:
            self._finished = True
            owed = format_event(self._identity({
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if self._calls else "stop"}],
            }))
        if self._usage_owed:
            owed += self._usage_chunk()
        return owed

    # spans and events

    def _span(self, span: bytes) -> bytes:
        if self.done or self.error is not None:
            return b""
        if not self._head:
            return self._learning(span)
        around = self._around
        if around is not None and span.startswith(around[0]):
            if self._value_end:
                varied = self._varied(span, around)
                if varied is not None:
                    return varied
            elif span.endswith(around[1]):
                text = span[len(around[0]):len(span) - len(around[1])]
                if len(span) >= len(around[0]) + len(around[1]) and text.find(b'"') < 0 and text.find(b"\n") < 0:
                    self.events += 1
                    self.text_tokens += 1
                    return around[2] + text + around[3]
        separator = self._separator
        if span.endswith(_LAST_EVENTS[separator]):
            ending = self._ending(span)
            if ending is not None:
                return ending
        whole = self._whole(span)
        if whole is not None:
            return whole
        events = span.split(separator)[:-1]
        if len(events) > 2:
            # What the test refuses in a read of many events is mostly the stream's end (its usage
            # chunk, [DONE]): the events before it go whole.
            for keep in (len(events) - 2, len(events) - 1):
                front = self._whole(separator.join(events[:keep]) + separator)
                if front is not None:
                    return front + self._events([event + separator for event in events[keep:]])
        return self._events([event + separator for event in events])

    def _ending(self, span: bytes) -> bytes | None:
        """A span that ends with ``data: [DONE]``: the events before it and the usage chunk
        swapped whole, those two read one by one; None when the front needs more."""
        separator = self._separator
        done = len(span) - len(_LAST_EVENTS[separator])
        if not done or not span.endswith(separator, 0, done):
            return None
        before = span.rfind(separator, 0, done - len(separator))
        start = before + len(separator) if before >= 0 else 0
        cut = start if span.find(_USAGE, start, done) >= 0 else done
        # When the last event reports usage, the front's text is counted (for an estimate) only if
        # it turns out not to.
        reported = cut < done and span.find(_USAGE_OBJECT, cut, done) >= 0
        events = self.events
        front = span[:cut]
        out = self._whole(front, not reported) if cut else b""
        if out is None:
            return None
        if cut < done:
            swapped = self.events - events
            try:
                out += self._one(span[cut:done]) or b""
            finally:
                if reported and swapped and self.usage is None:
                    self._count_text(front, swapped)
        if self.done or self.error is not None:
            return out
        return out + self._end(span[done:])

    def _learning(self, span: bytes) -> bytes:
        """A span read before the stream's identity is known: event by event until an event teaches
        it (usually the first), the rest as a span of its own."""
        separator = self._separator
        step = len(separator)
        out = []
        start = 0
        end = span.find(separator)
        while end >= 0:
            if self.done or self.error is not None:
                break
            if self._head:
                out.append(self._span(span[start:]))
                break
            event = span[start:end + step]
            if event.strip():
                rewritten = self._one(event)
                if rewritten:
                    out.append(rewritten)
            start = end + step
            end = span.find(separator, start)
        return b"".join(out)

    def _whole(self, span: bytes, counted: bool = True) -> bytes | None:
        """The span with the learned head swapped, when every event in it is plain content that
        carries the head once; None when one of them needs more. ``counted``: its text counts
        towards an estimate now (else the caller counts it, if it must)."""
        count = span.count
        parts = span.split(self._head)
        n = len(parts) - 1
        separator = self._separator
        # With LF line ends, a span of one-line events has two line ends per event: one byte to
        # count instead of two (JSON holds no raw line end).
        if count(b"\n") != 2 * n if separator == b"\n\n" else count(separator) != n:
            return None
        find = span.find
        for marker in self._forbidden:
            if find(marker) >= 0:
                return None
        # OpenAI's chunks carry "usage":null once each when usage is asked for, as we do.
        if count(_NULL_USAGE) != n and not _null_usage(span):
            return None
        if counted:
            self._count_text(span, n)
        if not self._finished:
            # A finish is the last content event's: looked for from the end.
            if span.rfind(_FINISH) >= 0:
                self._finished = True
            else:
                keys = count(_FINISH_KEY)
                if keys and keys != count(_NULL_FINISH) and _FINISH_ANY.search(span):
                    self._finished = True
        self.events += n
        if n == 1 and self._around is None and not self._finished:
            self._learn_around(span)
        return self._new_head.join(parts)

    def _count_text(self, span: bytes, n: int) -> None:
        """About a token per content event of the ``n`` in ``span`` with a delta (a finish chunk's is
        empty): never more than the text relayed."""
        empty = span.count(_EMPTY_DELTA)
        if empty < n:
            self.text_tokens += n - empty

    def _varied(self, span: bytes, around: tuple[bytes, bytes, bytes, bytes]) -> bytes | None:
        """An event with the learned bytes around its text but for the value that ends it (OpenAI's
        ``obfuscation``, other letters on every chunk), when its text holds no line end and does not
        end in a backslash, and that value holds no quote, backslash or line end; None otherwise."""
        start = len(around[0])
        end = text_end(span, start, around[1], self._value_end)
        if end < 0 or span.find(b"\n", start, end) >= 0 or (end > start and span[end - 1] == 0x5C):
            return None
        self.events += 1
        self.text_tokens += 1
        return around[2] + span[start:]

    def _learn_around(self, event: bytes) -> None:
        """From one plain content event whose text is a string without escapes: the bytes before and
        after that text, as sent and with the head swapped. Another event with the same bytes around
        a text that holds no quote (so no key, no head, no event end) passes every test this one
        passed."""
        around = text_around(event)
        if around is None or event.count(_FINISH_KEY) != event.count(_NULL_FINISH):
            return
        before, after = around
        if before.count(self._head) + after.count(self._head) != 1:
            return
        new = self._new_head
        closing = b'"}' + self._separator
        cut = obfuscated(after, closing) if before.count(self._head) == 1 else None
        if cut is not None:
            after, self._value_end = cut, closing
        self._around = (before, after, before.replace(self._head, new), after.replace(self._head, new))

    def _plain(self, data: bytes) -> bool:
        """True when ``data`` holds nothing but content the identity swaps cover."""
        find = data.find
        if find(b"[DONE]") >= 0 or find(b'"error"') >= 0:
            return False
        if find(_USAGE) >= 0 and data.count(_NULL_USAGE) != 1 and not _null_usage(data):
            return False
        if find(_FINGERPRINT) >= 0:
            n = data.count(_FINGERPRINT)
            token = self._fingerprint_token
            swapped = data.count(token) if token is not None else 0
            if n != swapped + data.count(_NULL_FINGERPRINT) and n != swapped + len(_NULL_FINGERPRINT_ANY.findall(data)):
                return False
        for marker in self._markers:
            if find(marker) >= 0:
                return False
        return True

    def _events(self, events: list[bytes]) -> bytes:
        out = []
        for event in events:
            if self.done or self.error is not None:
                break
            if event.strip():
                rewritten = self._one(event)
                if rewritten:
                    out.append(rewritten)
        return b"".join(out)

    def _one(self, event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None:
            return event  # a comment or a field-only event: passed on as is
        if data == DONE:
            return self._end(event)
        if not (data.startswith(b"{") and data.endswith(b"}")):
            raise MalformedUpstream("event is not a JSON object")
        if data.find(_USAGE_OBJECT) < 0 and self._swappable(data):
            for old, new in self._swaps:
                event = event.replace(old, new)
            self.events += 1
            find = data.find
            if find(_EMPTY_DELTA) < 0 and (find(_FULL_DELTA) >= 0 or _EMPTY_DELTA_ANY.search(data) is None):
                self.text_tokens += 1
            if not self._finished:
                keys = data.count(_FINISH_KEY)
                if keys and keys != data.count(_NULL_FINISH) and (find(_FINISH) >= 0 or _FINISH_ANY.search(data)):
                    self._finished = True
            return event
        return self._parsed(event, data)

    def _swappable(self, data: bytes) -> bool:
        """Whether one event needs nothing but the identity swaps."""
        return (
            self._id_token is not None and self._plain(data)
            and data.count(self._id_token) == 1 and data.count(self._model_token) == 1
        )



    def _parsed(self, event: bytes, data: bytes) -> bytes | None:
        doc, error = read_chunk(data)
        if error is not None:
            self.error = error
            return None
        self.events += 1
        self._learn(doc, data)
        changed = self.dialect.chunk(doc, self)
        self._read(doc)
        swapped = None if changed else self._headed(event, data)
        usage = doc.get("usage")
        if usage is not None:
            return self._usage_event(doc, usage, swapped)
        if swapped is not None:
            return swapped
        if not changed and self._swappable(data):
            for old, new in self._swaps:
                event = event.replace(old, new)
            return event
        return format_event(self._identity(doc))

    def _headed(self, event: bytes, data: bytes) -> bytes | None:
        """A parsed event that needs nothing but the identity, with the learned head swapped: when
        it carries the head once and none of the bytes a plain span may not hold."""
        head = self._head
        if not head or data.count(head) != 1:
            return None
        find = data.find
        for marker in self._forbidden:
            if find(marker) >= 0:
                return None
        return event.replace(head, self._new_head)

    def _read(self, doc: dict) -> None:
        """What a parsed chunk tells: its text (for an estimate), tool calls, a finish."""
        choices = doc.get("choices")
        if type(choices) is not list:
            return
        chars = 0
        for choice in choices:
            if type(choice) is not dict:
                continue
            if choice.get("finish_reason"):
                self._finished = True
            delta = choice.get("delta")
            if type(delta) is not dict:
                continue
            for name in ("content", "refusal", "reasoning_content"):
                if type(delta.get(name)) is str:
                    chars += len(delta[name])
            calls = delta.get("tool_calls")
            if type(calls) is list and calls:
                self._calls = True
                for call in calls:
                    function = call.get("function") if type(call) is dict else None
                    if type(function) is dict and type(function.get("arguments")) is str:
                        chars += len(function["arguments"])
        self.text_chars += chars

    def _learn(self, doc: dict, data: bytes) -> None:
        """Learn the byte tokens to swap from an event that writes its identity at the top level."""
        if type(doc.get("created")) is int:
            self.created = doc["created"]
        if self._head and data.find(self._head) >= 0:
            return  # the identity this stream already taught (Gemini's chunks are all parsed)
        shape = _SHAPES.get(self.dialect)
        if shape is not None and shape.fits(self, doc, data):
            return
        id_token = top_level_token(data, "id", doc.get("id"))
        model_token = top_level_token(data, "model", doc.get("model"))
        if id_token is None or model_token is None:
            return
        fingerprint = doc.get("system_fingerprint")
        fingerprint_token = top_level_token(data, "system_fingerprint", fingerprint)
        if fingerprint is not None and fingerprint_token is None:
            return
        self._take_tokens(id_token, model_token, fingerprint_token)
        if len(orjson.dumps(doc)) == len(data):
            self._learn_head(doc, data)

    def _take_tokens(self, id_token: bytes, model_token: bytes, fingerprint_token: bytes | None) -> None:
        """The stream's identity tokens as sent, and the swaps that make them ours."""
        self._id_token, self._model_token, self._fingerprint_token = id_token, model_token, fingerprint_token
        self._swaps = [(id_token, b'"id":' + orjson.dumps(self._completion_id)), (model_token, b'"model":' + self._new_model)]
        if fingerprint_token is not None:
            self._swaps.append((fingerprint_token, _NULL_FINGERPRINT))

    def _take_head(self, head: bytes, forbidden: tuple[bytes, ...]) -> None:
        """The stream's head as sent, as swapped, and the bytes a span swapped whole may not hold."""
        new_head = head
        for old, new in self._swaps:
            new_head = new_head.replace(old, new)
        self._head, self._new_head, self._forbidden = head, new_head, forbidden

    def _learn_head(self, doc: dict, data: bytes) -> None:
        """For compact JSON, as both providers write it: the bytes from the first identity field to the
        last, the same in every chunk of a stream (ids, model, object, created, service tier). A span
        whose every event carries them once, and none of a few other byte strings, is swapped whole."""
        tokens = [self._id_token, self._model_token]
        if self._fingerprint_token is not None:
            tokens.append(self._fingerprint_token)
        elif doc.get("system_fingerprint", 0) is None and data.count(_NULL_FINGERPRINT) == 1:
            tokens.append(_NULL_FINGERPRINT)
        start, end = len(data), 0
        for token in tokens:
            at = data.find(token)
            start = min(start, at)
            end = max(end, at + len(token))
        head = data[start:end]
        if data.count(head) != 1:
            return
        forbidden = [b'"error"', *self._markers]
        if "system_fingerprint" not in doc:
            forbidden.append(_FINGERPRINT)
        self._take_head(head, tuple(forbidden))
        shape = _HeadShape.of(self, doc, data)
        if shape is not None:
            _SHAPES[self.dialect] = shape

    def _identity(self, doc: dict) -> bytes:
        doc["id"] = self._completion_id
        doc["model"] = self._public_model
        doc["object"] = "chat.completion.chunk"
        if type(doc.get("created")) is not int:
            doc["created"] = self.created or int(time.time())
        if "system_fingerprint" in doc:
            doc["system_fingerprint"] = None
        return orjson.dumps(doc)

    def _usage_event(self, doc: dict, usage: Any, swapped: bytes | None) -> bytes | None:
        reported = Usage.from_upstream(usage)
        if reported is not None:
            self.usage = reported
            self._usage_doc = usage
            self._usage_held = None
        if not doc.get("choices"):
            # The upstream's usage chunk: held until [DONE], so that nothing follows it.
            if reported is not None and self._include_usage:
                self._usage_held = swapped if swapped is not None else format_event(self._identity(doc))
            return None
        # Usage riding on a content chunk (Gemini): OpenAI sends it alone, in a chunk with empty
        # choices just before [DONE], and only when asked.
        if self._include_usage:
            doc["usage"] = None
        else:
            del doc["usage"]
        return format_event(self._identity(doc))

    def _usage_chunk(self) -> bytes:
        """The usage chunk owed to a caller who asked for it: the upstream's own, else one with the
        usage it reported on a content chunk, else the estimate that is billed (kept as ``usage``)."""
        self._usage_owed = False
        if self._usage_held is not None:
            return self._usage_held
        if self.usage is None:
            self.usage = usage = self._estimate(self.estimated_completion_tokens())
            self._usage_doc = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        return format_event(orjson.dumps({
            "id": self._completion_id,
            "object": "chat.completion.chunk",
            "created": self.created or int(time.time()),
            "model": self._public_model,
            "choices": [],
            "usage": self._usage_doc,
        }))

    def estimated_completion_tokens(self) -> int:
        """Tokens of the text relayed so far, for a stream that ended without upstream usage: one per
        plain content event (a provider streams about a token per event), and about one per four
        characters of parsed ones; at least one if any text went out, never more than its characters."""
        return self.text_tokens + estimate_tokens(self.text_chars)


def _completion_only(completion_tokens: int) -> Usage:
    return estimate_usage(0, completion_tokens)
