"""Low-balance alerts: an account's receiver and thresholds, and the outbox of webhooks to send,
each leased by one worker at a time."""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AlertSettings:
    account_id: str
    url: str | None
    thresholds: tuple[int, ...]
    updated_at: float


@dataclass(frozen=True, slots=True)
class Alert:
    """One low-balance webhook in the outbox; its id is unique per account, package and threshold."""

    id: str
    account_id: str
    url: str
    body: str
    created_at: float
    next_at: float
    attempts: int = 0
    delivered_at: float | None = None
    failed_at: float | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None


class AlertStore(abc.ABC):
    """What a backend does with alert settings and the outbox."""

    @abc.abstractmethod
    async def alert_settings(self, account_id: str) -> AlertSettings | None: ...

    @abc.abstractmethod
    async def set_alert_settings(self, settings: AlertSettings) -> None: ...

    @abc.abstractmethod
    async def enqueue_alert(self, alert: Alert) -> bool:
        """Add an alert to the outbox unless its id is there; whether it was added."""

    @abc.abstractmethod
    async def claim_alerts(self, owner: str, now: float, lease: float, limit: int) -> list[Alert]:
        """Lease up to ``limit`` due, undelivered alerts whose lease is free or expired; counts an attempt."""

    @abc.abstractmethod
    async def finish_alert(self, alert_id: str, owner: str, now: float) -> bool:
        """Mark an alert delivered, if ``owner`` still holds its lease."""

    @abc.abstractmethod
    async def retry_alert(self, alert_id: str, owner: str, next_at: float, error: str, give_up: bool = False) -> bool:
        """Release the lease and try again at ``next_at`` (or mark failed), if ``owner`` holds the lease."""

    @abc.abstractmethod
    async def alerts(self, account_id: str, limit: int = 50) -> list[Alert]:
        """An account's outbox, newest first."""
