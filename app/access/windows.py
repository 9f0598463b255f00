"""Fixed UTC-aligned rate windows, pure: what to tell a caller of the windows its key is counted in.

A key may pass at most ``per_minute`` requests in each UTC minute [hh:mm:00, hh:mm+1:00) and at
most ``per_hour`` in each UTC hour [hh:00:00, hh+1:00:00).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..store.contracts.limits import HOUR, MINUTE, hour_of, minute_of

@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    minute_limit: int
    minute_used: int
    hour_limit: int
    hour_used: int
    now: float

    @property
    def minute_left(self) -> int:
        return max(0, self.minute_limit - self.minute_used)

    @property
    def hour_left(self) -> int:
        return max(0, self.hour_limit - self.hour_used)

    @property
    def minute_reset(self) -> float:
        return (minute_of(self.now) + 1) * MINUTE - self.now

    @property
    def hour_reset(self) -> float:
        return (hour_of(self.now) + 1) * HOUR - self.now

    @property
    def hour_binding(self) -> bool:
        """Whether the hour window, not the minute window, is the one with fewer requests left."""
        return self.hour_left < self.minute_left or (
            self.hour_left == self.minute_left == 0 and self.hour_used >= self.hour_limit
        )

    @property
    def retry_after(self) -> float:
        """Seconds until a rejected request could pass."""
        if self.hour_used >= self.hour_limit:
            return self.hour_reset
        return self.minute_reset

    def headers(self) -> dict[str, str]:
        # Every chat response carries these: computed without the properties above.
        now = self.now
        minute_left = self.minute_limit - self.minute_used
        hour_left = self.hour_limit - self.hour_used
        if minute_left < 0:
            minute_left = 0
        if hour_left < 0:
            hour_left = 0
        hour_reset = HOUR - now % HOUR
        hour_text = duration(hour_reset)
        if hour_left < minute_left or (hour_left == minute_left == 0 and self.hour_used >= self.hour_limit):
            limit, left, reset_text = self.hour_limit, hour_left, hour_text
        else:
            limit, left, reset_text = self.minute_limit, minute_left, duration(MINUTE - now % MINUTE)
        headers = {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": reset_text,
            "x-ratelimit-limit-requests-hour": str(self.hour_limit),
            "x-ratelimit-remaining-requests-hour": str(hour_left),
            "x-ratelimit-reset-requests-hour": hour_text,
        }
        if not self.admitted:
            wait = self.retry_after
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return headers

    def message(self) -> str:
        if self.hour_used >= self.hour_limit:
            which = f"{self.hour_limit} requests per hour"
        else:
            which = f"{self.minute_limit} requests per minute"
        return (
            f"Rate limit reached for requests: this key is limited to {which}. "
            f"Please try again in {duration(self.retry_after)}."
        )


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < MINUTE:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, HOUR)
    minutes, secs = divmod(rest, MINUTE)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"
