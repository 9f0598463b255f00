"""What the Responses API adds to a request and to each relayed event, against chat completions,
in process (``python -m bench.micro.responses [--quick]``):

* per request: reading the body (``parse_responses_request`` + ``to_chat``) against
  ``parse_chat_request`` on the same conversation;
* per event: ``ResponsesStream.feed`` (chat chunks into Responses events, one ``orjson.loads`` per
  upstream event) against ``StreamRewriter.feed`` (identity swaps at byte level), on the same
  upstream stream, a new translator per stream (its created/in_progress/completed events included).
"""
from __future__ import annotations

import argparse
import json

import orjson

from app.wire.rewrite import StreamRewriter
from app.wire.chat import parse_chat_request
from app.wire.responses.output import Frame
from app.wire.responses.request import parse_responses_request
from app.wire.responses.stream import ResponsesStream
from app.wire.responses.translate import to_chat

from .relay import chunkings, stream_events
from .timing import measure

PROMPT = "You are a helpful assistant. Answer briefly and precisely."
QUESTION = "Say hello to the benchmark, please."


def bodies() -> tuple[bytes, bytes]:
    chat = {"model": "zowy-1", "stream": True,
            "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": QUESTION}]}
    responses = {"model": "zowy-1", "stream": True, "instructions": PROMPT, "input": QUESTION}
    return orjson.dumps(chat), orjson.dumps(responses)


def run(quick: bool = False) -> dict:
    budget = 0.02 if quick else 0.2
    chat_body, responses_body = bodies()
    request = parse_responses_request(responses_body)
    translated = to_chat(request)
    out: dict = {"per request": {
        "parse_chat_request": measure(lambda: parse_chat_request(chat_body), budget),
        "parse_responses_request + to_chat": measure(lambda: to_chat(parse_responses_request(responses_body)), budget),
    }}
    events = stream_events(64)
    n = len(events) - 1  # the data events a caller of chat completions receives, [DONE] aside
    for name, pieces in chunkings(events).items():
        def chat_stream(pieces=pieces):
            rewriter = StreamRewriter("zowy-1", "chatcmpl-ours", True)
            for piece in pieces:
                rewriter.feed(piece)
            rewriter.finish()

        def responses_stream(pieces=pieces):
            stream = ResponsesStream(Frame(request, "zowy-1", "0" * 24), translated.tools)
            for piece in pieces:
                stream.feed(piece)
            stream.finish()

        chat_ns = measure(chat_stream, budget)["ns_per_op"] / n
        responses_ns = measure(responses_stream, budget)["ns_per_op"] / n
        out[name] = {"chat ns/event": round(chat_ns), "responses ns/event": round(responses_ns),
                     "ratio": round(responses_ns / chat_ns, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.responses")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
