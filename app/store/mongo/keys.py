"""API keys in the MongoDB store."""
from __future__ import annotations

from typing import Any, Mapping

from pymongo.errors import DuplicateKeyError

from ...core.errors import Conflict
from ..contracts.keys import KEY_CONTROLS, KeyRecord
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "api_keys": (
        Index("key_hash_unique", (("key_hash", 1),), unique=True),
        Index("account_id", (("account_id", 1),)),
    ),
}

_KEY_FIELDS = {"key_hash": 0}


class MongoKeys(MongoBase):
    async def create_key(self, record: KeyRecord, key_hash: str) -> KeyRecord:
        doc = {
            "_id": record.id, "account_id": record.account_id, "key_hash": key_hash, "prefix": record.prefix,
            "created_at": record.created_at, "revoked_at": record.revoked_at,
            "per_minute": record.per_minute, "per_hour": record.per_hour,
            **{name: _stored(getattr(record, name)) for name in ("name", "expires_at", "models", "token_cap", "ips")},
        }
        with driver_errors:
            if await self._db.accounts.count_documents({"_id": record.account_id}, limit=1) == 0:
                raise Conflict(f"The key could not be stored: there is no account '{record.account_id}'.")
            try:
                await self._db.api_keys.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict("The key could not be stored; create it again.") from None
        return record

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        with driver_errors:
            doc = await self._db.api_keys.find_one({"key_hash": key_hash}, _KEY_FIELDS)
        return _key(doc) if doc else None

    async def key(self, key_id: str) -> KeyRecord | None:
        with driver_errors:
            doc = await self._db.api_keys.find_one({"_id": key_id}, _KEY_FIELDS)
        return _key(doc) if doc else None

    async def keys(self, account_id: str) -> list[KeyRecord]:
        with driver_errors:
            docs = await self._db.api_keys.find({"account_id": account_id}, _KEY_FIELDS).sort(
                [("created_at", 1), ("_id", 1)]
            ).to_list(None)
        return [_key(d) for d in docs]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        with driver_errors:
            result = await self._db.api_keys.update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}})
            if result.matched_count:
                return True
            return await self._db.api_keys.count_documents({"_id": key_id}, limit=1) > 0

    async def set_key_limits(self, key_id: str, per_minute: int | None, per_hour: int | None) -> bool:
        with driver_errors:
            result = await self._db.api_keys.update_one(
                {"_id": key_id}, {"$set": {"per_minute": per_minute, "per_hour": per_hour}}
            )
        return result.matched_count == 1

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        fields = {name: _stored(value) for name, value in changes.items() if name in KEY_CONTROLS}
        with driver_errors:
            if fields:
                await self._db.api_keys.update_one({"_id": key_id}, {"$set": fields})
            doc = await self._db.api_keys.find_one({"_id": key_id}, _KEY_FIELDS)
        return _key(doc) if doc else None


def _key(doc: dict) -> KeyRecord:
    models, ips = doc.get("models"), doc.get("ips")
    return KeyRecord(
        doc["_id"], doc["account_id"], doc["prefix"], doc["created_at"],
        doc.get("revoked_at"), doc.get("per_minute"), doc.get("per_hour"),
        doc.get("name"), doc.get("expires_at"),
        tuple(models) if models is not None else None, doc.get("token_cap"),
        tuple(ips) if ips is not None else None,
    )


def _stored(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
