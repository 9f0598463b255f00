"""The MongoDB store, on PyMongo's native async API; the only module that imports pymongo.

Collections and indexes are declared once in ``INDEXES``. Each account document is also its
wallet: package balances, a ``version`` for compare-and-set, and the ``inflight`` debits of
ledger entries not yet marked applied. Debits are exactly-once without transactions; see
``record`` and mongo/README.md.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from .. import ratelimit
from ..errors import StoreUnavailable
from ..metering import LedgerEntry
from .base import (
    Account,
    Charge,
    Conflict,
    KeyRecord,
    Mismatch,
    Package,
    Store,
    UsageRow,
    WindowCount,
    plan_debits,
)

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
PENDING = "pending"
APPLIED = "applied"
CAS_ATTEMPTS = 40
RECOVERY_CHUNK = 1000


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


# Every collection the store uses and all its indexes; init() creates them, mongo/init.js mirrors them.
INDEXES: dict[str, tuple[Index, ...]] = {
    "accounts": (
        Index("name_unique", (("name", 1),), unique=True),
    ),
    "api_keys": (
        Index("key_hash_unique", (("key_hash", 1),), unique=True),
        Index("account_id", (("account_id", 1),)),
    ),
    "ledger": (
        Index("account_created", (("account_id", 1), ("created_at", 1))),
        # Only pending entries are ever looked up by state (nx-27017 ignores the partial filter).
        Index("pending", (("state", 1),), partial={"state": PENDING}),
    ),
    "rate_windows": (
        Index("expires_at_ttl", (("expires_at", 1),), expire_after=0),
    ),
}

_LEDGER_FIELDS = tuple(f for f in LedgerEntry.__dataclass_fields__ if f not in ("request_id", "debits"))
_ACCOUNT_FIELDS = {"name": 1, "created_at": 1}
_KEY_FIELDS = {"key_hash": 0}
_WALLET_FIELDS = {"packages": 1, "version": 1, "inflight": 1}
_DEBIT_FIELDS = {"account_id": 1, "total_tokens": 1, "created_at": 1}


class _DriverErrors:
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


_driver_errors = _DriverErrors()


@dataclass(slots=True)
class _Wallet:
    """An account document as the debit protocol reads it."""

    id: str
    version: int
    packages: list[dict]
    inflight: list[dict]

    @classmethod
    def from_doc(cls, doc: dict) -> "_Wallet":
        return cls(doc["_id"], doc.get("version", 0), list(doc.get("packages") or []), list(doc.get("inflight") or []))

    def inflight_ids(self) -> set[str]:
        return {item["rid"] for item in self.inflight}


@dataclass(slots=True)
class _Debited:
    """What one account's compare-and-set decided: the new version, its inflight list, and per-entry debits."""

    account_id: str
    version: int | None
    inflight: list[dict]
    debits: dict[str, list[list]] = field(default_factory=dict)


