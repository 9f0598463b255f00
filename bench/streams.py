"""Client side of the long-stream phases (``python -m bench.loadgen streams``): many concurrent
streams, each SSE ``data:`` event counted as it arrives, and the gaps between consecutive events of
each stream collected into a histogram."""
from __future__ import annotations

import asyncio
import math
import resource
import time
from urllib.parse import urlsplit

import httptools

BIN_S = 0.00005  # histogram bins of 50 µs: percentiles far finer than the 50 ms capacity bound
MAX_S = 10.0


class Gaps:
    """Inter-event gaps in fixed bins (constant memory whatever the number of events)."""

    def __init__(self) -> None:
        self.bins = [0] * (int(MAX_S / BIN_S) + 1)
        self.n = 0
        self.max = 0.0

    def add(self, gap: float, times: int = 1) -> None:
        index = int(gap / BIN_S)
        self.bins[index if index < len(self.bins) else -1] += times
        self.n += times
        if gap > self.max:
            self.max = gap

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile, as the upper edge of its bin (never below the true value)."""
        if not self.n:
            return None
        rank = max(1, math.ceil(p / 100.0 * self.n))
        seen = 0
        for index, count in enumerate(self.bins):
            seen += count
            if seen >= rank:
                return min((index + 1) * BIN_S, self.max)
        return self.max

    def summary(self, spacing: float) -> dict:
        """Percentiles in ms; ``added_*`` subtract the upstream's own spacing between events."""
        if not self.n:
            return {"n": 0}
        out = {"n": self.n}
        for p in (50, 90, 99):
            value = self.percentile(p)
            out[f"p{p}_ms"] = round(value * 1000, 3)
            out[f"added_p{p}_ms"] = round((value - spacing) * 1000, 3)
        out["max_ms"] = round(self.max * 1000, 3)
        return out


class EventCounter:
    """Counts complete SSE events that carry a ``data:`` field in bytes fed chunk by chunk."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, chunk: bytes) -> int:
        if b"\r" in chunk or self.tail.endswith(b"\r"):
            chunk = (self.tail + chunk).replace(b"\r\n", b"\n")
            self.tail = b""
        parts = (self.tail + chunk if self.tail else chunk).split(b"\n\n")
        self.tail = parts.pop()
        return sum(1 for p in parts if p.startswith(b"data:") or b"\ndata:" in p)


class Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection reading one response at a time, parsed by httptools in
    the read callback: a plain asyncio protocol costs the load generator a fraction of what an
    aiohttp client does per event, so the generator stays out of the way at thousands of streams."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.parser = None
        self.status = 0
        self.now = 0.0
        self.sink = None
        self.finished: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionResetError("connection closed mid-response"))

    def send(self, request: bytes, sink, finished: asyncio.Future) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.sink, self.finished = 0, sink, finished
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.finished.done():
                self.finished.set_exception(exc)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status == 200:
            self.sink(self.now, body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.lost = True
            self.transport.close()
        if not self.finished.done():
            self.finished.set_result(self.status)


class Stream:
    """The events of one response, counted into the phase as they arrive."""

    __slots__ = ("phase", "counter", "last", "first", "opened")

    def __init__(self, phase: Run, first: bool, opened: asyncio.Future) -> None:
        self.phase, self.first, self.opened = phase, first, opened
        self.counter, self.last = EventCounter(), None

    def body(self, now: float, data: bytes) -> None:
        n = self.counter.feed(data)
        if not n:
            return
        if self.last is None:
            if self.first:
                self.phase.mark_ready()
            if not self.opened.done():
                self.opened.set_result(None)
        self.phase.note(now, self.last, n)
        self.last = now


def request_bytes(url: str, body: bytes, headers: dict) -> tuple[str, int, bytes]:
    """(host, port, the whole POST request) for ``url``."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {parts.netloc}", f"Content-Length: {len(body)}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return parts.hostname, parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Run:
    """One phase: ``streams`` workers each keep one stream open, back to back, each on its own connection."""

    def __init__(self, args, body: bytes, headers: dict) -> None:
        self.args = args
        self.host, self.port, self.request = request_bytes(args.url, body, headers)
        self.opening = asyncio.Semaphore(args.open_concurrency)
        self.clients: list[Client] = []
        self.gaps = Gaps()
        self.events = self.events_in_window = 0
        self.ready = self.failed = self.completed = 0
        self.errors: dict[str, int] = {}  # status code or exception name -> count
        self.all_ready = asyncio.Event()
        self.window = (0.0, math.inf)  # gaps and events counted only when they arrive inside it
        self.stop_at = math.inf  # no new stream starts after this

    def note(self, now: float, last: float | None, n: int) -> None:
        self.events += n
        start, end = self.window
        if not start <= now <= end:
            return
        self.events_in_window += n
        n -= 1  # the first of these events follows the stream's previous one (none for its first)
        if last is not None:
            self.gaps.add(now - last)
        if n > 0:  # events that arrived in the same read as another: a gap of zero
            self.gaps.add(0.0, n)

    def mark_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.args.streams:
            self.all_ready.set()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def connect(self) -> Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(Client, self.host, self.port)
        self.clients.append(client)
        return client

    async def stream(self, client: Client | None, first: bool) -> tuple[Client, bool]:
        """One stream read to its end; the opening slot is held until its first event."""
        loop = asyncio.get_running_loop()
        opened, finished = loop.create_future(), loop.create_future()
        stream = Stream(self, first, opened)
        async with self.opening:
            if client is None or client.lost:
                client = await self.connect()
            client.send(self.request, stream.body, finished)
            await asyncio.wait((opened, finished), return_when=asyncio.FIRST_COMPLETED)
        status = await finished
        if status != 200:
            self.error(str(status))
            return client, False
        self.completed += 1
        return client, stream.last is not None

    async def worker(self) -> None:
        first, client = True, None
        while time.perf_counter() < self.stop_at:
            try:
                client, ok = await self.stream(client, first)
            except (OSError, httptools.HttpParserError) as exc:
                self.error(type(exc).__name__)
                client, ok = None, False
            if ok:
                first = False
            else:
                self.failed += 1
                await asyncio.sleep(0.05)

    def close(self) -> None:
        for client in self.clients:
            client.finished = None  # cut on purpose: not an error of the stream
            if client.transport is not None:
                client.transport.close()


