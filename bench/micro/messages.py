"""``python -m bench.micro.messages [--quick]``: the Messages stream translator's cost per upstream
event, against the chat relay's ``StreamRewriter`` on the same streams (bench/micro/relay.py's: the
fake upstream's OpenAI chunks, usage asked for), for the three chunkings relay.py uses; and the
Messages request's parse and translation against the chat request's parse, for a small body and
Claude Code's real first request (tests/conformance/messages/clients)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import orjson

from app.wire.chat import parse_chat_request
from app.wire.messages.request import parse_messages_request
from app.wire.messages.stream import MessagesStream
from app.wire.rewrite import OPENAI
from app.wire.usage import estimate_usage

from .relay import chunkings, relay_rewriter, stream_events
from .timing import measure

CLAUDE_CODE = Path(__file__).resolve().parents[2] / "tests" / "conformance" / "messages" / "clients" / "claude-code-turn-2.json"


def translate(chunks: list[bytes]) -> int:
    stream = MessagesStream("zowy-1", "0123456789abcdef01234567", OPENAI, lambda n: estimate_usage(400, n), 100)
    n = 0
    for chunk in chunks:
        n += len(stream.feed(chunk))
    return n


def bodies() -> dict[str, tuple[bytes, bytes]]:
    """(Messages body, the chat body it becomes) for each size."""
    small = {"model": "zowy-1", "max_tokens": 256, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi!"}]}
    claude = json.loads(CLAUDE_CODE.read_text())["body"]
    out = {}
    for name, doc in (("small", small), ("Claude Code turn 2 (~78 KB)", claude)):
        raw = orjson.dumps(doc)
        chat, _ = parse_messages_request(raw)
        out[name] = (raw, orjson.dumps(chat))
    return out


def run(quick: bool = False) -> dict:
    budget, repeat = (0.03, 3) if quick else (0.25, 5)
    events = stream_events()
    out: dict = {"stream": {}, "parse": {}}
    for name, chunks in chunkings(events).items():
        chat = measure(lambda: relay_rewriter(chunks), budget, repeat)["ns_per_op"] / len(events)
        ours = measure(lambda: translate(chunks), budget, repeat)["ns_per_op"] / len(events)
        out["stream"][name] = {"chat_ns_per_event": round(chat, 1), "messages_ns_per_event": round(ours, 1),
                               "ratio": round(ours / chat, 2)}
    for name, (raw, chat_raw) in bodies().items():
        chat = measure(lambda: parse_chat_request(chat_raw), budget, repeat)["ns_per_op"]
        ours = measure(lambda: parse_messages_request(raw), budget, repeat)["ns_per_op"]
        out["parse"][name] = {"chat_parse_us": round(chat / 1000, 1), "messages_parse_and_translate_us": round(ours / 1000, 1),
                              "ratio": round(ours / chat, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.messages")
    p.add_argument("--quick", action="store_true", help="tiny time budgets (a smoke run)")
    args = p.parse_args(argv)
    print(json.dumps(run(args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
