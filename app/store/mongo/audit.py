"""The audit log in the MongoDB store."""
from __future__ import annotations

from typing import Any

from ..contracts.audit import AuditEvent, AuditQuery
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "audit": (
        Index("at", (("at", 1),)),
        Index("account_at", (("account_id", 1), ("at", 1))),
    ),
}


class MongoAudit(MongoBase):
    async def append_audit(self, event: AuditEvent) -> None:
        doc = {"_id": event.id, "at": event.at, "actor": event.actor, "action": event.action,
               "account_id": event.account_id, "target": event.target, "before": event.before,
               "after": event.after, "ip": event.ip}
        with driver_errors:
            await self._db.audit.insert_one(doc)

    async def audit(self, query: AuditQuery) -> list[AuditEvent]:
        match: dict[str, Any] = {}
        for name, value in (("account_id", query.account_id), ("action", query.action)):
            if value is not None:
                match[name] = value
        span = {op: v for op, v in (("$gte", query.since), ("$lt", query.until)) if v is not None}
        if span:
            match["at"] = span
        if query.after is not None:
            at, event_id = query.after
            match["$and"] = [{"$or": [{"at": {"$lt": at}}, {"at": at, "_id": {"$lt": event_id}}]}]
        with driver_errors:
            docs = await self._db.audit.find(match).sort([("at", -1), ("_id", -1)]).limit(query.limit).to_list(None)
        return [
            AuditEvent(d["_id"], d["at"], d["actor"], d["action"], d.get("account_id"), d.get("target"),
                       d.get("before"), d.get("after"), d.get("ip"))
            for d in docs
        ]