async def run(args, body: bytes, headers: dict) -> dict:
    """``--duration``: start streams for that long, then let them finish (at most ``--tail`` s more);
    ``--window``: once all streams have their first event, count ``--window`` s, then cut them."""
    phase = Run(args, body, headers)
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(phase.worker()) for _ in range(args.streams)]
    if args.window:
        phase.window = (math.inf, math.inf)
        measured = await _window(phase, args, tasks)
    else:
        measured = await _finish(phase, args, tasks, started)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    phase.close()
    await asyncio.sleep(0)
    return {"generator": "asyncio-httptools", "mode": "streams", "streams": args.streams, "ready": phase.ready,
            "failed": phase.failed, "errors": phase.errors, "completed": phase.completed, "events": phase.events,
            "events_in_window": phase.events_in_window, "spacing_ms": args.spacing * 1000,
            "gaps": phase.gaps.summary(args.spacing), **measured}


async def _window(phase: Run, args, tasks: list) -> dict:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(phase.all_ready.wait(), args.open_timeout)
    except asyncio.TimeoutError:
        return {"open_seconds": None, "window_s": 0.0, "client_cpu_share": None}
    opened = time.perf_counter() - started
    await asyncio.sleep(args.settle)  # the burst of opening is not what a held stream sees
    t0, cpu0 = time.perf_counter(), _own_cpu()
    phase.window = (t0, t0 + args.window)
    await asyncio.sleep(args.window)
    t1, cpu1 = time.perf_counter(), _own_cpu()
    return {"open_seconds": round(opened, 3), "window_s": round(t1 - t0, 3),
            "client_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 3)}


async def _finish(phase: Run, args, tasks: list, started: float) -> dict:
    cpu0 = _own_cpu()
    phase.stop_at = started + args.duration
    _, pending = await asyncio.wait(tasks, timeout=args.duration + args.tail)
    elapsed = time.perf_counter() - started
    return {"duration_s": round(elapsed, 3), "cut_streams": len(pending),
            "events_per_s": round(phase.events / elapsed, 1) if elapsed else None,
            "client_cpu_share": round((_own_cpu() - cpu0) / elapsed, 3) if elapsed else None}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
