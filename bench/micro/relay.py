"""SSE relay cost per event on realistic upstream streams (the fake upstream's OpenAI format, usage
requested, as the gateway asks for it):

* ``StreamRewriter.feed``: the gateway's relay — byte-level framing and identity-token swaps, JSON
  read only on the first and the usage event (a new rewriter per stream, so learning is included);
* ``naive orjson``: frame, ``orjson.loads`` each event, set id/model/fingerprint, ``orjson.dumps``;
* ``EventFramer.feed`` alone: the framing floor, no rewriting.

Each is run on three chunkings of the same stream: one event per read (what a live LLM stream
looks like), 16 KB reads (a backlog), and reads cut at awkward places (7-byte ... 300-byte pieces);
on a 10-token stream read whole (an upstream with no think time, as the bench's fake); and on the
long stream in the shape OpenAI writes today (a ``service_tier``, an ``obfuscation`` that differs on
every chunk), an event per read.
"""
from __future__ import annotations

import random

import orjson

from app.wire.rewrite import StreamRewriter
from app.wire.sse import EventFramer, event_data

from .timing import measure

UPSTREAM_MODEL = "gpt-5.4-mini"


def stream_events(tokens: int = 64) -> list[bytes]:
    """One upstream stream as the fake upstream writes it: role, ``tokens`` content, finish, usage, DONE."""
    head = (b'data: {"id":"chatcmpl-Zk3pQ0aVbN7xTq1r2s3t4u5v6w7x","object":"chat.completion.chunk",'
            b'"created":1767225600,"model":"' + UPSTREAM_MODEL.encode()
            + b'","system_fingerprint":"fp_fake123","choices":')
    tail = b',"usage":null}\n\n'

    def event(choice: dict) -> bytes:
        return head + orjson.dumps([choice]) + tail

    events = [event({"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                     "logprobs": None, "finish_reason": None})]
    words = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog, ", "again. ")
    for i in range(tokens):
        events.append(event({"index": 0, "delta": {"content": words[i % len(words)]}, "logprobs": None,
                             "finish_reason": None}))
    events.append(event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}))
    usage = {"prompt_tokens": 40, "completion_tokens": tokens, "total_tokens": 40 + tokens,
             "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    events.append(head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def recorded_shape(events: list[bytes], seed: int = 6) -> list[bytes]:
    """The same stream as OpenAI writes it today (tests/conformance/recordings/openai-stream-*.json):
    a ``service_tier`` after the model and an ``obfuscation`` of 2-15 random letters ending each chunk."""
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    out = []
    for event in events:
        if event.startswith(b"data: [DONE]"):
            out.append(event)
            continue
        event = event.replace(b'"model":"' + UPSTREAM_MODEL.encode() + b'",',
                              b'"model":"' + UPSTREAM_MODEL.encode() + b'","service_tier":"default",')
        value = bytes(rng.choice(letters) for _ in range(rng.randint(2, 15)))
        out.append(event[:-3] + b',"obfuscation":"' + value + b'"}\n\n')
    return out


def chunkings(events: list[bytes]) -> dict[str, list[bytes]]:
    raw = b"".join(events)
    rng = random.Random(6)
    awkward, pos = [], 0
    while pos < len(raw):
        step = rng.randint(7, 300)
        awkward.append(raw[pos:pos + step])
        pos += step
    return {
        "1 event per read": list(events),
        "16 KB reads": [raw[i:i + 16384] for i in range(0, len(raw), 16384)],
        "awkward splits": awkward,
    }


def relay_rewriter(chunks: list[bytes]) -> int:
    rewriter = StreamRewriter("zowy-1", "chatcmpl-0123456789abcdef01234567", True)
    n = 0
    for chunk in chunks:
        n += len(rewriter.feed(chunk))
    return n


def relay_naive(chunks: list[bytes]) -> int:
    buffer = b""
    n = 0
    for chunk in chunks:
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        out = []
        for event in events:
            data = event[6:]
            if data == b"[DONE]":
                out.append(b"data: [DONE]\n\n")
                continue
            doc = orjson.loads(data)
            doc["id"] = "chatcmpl-0123456789abcdef01234567"
            doc["model"] = "zowy-1"
            if "system_fingerprint" in doc:
                doc["system_fingerprint"] = None
            out.append(b"data: " + orjson.dumps(doc) + b"\n\n")
        n += len(b"".join(out))
    return n


def frame_only(chunks: list[bytes]) -> int:
    framer = EventFramer()
    n = 0
    for chunk in chunks:
        for event in framer.feed(chunk):
            event_data(event)
            n += 1
    return n


CANDIDATES = {
    "StreamRewriter.feed (gateway)": relay_rewriter,
    "naive orjson decode/rewrite/encode": relay_naive,
    "EventFramer.feed + event_data only (framing floor)": frame_only,
}


def run(quick: bool = False) -> dict:
    budget, repeat = (0.03, 3) if quick else (0.25, 5)
    events = stream_events()
    short = stream_events(10)
    runs = [(cname, events, chunks) for cname, chunks in chunkings(events).items()]
    runs.append(("10-token stream in one read", short, [b"".join(short)]))
    recorded = recorded_shape(events)
    runs.append(("OpenAI's recorded shape, 1 event per read", recorded, list(recorded)))
    out: dict = {}
    for cname, events, chunks in runs:
        total_bytes = sum(map(len, events))
        for name, fn in CANDIDATES.items():
            result = measure(lambda: fn(chunks), budget, repeat)
            per_event = result["ns_per_op"] / len(events)
            out[f"{name} — {cname}"] = {
                "ns_per_event": round(per_event, 1),
                "ns_per_stream": result["ns_per_op"],
                "events_per_stream": len(events),
                "mb_per_s": round(total_bytes / (result["ns_per_op"] / 1e9) / 2**20, 1),
            }
    return out


def check_fidelity() -> bool:
    """The rewriter's output equals the naive rewrite's, event for event, as JSON."""
    events = stream_events(8)
    ours = [e for e in relay_bytes(events).split(b"\n\n") if e]
    theirs = []
    for e in events:
        data = e[6:-2]
        if data == b"[DONE]":
            theirs.append(data)
            continue
        doc = orjson.loads(data)
        doc["id"], doc["model"], doc["system_fingerprint"] = "chatcmpl-0123456789abcdef01234567", "zowy-1", None
        theirs.append(doc)
    parsed = [e[6:] if e[6:] == b"[DONE]" else orjson.loads(e[6:]) for e in ours]
    return parsed == theirs


def relay_bytes(chunks: list[bytes]) -> bytes:
    rewriter = StreamRewriter("zowy-1", "chatcmpl-0123456789abcdef01234567", True)
    return b"".join(rewriter.feed(c) for c in chunks)
