"""The fake provider (bench/fakes/provider.py) behind a real socket: a fast HTTP server speaking
OpenAI Chat Completions, used by the test suite, the benchmark and the load test.

Run it with ``python -m bench.fake_upstream --host 127.0.0.1 --port 8001 [--mode openai|gemini]
[--chunks 8] [--chunk-size 1] [--delay 0.0] [--think 0.0]`` (``--demo``: the demo model of
app/upstream/demo.py behind the socket instead) or in-process with
``server = await start("127.0.0.1", 0)`` (``server.port``, ``server.base_url``,
``await server.close()``). In process without a socket: ``MockTransport(FakeProvider(...))``.

Routes: ``POST /v1/chat/completions`` (also ``/v1beta/openai/chat/completions`` and
``/chat/completions``); ``GET /_fake/requests?n=K``, ``GET /_fake/stats``, ``POST /_fake/reset``
for introspection (bench/fakes/server.py). What it answers, and the ``[[fake:...]]`` directives
that steer it, are the provider's (bench/fakes/provider.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bench.fakes.provider import (
    CHAT_PATHS,
    GEMINI_REJECTED_FIELDS,
    MODES,
    REFUSAL_TEXT,
    THOUGHT_SIGNATURE,
    TOOL_ARGUMENTS,
    FakeProvider,
    parse_directives,
    reply_text,
    token,
    usage_for,
)
from bench.fakes.server import HandlerServer

__all__ = [
    "CHAT_PATHS",
    "GEMINI_REJECTED_FIELDS",
    "MODES",
    "REFUSAL_TEXT",
    "THOUGHT_SIGNATURE",
    "TOOL_ARGUMENTS",
    "FakeProvider",
    "FakeUpstream",
    "main",
    "parse_directives",
    "reply_text",
    "start",
    "token",
    "usage_for",
]


class FakeUpstream(HandlerServer):
    """One fake provider behind a socket; build with :func:`start`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, mode: str = "openai", *,
                 chunks: int = 8, chunk_size: int = 1, delay: float = 0.0, think: float = 0.0,
                 ssl_context=None) -> None:
        self.provider = FakeProvider(mode, chunks=chunks, chunk_size=chunk_size, delay=delay, think=think)
        super().__init__(self.provider, host, port, ssl_context=ssl_context)

    @property
    def mode(self) -> str:
        return self.provider.mode


async def start(host: str = "127.0.0.1", port: int = 0, mode: str = "openai", *,
                chunks: int = 8, chunk_size: int = 1, delay: float = 0.0,
                think: float = 0.0, ssl_context=None) -> FakeUpstream:
    """Start a fake upstream on ``host:port`` (0 = a free port) in the running loop."""
    server = FakeUpstream(host, port, mode, chunks=chunks, chunk_size=chunk_size,
                          delay=delay, think=think, ssl_context=ssl_context)
    await server.start()
    return server


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fake_upstream",
                                description="Fake OpenAI-compatible LLM provider.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--mode", choices=MODES, default="openai")
    p.add_argument("--chunks", type=int, default=8, help="tokens per reply (default 8)")
    p.add_argument("--chunk-size", type=int, default=1, help="characters per token word")
    p.add_argument("--delay", type=float, default=0.0, help="seconds between stream chunks")
    p.add_argument("--think", type=float, default=0.0, help="seconds before response headers")
    p.add_argument("--demo", action="store_true", help="serve the demo model (app/upstream/demo.py) instead")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    if args.demo:
        from app.upstream import demo

        server: HandlerServer = await HandlerServer(demo.answer, args.host, args.port).start()
    else:
        server = await start(args.host, args.port, args.mode, chunks=args.chunks,
                             chunk_size=args.chunk_size, delay=args.delay, think=args.think)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    print(f"fake upstream listening on http://{args.host}:{server.port} ({'demo' if args.demo else args.mode})",
          flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - optional speed-up
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
