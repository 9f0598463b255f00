"""The bench's own load generator (aiohttp on uvloop), run in its own process by the harness.

``python -m bench.loadgen MODE --url URL --body-file F [--header 'K: V']... [options]`` prints one
JSON line (prefixed ``RESULT ``) with what it measured. Modes:
  throughput  ``--concurrency`` workers send back to back for ``--duration`` s (after ``--warmup`` s)
  latency     one request at a time for ``--duration`` s: latency percentiles, and for streams the
              time to the first body byte (TTFB)
  hold        open ``--streams`` streams and keep them open; print ``READY {...}`` once every stream
              has its first body bytes, then hold until a line arrives on stdin (or ``--hold`` s)
  streams     ``--streams`` workers each keep one stream going, back to back, on a lighter client
              (asyncio + httptools, bench/streams.py); SSE ``data:`` events counted and the gaps
              between consecutive events of a stream measured:
              for ``--duration`` s then to their ends, or, with ``--window``, for that many seconds once
              every stream has its first event, then cut
Every response body is read to its end (streams included) unless the mode says otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import time

import aiohttp

from bench import streams

NAME = "aiohttp-loadgen"


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(values_ns: list[int]) -> dict:
    values = sorted(v / 1e6 for v in values_ns)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 4),
        "p90_ms": round(percentile(values, 90), 4),
        "p99_ms": round(percentile(values, 99), 4),
        "mean_ms": round(sum(values) / len(values), 4),
        "min_ms": round(values[0], 4),
        "max_ms": round(values[-1], 4),
    }


def _session(limit: int = 0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300),
                                 skip_auto_headers=("User-Agent",), auto_decompress=False)


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> tuple[int, int, int]:
    """Send one request and read all of it: (status, ns to first body byte, ns total)."""
    start = time.perf_counter_ns()
    async with session.post(url, data=body, headers=headers) as response:
        first = 0
        content = response.content
        while True:
            chunk = await content.readany()
            if not first:
                first = time.perf_counter_ns() - start
            if not chunk:
                break
        return response.status, first, time.perf_counter_ns() - start


async def throughput(args, body: bytes, headers: dict) -> dict:
    async with _session() as session:
        ok = errors = 0
        statuses: dict[str, int] = {}
        latencies: list[int] = []
        measuring = False
        stop_at = 0.0

        async def worker() -> None:
            nonlocal ok, errors
            while time.monotonic() < stop_at:
                try:
                    status, _, total = await _one(session, args.url, body, headers)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    if measuring:
                        errors += 1
                    continue
                if measuring:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        ok += 1
                        latencies.append(total)
                    else:
                        errors += 1

        if args.warmup > 0:
            stop_at = time.monotonic() + args.warmup
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        measuring = True
        started = time.monotonic()
        stop_at = started + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
    return {
        "generator": NAME, "mode": "throughput", "concurrency": args.concurrency,
        "duration_s": round(elapsed, 3), "ok": ok, "errors": errors, "statuses": statuses,
        "rps": round(ok / elapsed, 1) if elapsed else 0.0, "latency": summary_ms(latencies),
    }


async def latency(args, body: bytes, headers: dict) -> dict:
    async with _session(limit=1) as session:
        totals: list[int] = []
        firsts: list[int] = []
        errors = 0
        deadline = time.monotonic() + args.warmup
        while time.monotonic() < deadline:
            await _one(session, args.url, body, headers)
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline and (not args.requests or len(totals) < args.requests):
            try:
                status, first, total = await _one(session, args.url, body, headers)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                errors += 1
                continue
            if status != 200:
                errors += 1
                continue
            totals.append(total)
            firsts.append(first)
    return {"generator": NAME, "mode": "latency", "concurrency": 1, "errors": errors,
            "latency": summary_ms(totals), "ttfb": summary_ms(firsts)}


async def hold(args, body: bytes, headers: dict) -> dict:
    """Open ``args.streams`` streams, report when all have their first bytes, hold, then close."""
    async with _session() as session:
        opening = asyncio.Semaphore(args.open_concurrency)
        ready = 0
        failed = 0
        finished_early = 0
        all_ready = asyncio.Event()
        release = asyncio.Event()
        firsts: list[int] = []

        async def stream() -> None:
            nonlocal ready, failed, finished_early
            counted = False
            try:
                async with opening:
                    start = time.perf_counter_ns()
                    response = await session.post(args.url, data=body, headers=headers)
                    if response.status != 200:
                        failed += 1
                        response.release()
                        return
                    chunk = await response.content.readany()
                    firsts.append(time.perf_counter_ns() - start)
                if not chunk:
                    failed += 1
                    return
                ready += 1
                counted = True
                if ready + failed >= args.streams:
                    all_ready.set()
                read = asyncio.ensure_future(_drain(response))
                done, _ = await asyncio.wait({read, asyncio.ensure_future(release.wait())},
                                             return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    finished_early += 1
                read.cancel()
                response.close()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                if not counted:
                    failed += 1
            finally:
                if not counted and ready + failed >= args.streams:
                    all_ready.set()

        started = time.monotonic()
        tasks = [asyncio.ensure_future(stream()) for _ in range(args.streams)]
        try:
            await asyncio.wait_for(all_ready.wait(), args.open_timeout)
        except asyncio.TimeoutError:
            pass
        opened_in = time.monotonic() - started
        print("READY " + json.dumps({"open": ready, "failed": failed, "seconds": round(opened_in, 3)}), flush=True)
        loop = asyncio.get_running_loop()
        told = asyncio.Event()

        def wait_stdin() -> None:
            sys.stdin.readline()
            loop.call_soon_threadsafe(told.set)

        threading.Thread(target=wait_stdin, daemon=True).start()
        try:
            await asyncio.wait_for(told.wait(), args.hold)
        except asyncio.TimeoutError:
            pass
        open_at_release = ready - finished_early
        release.set()
        await asyncio.wait(tasks, timeout=30)
    return {"generator": NAME, "mode": "hold", "requested": args.streams, "open": ready,
            "open_at_release": open_at_release, "failed": failed, "finished_early": finished_early,
            "open_seconds": round(opened_in, 3), "ttfb": summary_ms(firsts)}


async def _drain(response: aiohttp.ClientResponse) -> None:
    while await response.content.readany():
        pass


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("mode", choices=("throughput", "latency", "hold", "streams"))
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--requests", type=int, default=0, help="latency: stop after this many (0 = no cap)")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--open-concurrency", type=int, default=64)
    p.add_argument("--open-timeout", type=float, default=120.0)
    p.add_argument("--hold", type=float, default=60.0)
    p.add_argument("--window", type=float, default=0.0, help="streams: measure this long, then cut")
    p.add_argument("--settle", type=float, default=1.0, help="streams --window: wait after all opened")
    p.add_argument("--tail", type=float, default=60.0, help="streams: at most this long for the last ones")
    p.add_argument("--spacing", type=float, default=0.0, help="streams: the upstream's seconds between events")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    run = {"throughput": throughput, "latency": latency, "hold": hold, "streams": streams.run}[args.mode]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(args, body, headers))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
