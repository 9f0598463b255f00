"""The replay upstream: a handler (bench/fakes) that answers each chat request with the next queued
recording, streams split into awkward pieces with pauses between them, and keeps the request
bodies it received. In process: ``MockTransport(Replay())``; behind a real socket on 127.0.0.1:
``ReplayServer().start()``.

Queue from Python (``replay.queue(exchange)``) or, on the server, over HTTP (``POST /_replay/queue``
with ``{"status", "content_type", "body"}``, as the JS tests do); ``GET /_replay/requests`` lists
the request bodies received.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import deque
from typing import AsyncIterator

from app.upstream.mock import MockRequest, MockResponse
from bench.fakes.server import HandlerServer, ServerThread
from tests.conformance.corpus import Exchange

PIECE_SIZES = (1, 2, 7, 40, 113, 512, 4096)
PAUSE = 0.0005


class Replay:
    """Answers chat requests with queued recordings, in order; 500 when nothing is queued."""

    def __init__(self, seed: int = 7) -> None:
        self._answers: deque[dict] = deque()
        self.received: list[dict] = []
        self._lock = threading.Lock()  # the queue is filled from the tests' thread, read from the server's
        self._random = random.Random(seed)

    def queue(self, exchange: Exchange, times: int = 1) -> None:
        for _ in range(times):
            self.push({"status": exchange.status, "content_type": exchange.content_type, "body": exchange.replayed_body()})

    def push(self, answer: dict) -> None:
        with self._lock:
            self._answers.append(answer)

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()
            self.received.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._answers)

    def bodies(self) -> list[dict]:
        with self._lock:
            return list(self.received)

    async def __call__(self, request: MockRequest) -> MockResponse:
        path = getattr(request, "path", None)
        if path is not None and not path.endswith("/chat/completions"):
            return MockResponse.json({"error": {"message": f"Unknown path {path}."}}, status=404)
        with self._lock:
            self.received.append(request.body)
            answer = self._answers.popleft() if self._answers else None
        if answer is None:
            return MockResponse.json({"error": {"message": "nothing queued"}}, status=500)
        data = answer["body"].encode()
        headers = {"content-type": answer["content_type"]}
        if answer["content_type"] != "text/event-stream":
            return MockResponse(answer["status"], data, headers)
        return MockResponse(answer["status"], self._pieces(data), headers)

    async def _pieces(self, data: bytes) -> AsyncIterator[bytes]:
        """Pieces of random sizes, some splitting an event or a line end, with pauses between them."""
        at = 0
        while at < len(data):
            size = self._random.choice(PIECE_SIZES)
            yield data[at:at + size]
            at += size
            await asyncio.sleep(PAUSE)


class ReplayServer(Replay):
    """The replay upstream behind a real socket on 127.0.0.1, served from a thread of its own."""

    def __init__(self, seed: int = 7) -> None:
        super().__init__(seed)
        control = {("POST", "/_replay/queue"): self._queue_http, ("GET", "/_replay/requests"): lambda r: self.bodies()}
        self._thread = ServerThread(HandlerServer(self, control=control))

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def port(self) -> int:
        return self._thread.server.port

    def start(self) -> "ReplayServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def _queue_http(self, request) -> dict:
        self.push(request.body)
        return {"queued": self.pending()}


def requests_of(url: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_replay/requests") as r:
        return json.loads(r.read())
