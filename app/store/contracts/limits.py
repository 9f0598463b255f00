"""Rate windows: fixed UTC-aligned minute and hour windows counted per key (and per sign-in
subject) in one atomic operation each."""
from __future__ import annotations

import abc
from dataclasses import dataclass

MINUTE = 60
HOUR = 3600


def minute_of(now: float) -> int:
    return int(now // MINUTE)


def hour_of(now: float) -> int:
    return int(now // HOUR)


def window_expiry(now: float) -> float:
    """When the hour window holding ``now`` can be forgotten (its end plus a margin)."""
    return (hour_of(now) + 1) * HOUR + MINUTE


@dataclass(frozen=True, slots=True)
class WindowCount:
    """The state of a key's two windows right after one request asked to pass."""

    admitted: bool
    minute: int
    hour: int


class LimitStore(abc.ABC):
    """What a backend does with rate windows."""

    @abc.abstractmethod
    async def hit(
        self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None, take: int = 1
    ) -> WindowCount:
        """Count ``take`` requests in the key's minute and hour windows, unless that would overfill either.

        One atomic operation decides; the counts returned include them when admitted.
        Raises StoreUnavailable if the store cannot answer within ``timeout`` seconds.
        """
