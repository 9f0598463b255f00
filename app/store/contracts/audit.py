"""The audit log: one event per change to money or access, read newest first."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change to money or access: who, when, what, and the value before and after."""

    id: str
    at: float
    actor: str
    action: str
    account_id: str | None = None
    target: str | None = None
    before: Any = None
    after: Any = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A page of the audit log, newest first; ``after`` is the last (at, id) seen."""

    limit: int = 100
    after: tuple[float, str] | None = None
    account_id: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None


class AuditStore(abc.ABC):
    """What a backend does with the audit log."""

    @abc.abstractmethod
    async def append_audit(self, event: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def audit(self, query: AuditQuery) -> list[AuditEvent]:
        """Audit events matching ``query``, newest first."""
