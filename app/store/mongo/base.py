"""The plumbing every part of the MongoDB store shares: the client (made on first use, never at
import: workers are forked), the one place driver exceptions become ours, index declarations, and
the account document as a wallet changed by compare-and-set."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from ...core.errors import Conflict, StoreUnavailable
from ..contracts.leases import Lease
from ..contracts.ledger import Package

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
PENDING = "pending"
APPLIED = "applied"
DELIVERED = "delivered"
FAILED = "failed"
CAS_ATTEMPTS = 40


@dataclass(frozen=True, slots=True)
class Index:
    """One index of one collection, in the shape ``createIndex(key, options)`` takes."""

    name: str
    key: tuple[tuple[str, int], ...]
    unique: bool = False
    expire_after: int | None = None
    partial: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.unique:
            out["unique"] = True
        if self.expire_after is not None:
            out["expireAfterSeconds"] = self.expire_after
        if self.partial is not None:
            out["partialFilterExpression"] = self.partial
        return out

    def spec(self) -> dict[str, Any]:
        """The JSON form mongo/init.js holds."""
        return {"key": dict(self.key), **self.options()}


WALLET_FIELDS = {"packages": 1, "version": 1, "inflight": 1, "leases": 1, "key_leases": 1}


class DriverErrors:
    """The one place driver exceptions become ours: duplicate keys -> Conflict, the rest -> StoreUnavailable.

    Call sites that expect a duplicate key catch ``DuplicateKeyError``/``BulkWriteError`` inside it.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, PyMongoError):
            return False
        if isinstance(exc, DuplicateKeyError):
            raise Conflict() from exc
        log.warning("mongo store unavailable: %s: %s", type(exc).__name__, exc)
        raise StoreUnavailable() from exc


driver_errors = DriverErrors()


@dataclass(slots=True)
class Wallet:
    """An account document as the debit protocol reads it."""

    id: str
    version: int
    packages: list[dict]
    inflight: list[dict]
    leases: list[dict]
    # Leases on the token caps of the account's keys: {"id", "key_id", "tokens", "expires_at"}.
    key_leases: list[dict]

    @classmethod
    def from_doc(cls, doc: dict) -> "Wallet":
        return cls(
            doc["_id"], doc.get("version", 0), list(doc.get("packages") or []), list(doc.get("inflight") or []),
            list(doc.get("leases") or []), list(doc.get("key_leases") or []),
        )

    def lease_records(self) -> list[Lease]:
        return [Lease(l["id"], self.id, l["tokens"], l["expires_at"]) for l in self.leases]

    def key_lease_records(self, key_id: str | None = None) -> list[Lease]:
        return [
            Lease(l["id"], self.id, l["tokens"], l["expires_at"])
            for l in self.key_leases
            if key_id is None or l["key_id"] == key_id
        ]

    def inflight_ids(self) -> set[str]:
        return {item["rid"] for item in self.inflight}


class MongoBase:
    """A database reached through one client, and its accounts read and swapped as wallets."""

    def __init__(self, url: str, db_name: str, timeout: float = 2.0) -> None:
        self.url = url
        self.db_name = db_name
        self.timeout = timeout
        self._client: AsyncMongoClient | None = None

    @property
    def _db(self):
        if self._client is None:
            ms = max(1, int(self.timeout * 1000))
            # Created on first use, never at import: Sanic forks workers and a client must not cross a fork.
            self._client = AsyncMongoClient(
                self.url,
                serverSelectionTimeoutMS=ms,
                connectTimeoutMS=ms,
                timeoutMS=ms,
                appname="zowy-gateway",
            )
        return self._client[self.db_name]

    async def _wallet(self, account_id: str) -> Wallet | None:
        with driver_errors:
            doc = await self._db.accounts.find_one({"_id": account_id}, WALLET_FIELDS)
        return Wallet.from_doc(doc) if doc else None

    async def _swap(self, wallet: Wallet, changes: dict[str, Any]) -> bool:
        """Write ``changes`` to the account only if nobody changed it since ``wallet`` was read."""
        with driver_errors:
            result = await self._db.accounts.update_one(
                {"_id": wallet.id, "version": wallet.version},
                {"$set": {**changes, "version": wallet.version + 1}},
            )
        return result.matched_count == 1

    async def _wallets(self, account_ids: list[str]) -> dict[str, Wallet]:
        with driver_errors:
            docs = await self._db.accounts.find({"_id": {"$in": account_ids}}, WALLET_FIELDS).to_list(None)
        return {d["_id"]: Wallet.from_doc(d) for d in docs}


def package_of(account_id: str, raw: dict) -> Package:
    return Package(raw["id"], account_id, raw["plan"], raw["tokens"], raw["used"], raw["granted_at"], raw["expires_at"])


async def backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * (2 ** min(attempt, 6)))))
