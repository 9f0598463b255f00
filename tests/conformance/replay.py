"""A replay upstream: a real HTTP server on 127.0.0.1 that answers each chat request with the next
queued recording, streams split into awkward pieces, and keeps what it received.

Queue from Python (``server.queue(exchange)``) or over HTTP (``POST /_replay/queue`` with
``{"status", "content_type", "body"}``, as the JS tests do); ``GET /_replay/requests`` lists the
request bodies received.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import deque

from aiohttp import web

from tests.conformance.corpus import Exchange


class ReplayServer:
    def __init__(self, seed: int = 7) -> None:
        self._answers: deque[dict] = deque()
        self.received: list[dict] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReplayServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="replay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("replay server did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/_replay/queue", self._queue_http)
        app.router.add_get("/_replay/requests", self._requests_http)
        app.router.add_post("/{tail:.*}/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

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

    async def _queue_http(self, request: web.Request) -> web.Response:
        self.push(await request.json())
        return web.json_response({"queued": self.pending()})

    async def _requests_http(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self.received))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._lock:
            self.received.append(body)
            answer = self._answers.popleft() if self._answers else None
        if answer is None:
            return web.json_response({"error": {"message": "nothing queued"}}, status=500)
        data = answer["body"].encode()
        if answer["content_type"] != "text/event-stream":
            return web.Response(body=data, status=answer["status"], content_type=answer["content_type"])
        response = web.StreamResponse(status=answer["status"], headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        # Pieces of random sizes, some splitting an event or a line end, with pauses between them.
        at = 0
        while at < len(data):
            size = self._random.choice((1, 2, 7, 40, 113, 512, 4096))
            await response.write(data[at:at + size])
            at += size
            await asyncio.sleep(0.0005)
        try:
            await response.write_eof()
        except ConnectionError:
            pass  # the gateway may close the connection as soon as it has read [DONE]
        return response


def requests_of(url: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_replay/requests") as r:
        return json.loads(r.read())
