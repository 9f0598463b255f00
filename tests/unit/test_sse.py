"""SSE framing fed byte by byte and in random splits; data extraction."""
from __future__ import annotations

import random

import pytest

from app.wire.sse import EventFramer, event_data

EVENTS = [
    b'data: {"a":1}\n\n',
    b'data: {"b":"two\\nlines"}\n\n',
    b": keep-alive\n\n",
    b"event: message\ndata: x\ndata: y\n\n",
    b"data: [DONE]\n\n",
]


def frame_all(stream: bytes, cuts: list[int]) -> list[bytes]:
    framer = EventFramer()
    out = []
    last = 0
    for cut in sorted(cuts) + [len(stream)]:
        out += framer.feed(stream[last:cut])
        last = cut
    out += framer.finish()
    assert framer.pending() == b""
    return out


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_byte_by_byte(line_end):
    events = [e.replace(b"\n", line_end) for e in EVENTS]
    stream = b"".join(events)
    assert frame_all(stream, list(range(1, len(stream)))) == events


@pytest.mark.parametrize("seed", range(50))
def test_random_splits_keep_every_byte(seed):
    rng = random.Random(seed)
    line_end = rng.choice([b"\n", b"\r\n", b"\r"])
    events = [e.replace(b"\n", line_end) for e in rng.choices(EVENTS, k=30)]
    stream = b"".join(events)
    cuts = rng.sample(range(1, len(stream)), k=rng.randint(1, 40))
    framed = frame_all(stream, cuts)
    assert framed == events
    assert b"".join(framed) == stream


def test_several_events_in_one_read_and_partial_tail():
    framer = EventFramer()
    assert framer.feed(b"data: 1\n\ndata: 2\n\ndata: 3") == [b"data: 1\n\n", b"data: 2\n\n"]
    assert framer.pending() == b"data: 3"
    assert framer.feed(b"\n") == []
    assert framer.feed(b"\n") == [b"data: 3\n\n"]


def test_crlf_split_between_cr_and_lf():
    framer = EventFramer()
    assert framer.feed(b"data: 1\r\n\r") == []
    assert framer.feed(b"\ndata: 2\r\n\r\n") == [b"data: 1\r\n\r\n", b"data: 2\r\n\r\n"]


@pytest.mark.parametrize(
    "event, data",
    [
        (b'data: {"a":1}\n\n', b'{"a":1}'),
        (b"data:x\n\n", b"x"),
        (b"event: e\ndata: a\ndata: b\n\n", b"a\nb"),
        (b"data: a\r\ndata: b\r\n\r\n", b"a\nb"),
        (b": comment\n\n", None),
        (b"data: [DONE]\n\n", b"[DONE]"),
    ],
)
def test_event_data(event, data):
    assert event_data(event) == data
