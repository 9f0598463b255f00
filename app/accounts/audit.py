"""The audit log: every change to money or access, with who made it, when, on what, and the value
before and after. Written before the change is reported done; read newest first."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..core.ids import new_id
from ..store import Store
from ..store.contracts.audit import AuditEvent, AuditQuery
from ..wire import paging


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: ``admin``, ``cli``, ``owner:<id>``, ``webhook:topup``, ``system`` or ``anonymous``."""

    name: str
    ip: str | None = None


SYSTEM = Actor("system")
CLI = Actor("cli")


async def record(
    store: Store, actor: Actor, action: str, account_id: str | None = None, target: str | None = None,
    before: Any = None, after: Any = None,
) -> AuditEvent:
    """Append one event to the audit log."""
    event = AuditEvent(new_id("aud"), time.time(), actor.name, action, account_id, target, before, after, actor.ip)
    await store.append_audit(event)
    return event


def view(event: AuditEvent) -> dict:
    return {
        "id": event.id, "at": event.at, "actor": event.actor, "ip": event.ip, "action": event.action,
        "account_id": event.account_id, "target": event.target, "before": event.before, "after": event.after,
    }


async def page(store: Store, query: AuditQuery) -> dict:
    """One page of the log in the shape the admin API and the CLI print."""
    events = await store.audit(query)
    next_cursor = paging.cursor(events[-1].at, events[-1].id) if len(events) == query.limit else None
    return {"data": [view(e) for e in events], "next_cursor": next_cursor}
