"""Deadlines of tasks' blocks, as ``asyncio.timeout_at`` keeps them (the task cancelled when its
deadline passes, the cancellation turned into TimeoutError at the block's end), checked by one
ticker per loop instead of a timer each: a timer costs more to set and cancel than the upstream
call it guards costs to send. A deadline may pass up to ``resolution`` seconds late."""
from __future__ import annotations

import asyncio

RESOLUTION = 0.01


class Deadlines:
    """The open deadlines of one loop; the ticker runs only while one is open."""

    __slots__ = ("loop", "resolution", "_open", "_tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self.loop = loop
        self.resolution = resolution
        self._open: dict[Deadline, None] = {}
        self._tick: asyncio.TimerHandle | None = None

    def at(self, when: float) -> "Deadline":
        """``async with deadlines.at(when) as deadline:`` the block is cancelled at ``when`` (loop time)
        and raises TimeoutError; ``deadline.reschedule(later)`` moves it."""
        return Deadline(self, when)

    def _enter(self, deadline: "Deadline") -> None:
        self._open[deadline] = None
        if self._tick is None:
            self._tick = self.loop.call_later(self.resolution, self._check)

    def _leave(self, deadline: "Deadline") -> None:
        self._open.pop(deadline, None)

    def _check(self) -> None:
        now = self.loop.time()
        passed = [deadline for deadline in self._open if deadline.when <= now]
        for deadline in passed:
            del self._open[deadline]
            deadline._expire()
        self._tick = self.loop.call_later(self.resolution, self._check) if self._open else None


class Deadline:
    """One block's deadline (see ``Deadlines.at``)."""

    __slots__ = ("_deadlines", "when", "_task", "_cancelling", "_expired")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        self._task: asyncio.Task | None = None
        self._cancelling = 0
        self._expired = False

    def reschedule(self, when: float) -> None:
        self.when = when

    async def __aenter__(self) -> "Deadline":
        task = self._task = asyncio.current_task(self._deadlines.loop)
        if task is None:
            raise RuntimeError("a deadline is kept for a task")
        self._cancelling = task.cancelling()
        self._deadlines._enter(self)
        return self

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, kind, exc, tb) -> None:
        if not self._expired:
            self._deadlines._leave(self)
            return
        # As asyncio's Timeout: the cancellation was ours unless another one came besides it.
        if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from exc
