"""A small timeit: run a callable enough times to fill a time budget, repeat, keep the best."""
from __future__ import annotations

import gc
import time
from typing import Callable


def measure(fn: Callable[[], object], budget: float = 0.2, repeat: int = 5) -> dict:
    """ns per call of ``fn``: best and median of ``repeat`` rounds of about ``budget`` seconds each."""
    fn()  # warm caches, learn once
    number = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed >= budget * 1e9 / 4 or number >= 1 << 24:
            break
        number *= 2
    number = max(1, int(number * (budget * 1e9) / max(elapsed, 1)))
    rounds = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            rounds.append((time.perf_counter_ns() - start) / number)
    finally:
        if enabled:
            gc.enable()
    rounds.sort()
    return {"ns_per_op": round(rounds[0], 1), "median_ns": round(rounds[len(rounds) // 2], 1),
            "loops": number, "repeat": repeat}
