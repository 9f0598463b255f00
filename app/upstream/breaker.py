"""Per-target circuit breaker, per worker: skip a target whose recent attempts mostly failed for
reasons that say the target is unhealthy, for a cool-down, then let one probe decide.

Only health failures count (connect errors, timeouts, 429/502/503/504/529); an answer one request
caused (a 400, a 500 for that content) does not, so one tenant cannot open it for everyone. It opens
on a failure ratio over a minimum number of attempts within a sliding window.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

HEALTH_FAILURES = frozenset((
    "connect", "connection", "timeout", "status_429", "status_502", "status_503", "status_504", "status_529",
))


@dataclass(slots=True)
class _State:
    # (time, failed) of the attempts within the window, oldest first.
    outcomes: deque = field(default_factory=deque)
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breaker:
    def __init__(self, min_requests: int = 20, failure_ratio: float = 0.5, window: float = 30.0,
                 cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_requests = min_requests
        self.failure_ratio = failure_ratio
        self.window = window
        self.cooldown = cooldown
        self._clock = clock
        self._states: dict[str, _State] = {}

    def allow(self, target: str) -> bool:
        """Whether to send to ``target`` now; an open breaker past its cool-down lets one probe through."""
        state = self._states.get(target)
        if state is None or state.opened_at is None:
            return True
        if state.probing or self._clock() - state.opened_at < self.cooldown:
            return False
        state.probing = True
        return True

    def record(self, target: str, failure: str | None) -> None:
        """How an attempt on ``target`` ended: None when it answered, else the kind of failure."""
        state = self._states.get(target)
        if state is None:
            state = self._states[target] = _State()
        failed = failure in HEALTH_FAILURES
        if state.probing:
            state.probing = False
            if failed:
                state.opened_at = self._clock()
            else:
                state.opened_at = None
                state.outcomes.clear()
                state.failures = 0
            return
        now = self._clock()
        outcomes = state.outcomes
        outcomes.append((now, failed))
        state.failures += failed
        while outcomes and now - outcomes[0][0] > self.window:
            state.failures -= outcomes.popleft()[1]
        if (
            state.opened_at is None and len(outcomes) >= self.min_requests
            and state.failures >= self.failure_ratio * len(outcomes)
        ):
            state.opened_at = now
            outcomes.clear()
            state.failures = 0

    def abandon(self, target: str) -> None:
        """An attempt ended without a verdict (cancelled); let the next one probe again."""
        state = self._states.get(target)
        if state is not None:
            state.probing = False

    def state(self, target: str) -> str:
        state = self._states.get(target)
        if state is None or state.opened_at is None:
            return "closed"
        if state.probing or self._clock() - state.opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def snapshot(self, targets: list[str]) -> dict[str, dict]:
        out = {}
        for t in targets:
            state = self._states.get(t)
            out[t] = {
                "state": self.state(t),
                "attempts": len(state.outcomes) if state else 0,
                "failures": state.failures if state else 0,
            }
        return out
