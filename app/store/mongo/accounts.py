"""Accounts in the MongoDB store: each account document is also its wallet (app/store/mongo/base.py)."""
from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from ...core.errors import Conflict
from ..contracts.accounts import Account
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "accounts": (
        Index("name_unique", (("name", 1),), unique=True),
    ),
}

_ACCOUNT_FIELDS = {"name": 1, "created_at": 1}


class MongoAccounts(MongoBase):
    async def create_account(self, account_id: str, name: str, now: float) -> Account:
        doc = {
            "_id": account_id, "name": name, "created_at": now, "packages": [], "version": 0, "inflight": [], "leases": [],
            "key_leases": [],
        }
        with driver_errors:
            try:
                await self._db.accounts.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"An account named '{name}' already exists.", param="name") from None
        return Account(account_id, name, now)

    async def account(self, id_or_name: str) -> Account | None:
        with driver_errors:
            docs = await self._db.accounts.find(
                {"$or": [{"_id": id_or_name}, {"name": id_or_name}]}, _ACCOUNT_FIELDS
            ).to_list(2)
        if not docs:
            return None
        doc = next((d for d in docs if d["_id"] == id_or_name), docs[0])
        return _account(doc)

    async def accounts(self) -> list[Account]:
        with driver_errors:
            docs = await self._db.accounts.find({}, _ACCOUNT_FIELDS).sort([("created_at", 1), ("_id", 1)]).to_list(None)
        return [_account(d) for d in docs]


def _account(doc: dict) -> Account:
    return Account(doc["_id"], doc["name"], doc["created_at"])
