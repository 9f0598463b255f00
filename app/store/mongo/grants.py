"""Redemption codes and top-up events in the MongoDB store."""
from __future__ import annotations

from pymongo.errors import BulkWriteError, DuplicateKeyError

from ...core.errors import Conflict, StoreUnavailable
from ..contracts.grants import Code, Topup
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "codes": (
        Index("code_hash_unique", (("code_hash", 1),), unique=True),
        Index("batch_id", (("batch_id", 1),)),
    ),
    "topups": (
        Index("account_id", (("account_id", 1),)),
    ),
}


class MongoGrants(MongoBase):
    async def create_codes(self, codes: list[tuple[Code, str]]) -> None:
        docs = [{"_id": c.id, "code_hash": h, "batch_id": c.batch_id, "plan": c.plan, "tokens": c.tokens,
                 "days": c.days, "created_at": c.created_at, "expires_at": c.expires_at,
                 "redeemed_at": c.redeemed_at, "redeemed_by": c.redeemed_by} for c, h in codes]
        if not docs:
            return
        with driver_errors:
            try:
                await self._db.codes.insert_many(docs, ordered=True)
            except (BulkWriteError, DuplicateKeyError):
                raise Conflict("The codes could not be stored; create the batch again.") from None

    async def code_by_hash(self, code_hash: str) -> Code | None:
        with driver_errors:
            doc = await self._db.codes.find_one({"code_hash": code_hash})
        return _code(doc) if doc else None

    async def codes(self, batch_id: str) -> list[Code]:
        with driver_errors:
            docs = await self._db.codes.find({"batch_id": batch_id}).sort([("created_at", 1), ("_id", 1)]).to_list(None)
        return [_code(d) for d in docs]

    async def claim_code(self, code_id: str, account_id: str, now: float) -> bool:
        with driver_errors:
            result = await self._db.codes.update_one(
                {"_id": code_id, "redeemed_at": None, "expires_at": {"$gt": now}},
                {"$set": {"redeemed_at": now, "redeemed_by": account_id}},
            )
        return result.modified_count == 1

    async def record_topup(self, topup: Topup) -> tuple[Topup, bool]:
        doc = {"_id": topup.event_id, "account_id": topup.account_id, "package_id": topup.package_id,
               "plan": topup.plan, "tokens": topup.tokens, "days": topup.days, "received_at": topup.received_at}
        with driver_errors:
            try:
                await self._db.topups.insert_one(doc)
                return topup, True
            except DuplicateKeyError:
                pass
            stored = await self._db.topups.find_one({"_id": topup.event_id})
        if stored is None:
            raise StoreUnavailable("The top-up could not be read back; retry shortly.")
        return Topup(stored["_id"], stored["account_id"], stored["package_id"], stored["plan"], stored["tokens"],
                     stored["days"], stored["received_at"]), False


def _code(doc: dict) -> Code:
    return Code(doc["_id"], doc["batch_id"], doc["plan"], doc["tokens"], doc["days"], doc["created_at"],
                doc["expires_at"], doc.get("redeemed_at"), doc.get("redeemed_by"))
