"""Owners, invites and sessions in the MongoDB store."""
from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from ...core.errors import Conflict
from ..contracts.owners import Invite, Owner, Session
from .base import Index, MongoBase, driver_errors

INDEXES = {
    "owners": (
        Index("email_unique", (("email", 1),), unique=True),
        Index("account_id", (("account_id", 1),)),
    ),
    "invites": (
        Index("token_hash_unique", (("token_hash", 1),), unique=True),
    ),
    "sessions": (
        Index("expires_at", (("expires_at", 1),)),
    ),
}


class MongoOwners(MongoBase):
    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        doc = {"_id": owner.id, "account_id": owner.account_id, "email": owner.email,
               "password": password_hash, "created_at": owner.created_at}
        with driver_errors:
            if await self._db.accounts.count_documents({"_id": owner.account_id}, limit=1) == 0:
                raise Conflict(f"The owner could not be stored: there is no account '{owner.account_id}'.")
            try:
                await self._db.owners.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"An owner with email '{owner.email}' already exists.", param="email") from None
        return owner

    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        with driver_errors:
            doc = await self._db.owners.find_one({"email": email})
        return (_owner(doc), doc["password"]) if doc else None

    async def owners(self, account_id: str) -> list[Owner]:
        with driver_errors:
            docs = await self._db.owners.find({"account_id": account_id}, {"password": 0}).sort(
                [("created_at", 1), ("_id", 1)]
            ).to_list(None)
        return [_owner(d) for d in docs]

    async def create_invite(self, invite: Invite, token_hash: str) -> Invite:
        doc = {"_id": invite.id, "token_hash": token_hash, "account_id": invite.account_id, "email": invite.email,
               "created_at": invite.created_at, "expires_at": invite.expires_at, "accepted_at": invite.accepted_at}
        with driver_errors:
            if await self._db.accounts.count_documents({"_id": invite.account_id}, limit=1) == 0:
                raise Conflict(f"The invite could not be stored: there is no account '{invite.account_id}'.")
            try:
                await self._db.invites.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict("The invite could not be stored; create it again.") from None
        return invite

    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        with driver_errors:
            doc = await self._db.invites.find_one({"token_hash": token_hash})
            if doc is None or doc.get("accepted_at") is not None or doc["expires_at"] <= now:
                return None
            # update_one and its count, not find_one_and_update: nx-27017 answers None for errors too.
            result = await self._db.invites.update_one(
                {"_id": doc["_id"], "accepted_at": None, "expires_at": {"$gt": now}}, {"$set": {"accepted_at": now}}
            )
        if result.modified_count != 1:
            return None
        return Invite(doc["_id"], doc["account_id"], doc["email"], doc["created_at"], doc["expires_at"], now)

    async def create_session(self, session: Session) -> Session:
        doc = {"_id": session.token_hash, "account_id": session.account_id, "owner_id": session.owner_id,
               "created_at": session.created_at, "expires_at": session.expires_at}
        with driver_errors:
            await self._db.sessions.insert_one(doc)
        return session

    async def session(self, token_hash: str, now: float) -> Session | None:
        with driver_errors:
            doc = await self._db.sessions.find_one({"_id": token_hash, "expires_at": {"$gt": now}})
        if doc is None:
            return None
        return Session(doc["_id"], doc["account_id"], doc["owner_id"], doc["created_at"], doc["expires_at"])

    async def delete_session(self, token_hash: str) -> bool:
        with driver_errors:
            result = await self._db.sessions.delete_one({"_id": token_hash})
        return result.deleted_count == 1

    async def sweep(self, now: float) -> None:
        with driver_errors:
            await self._db.sessions.delete_many({"expires_at": {"$lte": now}})
        await super().sweep(now)


def _owner(doc: dict) -> Owner:
    return Owner(doc["_id"], doc["account_id"], doc["email"], doc["created_at"])
