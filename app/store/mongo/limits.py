"""Rate windows in the MongoDB store: one document per key and hour, counted by one conditional
upsert; a TTL index drops spent ones."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from ...core.errors import StoreUnavailable
from ..contracts.limits import WindowCount, hour_of, minute_of, window_expiry
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "rate_windows": (
        Index("expires_at_ttl", (("expires_at", 1),), expire_after=0),
    ),
}


class MongoLimits(MongoBase):
    async def hit(
        self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None, take: int = 1
    ) -> WindowCount:
        try:
            async with asyncio.timeout(timeout):
                return await self._hit(key_id, per_minute, per_hour, now, take)
        except TimeoutError:
            raise StoreUnavailable("The rate window could not be counted in time.") from None

    async def _hit(self, key_id: str, per_minute: int, per_hour: int, now: float, take: int) -> WindowCount:
        hour = hour_of(now)
        minute = str(minute_of(now) - hour * 60)
        doc_id = f"{key_id}:{hour}"
        expires = datetime.fromtimestamp(window_expiry(now), tz=timezone.utc)
        slot = f"m.{minute}"
        # expires_at as an equality in the filter: the upsert copies it as a real BSON date, which
        # nx-27017 does not do for $setOnInsert (ignored) or $set (stored as a string).
        # "missing or below the limit" spelled out in an $and: nx-27017 has no $not, ignores sibling
        # fields of a top-level $or in writes, and its SQL $nor never matches a missing field.
        query = {
            "_id": doc_id,
            "expires_at": expires,
            "h": {"$lte": per_hour - take},
            "$and": [{"$or": [{slot: {"$exists": False}}, {slot: {"$lte": per_minute - take}}]}],
        }
        update = {"$inc": {"h": take, slot: take}}
        rates = self._db.rate_windows
        with driver_errors:
            for _ in range(3):
                try:
                    doc = await rates.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)
                except DuplicateKeyError:
                    # The filter did not match, so the upsert hit the existing _id (MongoDB); nx-27017
                    # answers None instead. Either way the window decides below.
                    doc = None
                if doc is not None:
                    return WindowCount(True, doc["m"][minute], doc["h"])
                current = await rates.find_one({"_id": doc_id}) or {}
                hour_count = current.get("h", 0)
                minute_count = (current.get("m") or {}).get(minute, 0)
                # Counts only grow within a window, so a full one stays full: a final rejection.
                if hour_count + take > per_hour or minute_count + take > per_minute:
                    return WindowCount(False, minute_count, hour_count)
                # Not full, yet not counted: two first upserts raced (MongoDB), or nx-27017 swallowed
                # a server error into None. Ask again.
        raise StoreUnavailable("The rate window could not be counted.")
