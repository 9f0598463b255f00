"""Upstream chat chunks turned into the Responses API's events, one read at a time, with the
interface of the chat ``StreamRewriter`` (``feed``/``finish``, ``done``, ``error``, ``usage``).

Each upstream event is parsed once; text deltas go out through a byte template made when their
item opens. Items are never interleaved: the item streaming is the open one; what arrives for
another (a parallel call, text after a call) waits in its item and goes out whole, in order, once
the open one is done. ``response.completed`` carries the full response; a finish on length is
``response.incomplete``; ``failed`` renders a failure after the stream began.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import orjson

from ..rewrite import OPENAI, Dialect, MalformedUpstream, obfuscated, read_chunk, text_around, text_end
from ..sse import DONE, EventFramer, event_data
from ..usage import Usage, estimate_tokens, estimate_usage
from .output import INCOMPLETE, Frame, call_item, custom_input, message_item, reasoning_item, tool_of, usage_object
from .translate import Tool

_HEADS: dict[str, bytes] = {}
# A JSON string's text that holds nothing escaped: no quote, backslash or control byte.
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')


def _head(kind: str) -> bytes:
    head = _HEADS.get(kind)
    if head is None:
        head = _HEADS[kind] = b"event: " + kind.encode() + b"\ndata: "
    return head


class _Item:
    """One output item while it streams: added (``n`` set) or waiting its turn."""

    __slots__ = ("kind", "n", "id", "tool", "call_id", "name", "args", "extra", "parts", "logprobs", "done",
                 "delta", "plain")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "message" | "call"
        self.n = -1
        self.id = ""
        self.tool: Tool | None = None
        self.call_id = ""
        self.name = ""
        self.args: list[str] = []
        self.extra: dict | None = None
        # A message's content parts in order: [kind ("output_text" | "refusal"), [pieces]]
        self.parts: list[list] = []
        self.logprobs: list = []
        self.done = False
        self.delta = b""  # the open message's text-delta template
        self.plain = b""  # the same for a text of no escapes, no logprobs: only the sequence number and text vary


class ResponsesStream:
    """Feeds on upstream chat-chunk bytes; returns the Responses events to send."""

    __slots__ = (
        "_frame", "_tools", "dialect", "_normalise", "_estimate", "_framer", "_tail", "_seq", "_started", "done", "error", "usage",
        "events", "text_chars", "created", "tool_calls", "_items", "_open", "_queue", "_message", "_calls",
        "_carried", "_finish", "_ncalls", "_logprobs", "response", "_hold", "terminal", "_unsent",
        "_around", "_value_end",
    )

    def __init__(self, frame: Frame, tools: dict[str, Tool], dialect: Dialect = OPENAI,
                 estimate: Callable[[int], Usage] | None = None, logprobs: bool = False, hold: bool = False) -> None:
        """``hold``: keep the terminal event (``terminal``) out of what ``feed`` returns, for the
        caller to send once it has stored the response."""
        self._frame = frame
        self._tools = tools
        self.dialect = dialect
        self._estimate = estimate or _completion_only
        # OpenAI's chunks need no normalising; another provider's dialect sees every chunk.
        self._normalise = None if type(dialect) is Dialect else dialect.chunk
        self._framer: EventFramer | None = None
        self._tail = b""
        self._seq = 0
        self._started = False
        self.done = False
        self.error: dict | None = None
        self.usage: Usage | None = None
        self.events = 0
        self.text_chars = 0
        self.created = 0
        # Per choice: the index given to each tool call a provider dialect had to number.
        self.tool_calls: dict[int, dict[str, int]] = {}
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._queue: list[_Item] = []
        self._message: _Item | None = None
        self._calls: dict[Any, _Item] = {}
        self._carried: dict[str, dict] = {}
        self._finish: str | None = None
        self._ncalls = 0
        self._logprobs = logprobs
        self.response: dict | None = None  # the final response object, once the stream is done
        self._hold = hold
        self.terminal = b""
        self._unsent = b""
        # The bytes around the text of a plain text delta of this stream (OpenAI's, as sent): an
        # event the same but for a text without quotes or escapes is not parsed.
        self._around: tuple[bytes, bytes] | None = None
        # When that delta ends in OpenAI's ``obfuscation`` (other letters on every chunk): the bytes
        # that close its value; ``_around``'s after then stops at the value's opening quote.
        self._value_end = b""

    @property
    def completion_id(self) -> str:
        return self._frame.id

    # reading

    def feed(self, chunk: bytes) -> bytes:
        """The events to send for the upstream events ``chunk`` completes. Raises MalformedUpstream."""
        if self._framer is not None:
            return self._events(self._framer.feed(chunk))
        buffer = self._tail + chunk if self._tail else chunk
        if buffer.find(b"\r") >= 0:
            # CR line ends (none seen from either provider): the general framer from here on.
            self._framer = EventFramer()
            self._tail = b""
            return self._events(self._framer.feed(buffer))
        events = buffer.split(b"\n\n")
        self._tail = events.pop()
        return self._events(events) if events else b""

    def finish(self) -> bytes:
        """At the end of the upstream body: what a held-back line end or a last event without its
        blank line completes."""
        if self._framer is not None:
            out = self._events(self._framer.finish())
            rest = self._framer.pending()
        else:
            out, rest = b"", self._tail
        self._tail = b""
        if rest.strip() and not (self.done or self.error is not None):
            out += self._events([rest.rstrip(b"\r\n")])
        return out

    def _events(self, events: list[bytes]) -> bytes:
        """Events without their blank line; each upstream event parsed once, text deltas to the
        open message written straight from its template. What the read made before an upstream
        error or a malformed event waits in ``_unsent`` for ``failed`` (the reader of an upstream
        that fails sends nothing of that read), so no sequence number goes missing."""
        out: list[bytes] = []
        try:
            self._read(events, out)
        except MalformedUpstream:
            self._unsent = b"".join(out)
            raise
        if self.error is not None:
            self._unsent = b"".join(out)
            return b""
        return b"".join(out)

    def _read(self, events: list[bytes], out: list[bytes]) -> None:
        i, n = 0, len(events)
        while i < n:
            if self.done or self.error is not None:
                break
            around = self._around
            if around is not None and events[i].startswith(around[0]):
                i = self._plain(events, i, out)
                if i == n:
                    break
            self._parse(events[i], out)
            i += 1

    def _plain(self, events: list[bytes], i: int, out: list[bytes]) -> int:
        """Plain text deltas to the open message from ``events[i]`` on, each written from its
        template without a parse: the bytes around its text are the learned ones, and the text holds
        no quote, escape or control byte. The index of the first event that is not one."""
        message = self._message
        if message is None or message is not self._open or not message.parts or message.parts[-1][0] != "output_text":
            return i
        texts = message.parts[-1][1]
        template = message.plain
        before, after = self._around
        start, cut, value_end = len(before), len(after), self._value_end
        seq, chars, first, n = self._seq, 0, i, len(events)
        while i < n:
            event = events[i]
            if not event.startswith(before):
                break
            if value_end:
                end = text_end(event, start, after, value_end)
                if end < 0:
                    break
            elif event.endswith(after) and len(event) >= start + cut:
                end = len(event) - cut
            else:
                break
            raw = event[start:end]
            if _PLAIN.fullmatch(raw) is None:
                break
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                break  # not JSON: the parse says so
            if text:
                texts.append(text)
                chars += len(text)
                out.append(template % (seq, raw))
                seq += 1
            i += 1
        self._seq = seq
        self.text_chars += chars
        self.events += i - first
        return i

    def _parse(self, event: bytes, out: list[bytes]) -> None:
        """One upstream event read through its parse."""
        if event.startswith(b"data: ") and event.find(b"\n") < 0:
            data = event[6:]
        else:
            data = event_data(event + b"\n\n")
            if data is None:
                return
        if data == DONE:
            out.append(self._complete())
            return
        doc, error = read_chunk(data)
        if error is not None:
            self.error = error
            return
        choices = doc.get("choices")
        self.events += 1
        if not self._started:
            out.append(self._start(doc))
        if self._normalise is not None:
            self._normalise(doc, self)
            choices = doc.get("choices")
        usage = doc.get("usage")
        if usage is not None:
            reported = Usage.from_upstream(usage)
            if reported is not None:
                self.usage = reported
        if type(choices) is not list or not choices:
            return
        choice = choices[0]
        if type(choice) is not dict:
            return
        delta = choice.get("delta")
        message = self._message
        if (
            message is not None and message is self._open and type(delta) is dict and not self._logprobs
            and message.parts and message.parts[-1][0] == "output_text"
            and delta.get("tool_calls") is None and not delta.get("refusal")
        ):
            text = delta.get("content")
            if type(text) is str:
                if text:
                    message.parts[-1][1].append(text)
                    self.text_chars += len(text)
                    out.append(message.delta % (self._seq, orjson.dumps(text), b"[]"))
                    self._seq += 1
                finish = choice.get("finish_reason")
                if finish:
                    self._finish = finish
                else:
                    self._learn_around(event, delta, usage)
                return
        self._choice(choice, out)
        if not choice.get("finish_reason"):
            self._learn_around(event, delta, usage)

    def _learn_around(self, event: bytes, delta: Any, usage: Any) -> None:
        """Once, from a chunk that is a text alone to the open message (as OpenAI's are): the bytes
        around its text, so that its neighbours are read without a parse."""
        message = self._message
        if (
            self._around is not None or self._normalise is not None or usage is not None or self._logprobs
            or type(delta) is not dict or len(delta) != 1 or type(delta.get("content")) is not str
            or message is None or message is not self._open
        ):
            return
        around = text_around(event)
        if around is None:
            return
        before, after = around
        cut = obfuscated(after, b'"}')
        if cut is not None:
            after, self._value_end = cut, b'"}'
        self._around = (before, after)

    def _start(self, doc: dict) -> bytes:
        self._started = True
        if type(doc.get("created")) is int:
            self.created = doc["created"]
        body = self._frame.encoded()
        out = _head("response.created") + b'{"type":"response.created","sequence_number":0,"response":' + body + b"}\n\n"
        out += _head("response.in_progress") + b'{"type":"response.in_progress","sequence_number":1,"response":' + body + b"}\n\n"
        self._seq = 2
        return out

    def _choice(self, choice: dict, out: list[bytes]) -> None:
        delta = choice.get("delta")
        if type(delta) is dict:
            text = delta.get("content")
            if type(text) is str and text:
                self._text("output_text", text, choice.get("logprobs"), out)
            refusal = delta.get("refusal")
            if type(refusal) is str and refusal:
                self._text("refusal", refusal, None, out)
            calls = delta.get("tool_calls")
            if type(calls) is list and calls:
                for call in calls:
                    if type(call) is dict:
                        self._call(call, out)
                if self._open is None:
                    self._next(out)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = finish

    # items

    def _text(self, kind: str, text: str, logprobs: Any, out: list[bytes]) -> None:
        self.text_chars += len(text)
        message = self._message
        if message is None or message.done:
            message = self._message = _Item("message")
            if self._open is None:
                self._add(message, out)
            else:
                self._queue.append(message)
        parts = message.parts
        if not parts or parts[-1][0] != kind:
            if message is self._open and parts:
                out.append(self._part_done(message))
            parts.append([kind, []])
            if message is self._open:
                out.append(self._part_added(message))
        parts[-1][1].append(text)
        lp = b"[]"
        if self._logprobs and kind == "output_text" and type(logprobs) is dict and type(logprobs.get("content")) is list:
            message.logprobs.extend(logprobs["content"])
            lp = orjson.dumps(logprobs["content"])
        if message is self._open:
            if kind == "output_text":
                out.append(message.delta % (self._seq, orjson.dumps(text), lp))
                self._seq += 1
            else:
                out.append(self._event("response.refusal.delta", item_id=message.id, output_index=message.n,
                                       content_index=len(parts) - 1, delta=text))

    def _call(self, call: dict, out: list[bytes]) -> None:
        index = call.get("index", len(self._calls))
        item = self._calls.get(index)
        function = call.get("function") if type(call.get("function")) is dict else {}
        if item is None:
            item = self._calls[index] = _Item("call")
            item.call_id = self._frame.ids.call(self._ncalls)
            self._ncalls += 1
            if self._open is not None and self._open.kind == "message":
                self._close(self._open, out)  # the text is over: the calls follow it
            self._queue.append(item)
        name = function.get("name")
        if type(name) is str and name:
            item.name += name
        if type(call.get("extra_content")) is dict:
            item.extra = call["extra_content"]
            self._carried[item.call_id] = item.extra
        arguments = function.get("arguments")
        if type(arguments) is str and arguments:
            self.text_chars += len(arguments)
            item.args.append(arguments)
            if item is self._open and item.tool.kind != "custom":
                out.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                       output_index=item.n, delta=arguments))

    def _next(self, out: list[bytes]) -> None:
        """Open the next waiting item, if any."""
        if self._queue:
            self._add(self._queue.pop(0), out)

    def _add(self, item: _Item, out: list[bytes]) -> None:
        """Add ``item`` to the output and make it the open one; what it already holds goes out."""
        if item.kind == "call" and self._carried:
            self._carrier(out)  # the calls' vendor fields ride in a reasoning item just before them
        n = item.n = len(self._items)
        self._items.append(item)
        self._open = item
        if item.kind == "message":
            item.id = self._frame.ids.item("message", n)
            out.append(self._event("response.output_item.added", output_index=n, item={
                "id": item.id, "type": "message", "status": "in_progress", "content": [], "role": "assistant",
            }))
            last = len(item.parts) - 1
            for i, (kind, pieces) in enumerate(item.parts):
                out.append(self._part_added(item, i))
                # What waited goes out in the pieces it came in.
                for piece in pieces:
                    if kind == "output_text":
                        out.append(self._event("response.output_text.delta", item_id=item.id, output_index=n,
                                               content_index=i, delta=piece, logprobs=[]))
                    else:
                        out.append(self._event("response.refusal.delta", item_id=item.id, output_index=n,
                                               content_index=i, delta=piece))
                if i < last:
                    out.append(self._part_done(item, i))
            return
        item.tool = tool_of(item.name, self._tools)
        kind = "custom_tool_call" if item.tool.kind == "custom" else "function_call"
        item.id = self._frame.ids.item(kind, n)
        out.append(self._event("response.output_item.added", output_index=n,
                               item=call_item(item.id, item.call_id, item.tool, "", "in_progress")))
        if item.tool.kind != "custom":
            for piece in item.args:
                out.append(self._event("response.function_call_arguments.delta", item_id=item.id, output_index=n,
                                       delta=piece))

    def _carrier(self, out: list[bytes]) -> None:
        """A done reasoning item carrying the vendor fields of the calls seen so far."""
        n = len(self._items)
        holder = _Item("reasoning")
        holder.done = True
        holder.n = n
        holder.extra = reasoning_item(self._frame.ids.item("reasoning", n), self._carried)
        self._carried = {}
        self._items.append(holder)
        out.append(self._event("response.output_item.added", output_index=n, item=holder.extra))
        out.append(self._event("response.output_item.done", output_index=n, item=holder.extra))

    def _part_added(self, item: _Item, i: int | None = None) -> bytes:
        i = len(item.parts) - 1 if i is None else i
        if item.parts[i][0] == "output_text":
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            # The template of this part's text deltas: only the sequence number, text and logprobs vary.
            item.delta = (
                _head("response.output_text.delta")
                + b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"' + item.id.encode()
                + b'","output_index":' + str(item.n).encode() + b',"content_index":' + str(i).encode()
                + b',"delta":%b,"logprobs":%b}\n\n'
            )
            item.plain = item.delta.replace(b'"delta":%b,"logprobs":%b', b'"delta":"%b","logprobs":[]')
        else:
            part = {"type": "refusal", "refusal": ""}
        return self._event("response.content_part.added", item_id=item.id, output_index=item.n, content_index=i,
                           part=part)

    def _part_done(self, item: _Item, i: int | None = None) -> bytes:
        i = len(item.parts) - 1 if i is None else i
        kind, pieces = item.parts[i]
        text = "".join(pieces)
        if kind == "output_text":
            return (
                self._event("response.output_text.done", item_id=item.id, output_index=item.n, content_index=i,
                            text=text, logprobs=item.logprobs)
                + self._event("response.content_part.done", item_id=item.id, output_index=item.n, content_index=i,
                              part={"type": "output_text", "annotations": [], "logprobs": item.logprobs, "text": text})
            )
        return (
            self._event("response.refusal.done", item_id=item.id, output_index=item.n, content_index=i, refusal=text)
            + self._event("response.content_part.done", item_id=item.id, output_index=item.n, content_index=i,
                          part={"type": "refusal", "refusal": text})
        )

    def _close(self, item: _Item, out: list[bytes], status: str = "completed") -> None:
        item.done = True
        if self._open is item:
            self._open = None
        if item.kind == "message":
            if item.parts:
                out.append(self._part_done(item))
            out.append(self._event("response.output_item.done", output_index=item.n, item=self._snapshot(item, status)))
            return
        arguments = "".join(item.args)
        if item.tool.kind == "custom":
            text = custom_input(arguments)
            out.append(self._event("response.custom_tool_call_input.delta", item_id=item.id, output_index=item.n,
                                   delta=text))
            out.append(self._event("response.custom_tool_call_input.done", item_id=item.id, output_index=item.n,
                                   input=text))
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item.id, output_index=item.n,
                                   arguments=arguments))
        out.append(self._event("response.output_item.done", output_index=item.n, item=self._snapshot(item, status)))

    def _snapshot(self, item: _Item, status: str) -> dict:
        if item.kind == "reasoning":
            return item.extra
        if item.kind == "message":
            text = refusal = None
            for kind, pieces in item.parts:
                if kind == "output_text":
                    text = (text or "") + "".join(pieces)
                else:
                    refusal = (refusal or "") + "".join(pieces)
            if text is None and refusal is None:
                text = ""
            return message_item(item.id, text, refusal, status, item.logprobs)
        return call_item(item.id, item.call_id, item.tool or tool_of(item.name, self._tools), "".join(item.args), status)

    # the end

    def _complete(self) -> bytes:
        """On the upstream's [DONE]: every item done, in order, then the terminal event."""
        out: list[bytes] = []
        incomplete = INCOMPLETE.get(self._finish)
        status = "incomplete" if incomplete else "completed"
        if not self._started:
            out.append(self._start({}))
        while True:
            if self._open is not None:
                self._close(self._open, out, status)
            if not self._queue:
                break
            self._next(out)
        if not self._items:
            message = _Item("message")
            self._add(message, out)
            message.parts.append(["output_text", []])
            out.append(self._part_added(message))
            self._close(message, out, status)
        if self._carried:
            self._carrier(out)
        if self.usage is None:
            self.usage = self._estimate(self.estimated_completion_tokens())
        output = [self._snapshot(item, status) for item in self._items]
        self.response = self._frame.response(status, output, usage_object(self.usage), incomplete=incomplete)
        kind = "response.incomplete" if incomplete else "response.completed"
        terminal = self._event(kind, response=self.response)
        if self._hold:
            self.terminal = terminal  # sent by whoever stores the response first
        else:
            out.append(terminal)
        self.done = True
        return b"".join(out)

    def failed(self, code: str, message: str) -> bytes:
        """The events that end a stream the gateway could not finish: ``error``, then
        ``response.failed`` (with the items already done)."""
        if self.done:
            return b""
        self.done = True
        out = self._unsent if self._started else self._start({})
        error = {"type": "server_error", "code": code, "message": message, "param": None}
        out += self._event("error", code=code, message=message, param=None, error=error)
        output = [self._snapshot(item, "incomplete") for item in self._items if item.done]
        self.response = self._frame.response("failed", output, None, error={"code": code, "message": message})
        return out + self._event("response.failed", response=self.response)

    def _event(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, "sequence_number": self._seq}
        doc.update(fields)
        self._seq += 1
        return _head(kind) + orjson.dumps(doc) + b"\n\n"

    def estimated_completion_tokens(self) -> int:
        """Tokens of the text and arguments relayed, for a stream that ended without upstream usage."""
        return estimate_tokens(self.text_chars)


def _completion_only(completion_tokens: int) -> Usage:
    return estimate_usage(0, completion_tokens)
