"""Per-target circuit breaker, per worker: skip a failing target for a cool-down, then probe it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breaker:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
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

    def success(self, target: str) -> None:
        state = self._states.get(target)
        if state is not None:
            state.failures = 0
            state.opened_at = None
            state.probing = False

    def failure(self, target: str) -> None:
        state = self._states.setdefault(target, _State())
        state.failures += 1
        if state.probing or state.failures >= self.threshold:
            state.opened_at = self._clock()
            state.probing = False

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
        return {
            t: {"state": self.state(t), "failures": self._states[t].failures if t in self._states else 0}
            for t in targets
        }
