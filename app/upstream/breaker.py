"""Per-target circuit breaker, per worker: skip a target whose recent attempts failed for reasons
that say the target is unhealthy, for many of its callers at once; after a cool-down one probe decides.

Only health failures count (connect errors, timeouts, 429/502/503/504/529); an answer one request
caused (a 400, a 500 for that content) does not. And since a caller can make its own requests time
out (a long prompt, deep reasoning), the failures must be shared: it opens on a failure ratio over a
minimum number of attempts within a sliding window, when enough of the accounts that called failed
on most of their own attempts — or when the target could not be reached at all (connect errors),
which no request can cause.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

HEALTH_FAILURES = frozenset((
    "connect", "connection", "timeout", "status_429", "status_502", "status_503", "status_504", "status_529",
))
# Nothing was sent: the target refused or never accepted the connection, whoever the caller was.
UNREACHABLE = "connect"

_OK, _FAILED, _UNREACHABLE = 0, 1, 2


@dataclass(slots=True)
class _State:
    # (time, caller, _OK/_FAILED/_UNREACHABLE) of the attempts within the window, oldest first.
    outcomes: deque = field(default_factory=deque)
    failures: int = 0
    unreachable: int = 0
    # Per caller (account) within the window: [attempts, failures]; and how many of them are failing.
    callers: dict = field(default_factory=dict)
    failing: int = 0
    opened_at: float | None = None
    probing: bool = False

    def clear(self) -> None:
        self.outcomes.clear()
        self.callers.clear()
        self.failures = self.unreachable = self.failing = 0


class Breaker:
    def __init__(self, min_requests: int = 20, failure_ratio: float = 0.5, window: float = 30.0,
                 cooldown: float = 30.0, min_accounts: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_requests = min_requests
        self.failure_ratio = failure_ratio
        self.window = window
        self.cooldown = cooldown
        self.min_accounts = min_accounts
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

    def record(self, target: str, failure: str | None, caller: str | None = None) -> None:
        """How an attempt on ``target`` for ``caller`` (an account) ended: None when it answered,
        else the kind of failure."""
        state = self._states.get(target)
        if state is None:
            state = self._states[target] = _State()
        outcome = (_UNREACHABLE if failure == UNREACHABLE else _FAILED) if failure in HEALTH_FAILURES else _OK
        if state.probing:
            state.probing = False
            if outcome:
                state.opened_at = self._clock()
            else:
                state.opened_at = None
                state.clear()
            return
        now = self._clock()
        outcomes = state.outcomes
        outcomes.append((now, caller, outcome))
        self._count(state, caller, outcome, 1)
        while now - outcomes[0][0] > self.window:
            _, old_caller, old_outcome = outcomes.popleft()
            self._count(state, old_caller, old_outcome, -1)
        if state.opened_at is None and len(outcomes) >= self.min_requests and self._shared_failure(state):
            state.opened_at = now
            state.clear()

    def _count(self, state: _State, caller: str | None, outcome: int, step: int) -> None:
        """Add (step 1) or remove (step -1) one outcome of ``caller`` in the window's tallies."""
        failed = 1 if outcome else 0
        state.failures += step * failed
        if outcome == _UNREACHABLE:
            state.unreachable += step
        tally = state.callers.get(caller)
        if tally is None:
            tally = state.callers[caller] = [0, 0]
        ratio = self.failure_ratio
        was = tally[1] > 0 and tally[1] >= ratio * tally[0]
        tally[0] += step
        tally[1] += step * failed
        if tally[0]:
            now_failing = tally[1] > 0 and tally[1] >= ratio * tally[0]
        else:
            del state.callers[caller]
            now_failing = False
        state.failing += now_failing - was

    def _shared_failure(self, state: _State) -> bool:
        """The window's failures say the target is unhealthy for everyone, not for one caller."""
        needed = self.failure_ratio * len(state.outcomes)
        if state.failures < needed:
            return False
        if state.unreachable >= needed:
            return True
        return state.failing >= self.min_accounts and state.failing >= self.failure_ratio * len(state.callers)

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
                "callers": len(state.callers) if state else 0,
                "failing_callers": state.failing if state else 0,
            }
        return out
