"""Stored responses in the MongoDB store: one document each, its JSON as text (a response may hold
keys MongoDB does not take, such as ``$schema``); a TTL index drops expired ones."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

from ..contracts.responses import StoredResponse
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "responses": (
        Index("expires_at_ttl", (("expires_at", 1),), expire_after=0),
        Index("account_id", (("account_id", 1),)),
    ),
}


def _date(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, tz=timezone.utc)


class MongoResponses(MongoBase):
    async def save_response(self, stored: StoredResponse) -> None:
        doc = {"_id": stored.id, "account_id": stored.account_id, "created_at": stored.created_at,
               "expires_at": _date(stored.expires_at), "expires": stored.expires_at, "chain": list(stored.chain),
               "response": stored.response.decode(), "input": stored.input.decode()}
        with driver_errors:
            await self._db.responses.replace_one({"_id": stored.id}, doc, upsert=True)

    async def stored_responses(self, account_id: str, ids: Sequence[str], now: float) -> list[StoredResponse]:
        # The TTL monitor runs once a minute (and not at all on some stand-ins): the expiry is checked here.
        match = {"_id": {"$in": list(dict.fromkeys(ids))}, "account_id": account_id, "expires": {"$gt": now}}
        with driver_errors:
            docs = await self._db.responses.find(match).to_list(None)
        return [
            StoredResponse(d["_id"], d["account_id"], d["created_at"], d["expires"], tuple(d.get("chain") or ()),
                           d["response"].encode(), d["input"].encode())
            for d in docs
        ]

    async def delete_response(self, account_id: str, response_id: str, now: float) -> bool:
        with driver_errors:
            result = await self._db.responses.delete_one({"_id": response_id, "account_id": account_id, "expires": {"$gt": now}})
        return result.deleted_count > 0
