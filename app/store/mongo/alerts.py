"""Alert settings and the alert outbox in the MongoDB store."""
from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from ..contracts.alerts import Alert, AlertSettings
from .base import DELIVERED, FAILED, PENDING, Index, MongoBase, driver_errors

INDEXES = {
    "alert_settings": (),
    "alert_outbox": (
        Index("due", (("state", 1), ("next_at", 1))),
        Index("account_created", (("account_id", 1), ("created_at", 1))),
    ),
}


class MongoAlerts(MongoBase):
    async def alert_settings(self, account_id: str) -> AlertSettings | None:
        with driver_errors:
            doc = await self._db.alert_settings.find_one({"_id": account_id})
        if doc is None:
            return None
        return AlertSettings(doc["_id"], doc.get("url"), tuple(doc.get("thresholds") or ()), doc["updated_at"])

    async def set_alert_settings(self, settings: AlertSettings) -> None:
        doc = {"url": settings.url, "thresholds": list(settings.thresholds), "updated_at": settings.updated_at}
        with driver_errors:
            # Insert, else update: nx-27017's upserts do not take _id from the filter.
            try:
                await self._db.alert_settings.insert_one({"_id": settings.account_id, **doc})
            except DuplicateKeyError:
                await self._db.alert_settings.update_one({"_id": settings.account_id}, {"$set": doc})

    async def enqueue_alert(self, alert: Alert) -> bool:
        with driver_errors:
            try:
                await self._db.alert_outbox.insert_one(_alert_doc(alert))
            except DuplicateKeyError:
                return False
        return True

    async def claim_alerts(self, owner: str, now: float, lease: float, limit: int) -> list[Alert]:
        # "state" and a free lease of 0.0 rather than null fields: nx-27017's queries never match null.
        due = {"state": PENDING, "next_at": {"$lte": now}, "lease_until": {"$lt": now}}
        lease_until = now + lease
        claimed = []
        with driver_errors:
            candidates = await self._db.alert_outbox.find(due).sort([("next_at", 1)]).limit(limit).to_list(None)
            for doc in candidates:
                # One conditional update per alert: only one lease lands while the last one is free or expired.
                result = await self._db.alert_outbox.update_one(
                    {"_id": doc["_id"], **due},
                    {"$set": {"lease_owner": owner, "lease_until": lease_until}, "$inc": {"attempts": 1}},
                )
                if result.modified_count == 1:
                    doc.update(lease_owner=owner, lease_until=lease_until, attempts=doc.get("attempts", 0) + 1)
                    claimed.append(_alert(doc))
        return claimed

    async def finish_alert(self, alert_id: str, owner: str, now: float) -> bool:
        with driver_errors:
            result = await self._db.alert_outbox.update_one(
                {"_id": alert_id, "lease_owner": owner, "state": PENDING},
                {"$set": {"state": DELIVERED, "delivered_at": now, "lease_owner": None, "lease_until": 0.0, "last_error": None}},
            )
        return result.modified_count == 1

    async def retry_alert(self, alert_id: str, owner: str, next_at: float, error: str, give_up: bool = False) -> bool:
        changes = {"next_at": next_at, "last_error": error, "lease_owner": None, "lease_until": 0.0}
        if give_up:
            changes.update(state=FAILED, failed_at=next_at)
        with driver_errors:
            result = await self._db.alert_outbox.update_one(
                {"_id": alert_id, "lease_owner": owner, "state": PENDING}, {"$set": changes}
            )
        return result.modified_count == 1

    async def alerts(self, account_id: str, limit: int = 50) -> list[Alert]:
        with driver_errors:
            docs = await self._db.alert_outbox.find({"account_id": account_id}).sort(
                [("created_at", -1), ("_id", -1)]
            ).limit(limit).to_list(None)
        return [_alert(d) for d in docs]


_ALERT_FIELDS = ("account_id", "url", "body", "created_at", "next_at", "attempts", "delivered_at", "failed_at",
                 "last_error", "lease_owner", "lease_until")


def _alert_doc(alert: Alert) -> dict:
    doc = {"_id": alert.id, **{name: getattr(alert, name) for name in _ALERT_FIELDS}}
    doc["state"] = DELIVERED if alert.delivered_at is not None else FAILED if alert.failed_at is not None else PENDING
    doc["lease_until"] = alert.lease_until or 0.0
    return doc


def _alert(doc: dict) -> Alert:
    values = {name: doc.get(name) for name in _ALERT_FIELDS}
    values["attempts"] = doc.get("attempts", 0)
    values["lease_until"] = doc.get("lease_until") or None
    return Alert(doc["_id"], **values)
