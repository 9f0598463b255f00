"""Incremental server-sent-events framing over raw bytes; no I/O, no JSON.

``EventFramer.feed(chunk)`` returns the complete events in the bytes seen so far, each exactly as
received (terminating blank line included), so a relay can forward them byte for byte.
"""
from __future__ import annotations

import re

# An event ends at an empty line: two line terminators in a row, each \r\n, \n or a lone \r.
_BOUNDARY = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_LINE = re.compile(rb"\r\n|\n|\r")

DONE = b"[DONE]"


class EventFramer:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the events completed by them, in order."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if buffer.find(b"\r") < 0:
            *events, rest = buffer.split(b"\n\n")
            self._buffer = rest
            return [event + b"\n\n" for event in events if event] if events else events
        # A trailing \r may be the first half of \r\n: keep it until the next read decides.
        end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        events = []
        start = 0
        for match in _BOUNDARY.finditer(buffer, 0, end):
            events.append(buffer[start:match.end()])
            start = match.end()
        self._buffer = buffer[start:]
        return events

    def finish(self) -> list[bytes]:
        """At the end of the stream: the events a held-back trailing ``\r`` completes."""
        events = []
        start = 0
        for match in _BOUNDARY.finditer(self._buffer):
            events.append(self._buffer[start:match.end()])
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    def pending(self) -> bytes:
        """Bytes received that do not (yet) form a complete event."""
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The ``data`` field of one event (lines joined by ``\\n``), or None if it has none."""
    if event.startswith(b"data: ") and event.count(b"\n") <= 2 and event.find(b"\r") < 0:
        return event[6:].rstrip(b"\n")
    parts = []
    for line in _LINE.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def format_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