class MongoStore(Store):
    def __init__(self, url: str, db_name: str, timeout: float = 2.0) -> None:
        self.url = url
        self.db_name = db_name
        self.timeout = timeout
        self._client: AsyncMongoClient | None = None

    # plumbing

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

    async def init(self) -> None:
        db = self._db
        with _driver_errors:
            for collection, indexes in INDEXES.items():
                for index in indexes:
                    await db[collection].create_index(list(index.key), **index.options())
        await self.recover()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        with _driver_errors:
            await self._db.command("ping")

    # accounts

    async def create_account(self, account_id: str, name: str, now: float) -> Account:
        doc = {"_id": account_id, "name": name, "created_at": now, "packages": [], "version": 0, "inflight": []}
        with _driver_errors:
            try:
                await self._db.accounts.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"An account named '{name}' already exists.", param="name") from None
        return Account(account_id, name, now)

    async def account(self, id_or_name: str) -> Account | None:
        with _driver_errors:
            docs = await self._db.accounts.find(
                {"$or": [{"_id": id_or_name}, {"name": id_or_name}]}, _ACCOUNT_FIELDS
            ).to_list(2)
        if not docs:
            return None
        doc = next((d for d in docs if d["_id"] == id_or_name), docs[0])
        return _account(doc)

    async def accounts(self) -> list[Account]:
        with _driver_errors:
            docs = await self._db.accounts.find({}, _ACCOUNT_FIELDS).sort([("created_at", 1), ("_id", 1)]).to_list(None)
        return [_account(d) for d in docs]

    # keys

    async def create_key(self, record: KeyRecord, key_hash: str) -> KeyRecord:
        doc = {
            "_id": record.id, "account_id": record.account_id, "key_hash": key_hash, "prefix": record.prefix,
            "created_at": record.created_at, "revoked_at": record.revoked_at,
            "per_minute": record.per_minute, "per_hour": record.per_hour,
        }
        with _driver_errors:
            if await self._db.accounts.count_documents({"_id": record.account_id}, limit=1) == 0:
                raise Conflict(f"The key could not be stored: there is no account '{record.account_id}'.")
            try:
                await self._db.api_keys.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict("The key could not be stored; create it again.") from None
        return record

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        with _driver_errors:
            doc = await self._db.api_keys.find_one({"key_hash": key_hash}, _KEY_FIELDS)
        return _key(doc) if doc else None

    async def key(self, key_id: str) -> KeyRecord | None:
        with _driver_errors:
            doc = await self._db.api_keys.find_one({"_id": key_id}, _KEY_FIELDS)
        return _key(doc) if doc else None

    async def keys(self, account_id: str) -> list[KeyRecord]:
        with _driver_errors:
            docs = await self._db.api_keys.find({"account_id": account_id}, _KEY_FIELDS).sort(
                [("created_at", 1), ("_id", 1)]
            ).to_list(None)
        return [_key(d) for d in docs]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        with _driver_errors:
            result = await self._db.api_keys.update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}})
            if result.matched_count:
                return True
            return await self._db.api_keys.count_documents({"_id": key_id}, limit=1) > 0

    async def set_key_limits(self, key_id: str, per_minute: int | None, per_hour: int | None) -> bool:
        with _driver_errors:
            result = await self._db.api_keys.update_one(
                {"_id": key_id}, {"$set": {"per_minute": per_minute, "per_hour": per_hour}}
            )
        return result.matched_count == 1

    # packages

    async def grant_package(self, package: Package) -> Package:
        entry = {
            "id": package.id, "plan": package.plan, "tokens": package.tokens, "used": package.used,
            "granted_at": package.granted_at, "expires_at": package.expires_at,
        }
        for attempt in range(CAS_ATTEMPTS):
            wallet = await self._wallet(package.account_id)
            if wallet is None:
                raise Conflict(f"The package could not be stored: there is no account '{package.account_id}'.")
            if any(p["id"] == package.id for p in wallet.packages):
                raise Conflict(f"A package with id '{package.id}' already exists.", param="id")
            # The whole array is $set: nx-27017 stores $push-ed subdocuments as JSON strings.
            if await self._swap(wallet, {"packages": wallet.packages + [entry]}):
                return package
            await _backoff(attempt)
        raise StoreUnavailable("The account is too busy to change; retry shortly.")

    async def packages(self, account_id: str) -> list[Package]:
        wallet = await self._wallet(account_id)
        if wallet is None:
            return []
        return sorted((_package(account_id, p) for p in wallet.packages), key=lambda p: (p.granted_at, p.id))

    # ledger

    async def record(self, entries: list[LedgerEntry]) -> int:
        """Exactly-once without transactions: insert pending, debit by compare-and-set, mark applied.

        (a) insert ledger docs as ``pending`` (a duplicate ``_id`` means already written); (b) per
        account, move the balances and remember each entry's debits in ``inflight`` in one
        versioned update; (c) mark the entries ``applied`` with their debits; (d) drop them from
        ``inflight``. A crash between steps leaves a state ``recover`` finishes.
        """
        if not entries:
            return 0
        unique = {e.request_id: e for e in entries}
        docs = [_ledger_doc(e) for e in unique.values()]
        duplicates: set[str] = set()
        with _driver_errors:
            try:
                await self._db.ledger.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(err.get("code") != DUPLICATE_KEY for err in errors) or exc.details.get("writeConcernErrors"):
                    raise
                duplicates = {docs[err["index"]]["_id"] for err in errors}
            pending = [_debit_view(d) for d in docs if d["state"] == PENDING and d["_id"] not in duplicates]
            if duplicates:
                # Written before (a replay, or another instance): finish any that are still pending.
                pending += await self._db.ledger.find(
                    {"_id": {"$in": sorted(duplicates)}, "state": PENDING}, _DEBIT_FIELDS
                ).to_list(None)
        if pending:
            await self._apply(pending)
        return len(docs) - len(duplicates)

    async def recover(self) -> int:
        """Finish entries a writer left half-done; safe to run at any time, from any instance.

        Returns how many ledger entries it marked applied.
        """
        done = 0
        with _driver_errors:
            # {$elemMatch} rather than {"inflight.0": {$exists}} or {$ne: []}: nx-27017 answers those wrongly.
            stuck = await self._db.accounts.find(
                {"inflight": {"$elemMatch": {"rid": {"$exists": True}}}}, _WALLET_FIELDS
            ).to_list(None)
        for doc in stuck:
            wallet = _Wallet.from_doc(doc)
            debits = {item["rid"]: item["debits"] for item in wallet.inflight}
            done += await self._mark_applied(debits)
            await self._clear_inflight(_Debited(wallet.id, wallet.version, wallet.inflight, debits))
        seen: set[str] = set()
        while True:
            with _driver_errors:
                pending = await self._db.ledger.find({"state": PENDING}, _DEBIT_FIELDS).limit(RECOVERY_CHUNK).to_list(None)
            fresh = [d for d in pending if d["_id"] not in seen]
            if not fresh:
                return done
            seen.update(d["_id"] for d in fresh)
            done += await self._apply(fresh)

    async def _apply(self, pending: list[dict]) -> int:
        """Debit pending ledger docs (``_id, account_id, total_tokens, created_at``) exactly once."""
        by_account: dict[str, list[dict]] = {}
        for doc in pending:
            by_account.setdefault(doc["account_id"], []).append(doc)
        # The first attempt of every account shares two reads (accounts, then ledger states);
        # an account whose swap loses a race reads again on its own.
        wallets = await self._wallets(list(by_account))
        states = await self._states([d["_id"] for d in pending] + [i["rid"] for w in wallets.values() for i in w.inflight])
        outcomes = await asyncio.gather(
            *(self._debit_account(aid, docs, (wallets.get(aid), states)) for aid, docs in by_account.items()),
            return_exceptions=True,
        )
        debited = [o for o in outcomes if isinstance(o, _Debited)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        # Whatever was debited gets finished even if another account failed; recover() covers a crash here.
        decided: dict[str, list[list]] = {}
        for outcome in debited:
            decided.update(outcome.debits)
        done = await self._mark_applied(decided)
        await self._clear_all([o for o in debited if o.version is not None and o.debits])
        if failure is not None:
            raise failure
        return done

    async def _debit_account(
        self, account_id: str, docs: list[dict], first: tuple[_Wallet | None, dict[str, str]] | None = None
    ) -> _Debited:
        """Step (b) for one account: one versioned update moves balances and records the debits as inflight."""
        rids = [d["_id"] for d in docs]
        for attempt in range(CAS_ATTEMPTS):
            if attempt == 0 and first is not None:
                wallet, states = first
            else:
                wallet = await self._wallet(account_id)
                states = {}
                if wallet is not None:
                    # Read after the account: an entry debited since then has moved the version, so the swap fails.
                    states = await self._states(rids + [item["rid"] for item in wallet.inflight])
            if wallet is None:
                return _Debited(account_id, None, [], {rid: [] for rid in rids})
            inflight = wallet.inflight_ids()
            todo = [d for d in docs if d["_id"] not in inflight and states.get(d["_id"]) == PENDING]
            # Entries already marked applied need no inflight record; dropping them here is step (d) for them.
            kept = [item for item in wallet.inflight if states.get(item["rid"]) != APPLIED]
            if not todo and len(kept) == len(wallet.inflight):
                return _Debited(account_id, None, kept)
            packages, debits = _allocate(account_id, wallet.packages, todo)
            kept += [{"rid": rid, "debits": d} for rid, d in debits.items()]
            if await self._swap(wallet, {"packages": packages, "inflight": kept}):
                return _Debited(account_id, wallet.version + 1, kept, debits)
            await _backoff(attempt)
        raise StoreUnavailable("The account is too busy to debit; retry shortly.")

    async def _mark_applied(self, debits: dict[str, list[list]]) -> int:
        """Step (c): a pending entry becomes applied with the debits its inflight record holds."""
        if not debits:
            return 0
        ops = [UpdateOne({"_id": rid, "state": PENDING}, {"$set": {"state": APPLIED, "debits": d}}) for rid, d in debits.items()]
        with _driver_errors:
            result = await self._db.ledger.bulk_write(ops, ordered=False)
        return result.modified_count

    async def _clear_all(self, debited: list[_Debited]) -> None:
        """Step (d) for many accounts in one bulk write; an account another writer changed meanwhile is retried alone."""
        ops = []
        for outcome in debited:
            kept = [item for item in outcome.inflight if item["rid"] not in outcome.debits]
            ops.append(UpdateOne(
                {"_id": outcome.account_id, "version": outcome.version},
                {"$set": {"inflight": kept, "version": outcome.version + 1}},
            ))
        if not ops:
            return
        with _driver_errors:
            result = await self._db.accounts.bulk_write(ops, ordered=False)
        if result.matched_count < len(ops):
            # Which swaps lost is not reported per operation: re-read those accounts; clearing is idempotent.
            await asyncio.gather(*(self._clear_inflight(_Debited(o.account_id, None, [], o.debits)) for o in debited))

    async def _clear_inflight(self, debited: _Debited) -> None:
        """Step (d): drop applied entries from the account's inflight list (left for the next debit if contended)."""
        version, inflight = debited.version, debited.inflight
        done = set(debited.debits)
        for attempt in range(CAS_ATTEMPTS):
            if version is None:
                wallet = await self._wallet(debited.account_id)
                if wallet is None:
                    return
                version, inflight = wallet.version, wallet.inflight
            kept = [item for item in inflight if item["rid"] not in done]
            if len(kept) == len(inflight):
                return
            with _driver_errors:
                # A version swap, not $pull: nx-27017 cannot match inside arrays of subdocuments.
                result = await self._db.accounts.update_one(
                    {"_id": debited.account_id, "version": version},
                    {"$set": {"inflight": kept, "version": version + 1}},
                )
            if result.matched_count:
                return
            version = None
            await _backoff(attempt)
        log.warning("inflight of %s left for the next debit to clear", debited.account_id)

    async def _wallet(self, account_id: str) -> _Wallet | None:
        with _driver_errors:
            doc = await self._db.accounts.find_one({"_id": account_id}, _WALLET_FIELDS)
        return _Wallet.from_doc(doc) if doc else None

    async def _swap(self, wallet: _Wallet, changes: dict[str, Any]) -> bool:
        """Write ``changes`` to the account only if nobody changed it since ``wallet`` was read."""
        with _driver_errors:
            result = await self._db.accounts.update_one(
                {"_id": wallet.id, "version": wallet.version},
                {"$set": {**changes, "version": wallet.version + 1}},
            )
        return result.matched_count == 1

    async def _wallets(self, account_ids: list[str]) -> dict[str, _Wallet]:
        with _driver_errors:
            docs = await self._db.accounts.find({"_id": {"$in": account_ids}}, _WALLET_FIELDS).to_list(None)
        return {d["_id"]: _Wallet.from_doc(d) for d in docs}

    async def _states(self, rids: list[str]) -> dict[str, str]:
        with _driver_errors:
            docs = await self._db.ledger.find({"_id": {"$in": rids}}, {"state": 1}).to_list(None)
        return {d["_id"]: d.get("state") for d in docs}

    async def ledger_entry(self, request_id: str) -> LedgerEntry | None:
        with _driver_errors:
            doc = await self._db.ledger.find_one({"_id": request_id})
        return _ledger_entry(doc) if doc else None

    async def ledger_count(self, account_id: str | None = None, outcome: str | None = None) -> int:
        query = {k: v for k, v in (("account_id", account_id), ("outcome", outcome)) if v is not None}
        with _driver_errors:
            return await self._db.ledger.count_documents(query)

    async def usage(self, account_id: str, since: float, until: float) -> list[UsageRow]:
        pipeline = [
            {"$match": {"account_id": account_id, "created_at": {"$gte": since, "$lt": until}}},
            # One string key, not {day, model}: nx-27017 groups a document _id as a literal.
            # "day" is the precomputed fixed-width "%Y-%m-%d", so the key splits at 10.
            {"$group": {
                "_id": {"$concat": ["$day", "$model"]},
                "requests": {"$sum": 1},
                "prompt_tokens": {"$sum": "$prompt_tokens"},
                "completion_tokens": {"$sum": "$completion_tokens"},
                "total_tokens": {"$sum": "$total_tokens"},
            }},
        ]
        with _driver_errors:
            cursor = await self._db.ledger.aggregate(pipeline)
            rows = await cursor.to_list(None)
        out = [
            UsageRow(r["_id"][:10], r["_id"][10:], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"])
            for r in rows
        ]
        return sorted(out, key=lambda r: (r.day, r.model))

    async def reconcile(self) -> list[Mismatch]:
        """Finish pending entries, then check each account's packages against its ledger debits.

        Each account is read before and after its ledger; if a debit landed in between, it is read again.
        """
        await self.recover()
        with _driver_errors:
            # find, not distinct("_id"): nx-27017 fails distinct on _id.
            ids = [d["_id"] for d in await self._db.accounts.find({}, {"_id": 1}).to_list(None)]
        out: list[Mismatch] = []
        for account_id in ids:
            out.extend(await self._reconcile_account(account_id))
        return out

    async def _reconcile_account(self, account_id: str) -> list[Mismatch]:
        found: list[Mismatch] = []
        for attempt in range(CAS_ATTEMPTS):
            wallet = await self._wallet(account_id)
            if wallet is None:
                return []
            # Inflight entries count by their inflight record whatever their ledger state says.
            totals: dict[str, int] = {}
            for item in wallet.inflight:
                _add(totals, item["debits"])
            rids = sorted(wallet.inflight_ids())
            with _driver_errors:
                cursor = self._db.ledger.find(
                    {"account_id": account_id, "state": APPLIED, "_id": {"$nin": rids}}, {"debits": 1}
                )
                async for doc in cursor:
                    _add(totals, doc.get("debits") or [])
            found = []
            for p in wallet.packages:
                expected = totals.pop(p["id"], 0)
                if expected != p["used"]:
                    found.append(Mismatch(p["id"], account_id, p["used"], expected))
            found.extend(Mismatch(pid, account_id, 0, tokens) for pid, tokens in totals.items())
            again = await self._wallet(account_id)
            if again is not None and again.version == wallet.version:
                return found
            await _backoff(attempt)
        return found

    # rate windows

    async def hit(self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None) -> WindowCount:
        try:
            async with asyncio.timeout(timeout):
                return await self._hit(key_id, per_minute, per_hour, now)
        except TimeoutError:
            raise StoreUnavailable("The rate window could not be counted in time.") from None

    async def _hit(self, key_id: str, per_minute: int, per_hour: int, now: float) -> WindowCount:
        hour = ratelimit.hour_of(now)
        minute = str(ratelimit.minute_of(now) - hour * 60)
        doc_id = f"{key_id}:{hour}"
        expires = datetime.fromtimestamp(ratelimit.window_expiry(now), tz=timezone.utc)
        slot = f"m.{minute}"
        # expires_at as an equality in the filter: the upsert copies it as a real BSON date, which
        # nx-27017 does not do for $setOnInsert (ignored) or $set (stored as a string).
        # "missing or below the limit" spelled out in an $and: nx-27017 has no $not, ignores sibling
        # fields of a top-level $or in writes, and its SQL $nor never matches a missing field.
        query = {
            "_id": doc_id,
            "expires_at": expires,
            "h": {"$lt": per_hour},
            "$and": [{"$or": [{slot: {"$exists": False}}, {slot: {"$lt": per_minute}}]}],
        }
        update = {"$inc": {"h": 1, slot: 1}}
        rates = self._db.rate_windows
        with _driver_errors:
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
                if hour_count >= per_hour or minute_count >= per_minute:
                    return WindowCount(False, minute_count, hour_count)
                # Not full, yet not counted: two first upserts raced (MongoDB), or nx-27017 swallowed
                # a server error into None. Ask again.
        raise StoreUnavailable("The rate window could not be counted.")


def _account(doc: dict) -> Account:
    return Account(doc["_id"], doc["name"], doc["created_at"])


def _key(doc: dict) -> KeyRecord:
    return KeyRecord(
        doc["_id"], doc["account_id"], doc["prefix"], doc["created_at"],
        doc.get("revoked_at"), doc.get("per_minute"), doc.get("per_hour"),
    )


def _package(account_id: str, raw: dict) -> Package:
    return Package(raw["id"], account_id, raw["plan"], raw["tokens"], raw["used"], raw["granted_at"], raw["expires_at"])


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _ledger_doc(entry: LedgerEntry) -> dict:
    doc: dict[str, Any] = {"_id": entry.request_id}
    for name in _LEDGER_FIELDS:
        doc[name] = getattr(entry, name)
    doc["day"] = _day(entry.created_at)
    # Nothing to debit: written applied at once.
    doc["state"] = PENDING if entry.total_tokens > 0 else APPLIED
    doc["debits"] = []
    return doc


def _debit_view(doc: dict) -> dict:
    return {k: doc[k] for k in ("_id", "account_id", "total_tokens", "created_at")}


def _ledger_entry(doc: dict) -> LedgerEntry:
    values = {name: doc.get(name) for name in _LEDGER_FIELDS}
    values["attempts"] = doc.get("attempts", 1)
    return LedgerEntry(request_id=doc["_id"], debits=[list(d) for d in doc.get("debits") or []], **values)


def _allocate(account_id: str, raw_packages: list[dict], docs: list[dict]) -> tuple[list[dict], dict[str, list[list]]]:
    """The shared debit rule over an account document's packages; returns them updated."""
    used, debits = plan_debits(
        [_package(account_id, p) for p in raw_packages],
        [Charge(d["_id"], d["total_tokens"], d["created_at"]) for d in docs],
    )
    return [{**p, "used": used[p["id"]]} for p in raw_packages], debits


def _add(totals: dict[str, int], debits: Iterable[Iterable]) -> None:
    for package_id, tokens in debits:
        totals[package_id] = totals.get(package_id, 0) + tokens


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * (2 ** min(attempt, 6)))))
