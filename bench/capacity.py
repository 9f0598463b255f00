"""Capacity: the most concurrent streams one worker holds while the added inter-event gap p99 stays
within a bound, found by doubling then bisection over concurrency, under a time budget."""
from __future__ import annotations

import time
from typing import Callable

CLIENT_BOUND_SHARE = 0.85  # the load generator's own CPU share above which its gaps are its own


def passed(result: dict, streams: int, bound_ms: float) -> bool:
    """Every stream opened, none failed, and the added gap p99 within ``bound_ms``."""
    added = (result.get("gaps") or {}).get("added_p99_ms")
    return (result.get("ready") == streams and not result.get("failed") and added is not None
            and added <= bound_ms)


def next_streams(lo: int, hi: int | None, start: int, maximum: int) -> int | None:
    """The next concurrency to probe: double until one fails, then bisect to within 10 %."""
    if hi is None:
        return None if lo >= maximum else min(maximum, lo * 2 if lo else start)
    if hi - lo <= max(1, lo // 10):
        return None
    return (lo + hi) // 2


def search(probe: Callable[[int], dict], start: int, maximum: int, budget_s: float, bound_ms: float,
           clock: Callable[[], float] = time.monotonic) -> dict:
    """Run ``probe(streams)`` at the concurrencies :func:`next_streams` picks while the budget lasts
    (a probe is not started when the last one's duration would overrun it). A failed probe is run
    once more and fails only if that fails too: one stall of a shared machine stretches the gaps of
    every stream at once, enough to fail a short window on its own."""
    began = clock()
    cost = 0.0
    probes: list[dict] = []

    def attempt(streams: int) -> bool | None:
        nonlocal cost
        if clock() - began + cost > budget_s:
            return None
        t0 = clock()
        result = probe(streams)
        cost = clock() - t0
        ok = passed(result, streams, bound_ms)
        probes.append({"streams": streams, "passed": ok, "seconds": round(cost, 1), **_brief(result)})
        return ok

    lo, hi, stopped = 0, None, "converged"
    streams = next_streams(lo, hi, start, maximum)
    while streams is not None:
        ok = attempt(streams)
        if ok is False:
            ok = attempt(streams)
        if ok is None:
            stopped = "budget"
            break
        lo, hi = (streams, hi) if ok else (lo, streams)
        streams = next_streams(lo, hi, start, maximum)
    if hi is None and lo >= maximum:
        stopped = "maximum"
    return {"streams": lo, "first_failed": hi, "stopped": stopped, "bound_ms": bound_ms,
            "seconds": round(clock() - began, 1), "client_bound": _client_bound(probes, hi),
            "probes": probes}


def _brief(result: dict) -> dict:
    gaps = result.get("gaps") or {}
    return {"added_p99_ms": gaps.get("added_p99_ms"), "p50_ms": gaps.get("p50_ms"), "max_ms": gaps.get("max_ms"),
            "ready": result.get("ready"),
            "failed": result.get("failed"), "client_cpu_share": result.get("client_cpu_share"),
            "system_cpu_share": result.get("system_cpu_share"),
            "other_processes_s": (result.get("cpu") or {}).get("other_processes_s"), "error": result.get("error")}


def _client_bound(probes: list[dict], first_failed: int | None) -> bool:
    """Whether the probe that failed had the load generator busy: the figure is then a lower bound."""
    failing = [p for p in probes if p["streams"] == first_failed]
    return bool(failing) and (failing[-1].get("client_cpu_share") or 0) >= CLIENT_BOUND_SHARE
