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
from typing import Any, Callable, Iterable, Mapping

from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ...core.errors import Conflict, StoreUnavailable
from ..contracts import Store
from ..contracts.accounts import Account
from ..contracts.alerts import Alert, AlertSettings
from ..contracts.audit import AuditEvent, AuditQuery
from ..contracts.grants import Code, Topup
from ..contracts.keys import KEY_CONTROLS, KeyRecord
from ..contracts.leases import CapAsk, Lease, LeaseGrant, lease_refused, plan_lease, settle_leases
from ..contracts.ledger import Charge, LedgerEntry, LedgerQuery, Mismatch, Package, UsageRow, plan_debits
from ..contracts.limits import WindowCount, hour_of, minute_of, window_expiry
from ..contracts.owners import Invite, Owner, Session

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
PENDING = "pending"
APPLIED = "applied"
DELIVERED = "delivered"
FAILED = "failed"
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
        # A key's used tokens (its cap) from the index alone.
        Index("key_tokens", (("key_id", 1), ("total_tokens", 1))),
    ),
    "rate_windows": (
        Index("expires_at_ttl", (("expires_at", 1),), expire_after=0),
    ),
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
    "codes": (
        Index("code_hash_unique", (("code_hash", 1),), unique=True),
        Index("batch_id", (("batch_id", 1),)),
    ),
    "topups": (
        Index("account_id", (("account_id", 1),)),
    ),
    "alert_settings": (),
    "alert_outbox": (
        Index("due", (("state", 1), ("next_at", 1))),
        Index("account_created", (("account_id", 1), ("created_at", 1))),
    ),
    "audit": (
        Index("at", (("at", 1),)),
        Index("account_at", (("account_id", 1), ("at", 1))),
    ),
}

_LEDGER_FIELDS = tuple(f for f in LedgerEntry.__dataclass_fields__ if f not in ("request_id", "debits"))
_ACCOUNT_FIELDS = {"name": 1, "created_at": 1}
_KEY_FIELDS = {"key_hash": 0}
_WALLET_FIELDS = {"packages": 1, "version": 1, "inflight": 1, "leases": 1, "key_leases": 1}
_KEY_USE_FIELDS = {"total_tokens": 1, "key_lease_id": 1, "reserved": 1}
_DEBIT_FIELDS = {"account_id": 1, "total_tokens": 1, "created_at": 1, "lease_id": 1, "reserved": 1, "key_lease_id": 1}


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
    leases: list[dict]
    # Leases on the token caps of the account's keys: {"id", "key_id", "tokens", "expires_at"}.
    key_leases: list[dict]

    @classmethod
    def from_doc(cls, doc: dict) -> "_Wallet":
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
        doc = {
            "_id": account_id, "name": name, "created_at": now, "packages": [], "version": 0, "inflight": [], "leases": [],
            "key_leases": [],
        }
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
            **{name: _stored(getattr(record, name)) for name in ("name", "expires_at", "models", "token_cap", "ips")},
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
            changes = {"packages": packages, "inflight": kept}
            # Reservations leave their leases (and their keys' leases on caps) in the same swap that
            # debits them: exactly once too.
            settled = settle_leases(wallet.lease_records(), [(d.get("lease_id"), d.get("reserved", 0)) for d in todo])
            if settled:
                changes["leases"] = [{**l, "tokens": settled.get(l["id"], l["tokens"])} for l in wallet.leases]
            settled = settle_leases(wallet.key_lease_records(), [(d.get("key_lease_id"), d.get("reserved", 0)) for d in todo])
            if settled:
                changes["key_leases"] = [{**l, "tokens": settled.get(l["id"], l["tokens"])} for l in wallet.key_leases]
            if await self._swap(wallet, changes):
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
                "errors": {"$sum": {"$cond": [{"$eq": ["$outcome", "ok"]}, 0, 1]}},
            }},
        ]
        with _driver_errors:
            cursor = await self._db.ledger.aggregate(pipeline)
            rows = await cursor.to_list(None)
        out = [
            UsageRow(r["_id"][:10], r["_id"][10:], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"],
                     r["errors"])
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

    # balance reservations

    async def lease(
        self, account_id: str, lease_id: str, need: int, size: Callable[[int, int], int], now: float, expires_at: float,
        cap: CapAsk | None = None,
    ) -> LeaseGrant:
        for attempt in range(CAS_ATTEMPTS):
            wallet = await self._wallet(account_id)
            if wallet is None:
                return LeaseGrant(0, 0, 0, 0, None if cap is None else LeaseGrant(0, 0, 0, 0))
            packages = [_package(account_id, p) for p in wallet.packages]
            used = await self._key_used(wallet, cap.key_id, now) if cap is not None else 0
            key_records = wallet.key_lease_records(cap.key_id) if cap is not None else None
            grant = plan_lease(packages, wallet.lease_records(), lease_id, need, size, now, cap, used, key_records)
            if lease_refused(grant, need, cap):
                return grant
            # Expired leases are dropped on the way (the whole array is $set, as for packages).
            leases = [l for l in wallet.leases if l["id"] != lease_id and l["expires_at"] > now]
            leases.append({"id": lease_id, "tokens": grant.held, "expires_at": expires_at})
            changes: dict[str, Any] = {"leases": leases}
            if cap is not None:
                kept = [l for l in wallet.key_leases if l["id"] != cap.lease_id and l["expires_at"] > now]
                kept.append({"id": cap.lease_id, "key_id": cap.key_id, "tokens": grant.cap.held, "expires_at": expires_at})
                changes["key_leases"] = kept
            if await self._swap(wallet, changes):
                return grant
            await _backoff(attempt)
        raise StoreUnavailable("The account is too busy to reserve tokens; retry shortly.")

    async def _key_used(self, wallet: _Wallet, key_id: str, now: float) -> int:
        """A key's ledger sum as ``wallet`` (read before) sees it. An entry's debit and settlement move
        the wallet's version, so if one lands after ``wallet`` was read the swap that follows fails;
        else each entry is counted once: settled ones (applied, or in the wallet's inflight) in full,
        and one written but not yet settled without the reservation its lease on the cap still holds.
        The applied ones are summed first: an entry written after the reads is missed for a moment,
        while its lease holds its reservation; none is counted twice."""
        settled = wallet.inflight_ids()
        with _driver_errors:
            cursor = await self._db.ledger.aggregate([
                {"$match": {"key_id": key_id, "state": APPLIED, "_id": {"$nin": sorted(settled)}}},
                {"$group": {"_id": None, "tokens": {"$sum": "$total_tokens"}}},
            ])
            rows = await cursor.to_list(1)
            others = await self._db.ledger.find({"key_id": key_id, "state": PENDING}, _KEY_USE_FIELDS).to_list(None)
            rest = sorted(settled - {d["_id"] for d in others})
            if rest:
                others += await self._db.ledger.find({"_id": {"$in": rest}, "key_id": key_id}, _KEY_USE_FIELDS).to_list(None)
        # "or 0": nx-27017 answers a $group over no document with a null sum where MongoDB answers no row.
        used = int(rows[0]["tokens"] or 0) if rows else 0
        held = {l["id"]: l["tokens"] for l in wallet.key_leases if l["key_id"] == key_id and l["expires_at"] > now}
        waiting: dict[str, int] = {}
        for doc in others:
            used += doc["total_tokens"]
            lease_id, reserved = doc.get("key_lease_id"), doc.get("reserved") or 0
            if doc["_id"] not in settled and lease_id in held and reserved > 0:
                waiting[lease_id] = waiting.get(lease_id, 0) + reserved
        return used - sum(min(tokens, held[lease_id]) for lease_id, tokens in waiting.items())

    async def return_lease(self, account_id: str, lease_id: str, tokens: int, key_id: str | None = None) -> None:
        field_name = "leases" if key_id is None else "key_leases"
        for attempt in range(CAS_ATTEMPTS):
            wallet = await self._wallet(account_id)
            held = wallet.leases if key_id is None or wallet is None else wallet.key_leases
            if wallet is None or not any(l["id"] == lease_id for l in held):
                return
            changed = [{**l, "tokens": max(0, l["tokens"] - tokens)} if l["id"] == lease_id else l for l in held]
            if await self._swap(wallet, {field_name: changed}):
                return
            await _backoff(attempt)
        raise StoreUnavailable("The account is too busy to return reserved tokens; retry shortly.")

    async def leases(self, account_id: str) -> list[Lease]:
        wallet = await self._wallet(account_id)
        return sorted(wallet.lease_records(), key=lambda l: l.id) if wallet else []

    async def key_leases(self, key_id: str) -> list[Lease]:
        with _driver_errors:
            doc = await self._db.api_keys.find_one({"_id": key_id}, {"account_id": 1})
        wallet = await self._wallet(doc["account_id"]) if doc else None
        return sorted(wallet.key_lease_records(key_id), key=lambda l: l.id) if wallet else []

    async def expired_leases(self, before: float) -> list[Lease]:
        with _driver_errors:
            docs = await self._db.accounts.find(
                {"leases": {"$elemMatch": {"expires_at": {"$lt": before}}}}, _WALLET_FIELDS
            ).to_list(None)
        return [l for d in docs for l in _Wallet.from_doc(d).lease_records() if l.expires_at < before]

    async def sweep(self, now: float) -> None:
        """Drop expired leases and sessions (rate windows expire by their TTL index)."""
        with _driver_errors:
            capped = await self._db.accounts.find(
                {"key_leases": {"$elemMatch": {"expires_at": {"$lt": now}}}}, {"_id": 1}
            ).to_list(None)
        for account_id in {l.account_id for l in await self.expired_leases(now)} | {d["_id"] for d in capped}:
            for attempt in range(CAS_ATTEMPTS):
                wallet = await self._wallet(account_id)
                if wallet is None:
                    break
                leases = [l for l in wallet.leases if l["expires_at"] >= now]
                key_leases = [l for l in wallet.key_leases if l["expires_at"] >= now]
                if len(leases) + len(key_leases) == len(wallet.leases) + len(wallet.key_leases):
                    break
                if await self._swap(wallet, {"leases": leases, "key_leases": key_leases}):
                    break
                await _backoff(attempt)
        with _driver_errors:
            await self._db.sessions.delete_many({"expires_at": {"$lte": now}})

    # rate windows

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
                if hour_count + take > per_hour or minute_count + take > per_minute:
                    return WindowCount(False, minute_count, hour_count)
                # Not full, yet not counted: two first upserts raced (MongoDB), or nx-27017 swallowed
                # a server error into None. Ask again.
        raise StoreUnavailable("The rate window could not be counted.")


    # key controls

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        fields = {name: _stored(value) for name, value in changes.items() if name in KEY_CONTROLS}
        with _driver_errors:
            if fields:
                await self._db.api_keys.update_one({"_id": key_id}, {"$set": fields})
            doc = await self._db.api_keys.find_one({"_id": key_id}, _KEY_FIELDS)
        return _key(doc) if doc else None

    async def key_tokens(self, key_id: str) -> int:
        with _driver_errors:
            cursor = await self._db.ledger.aggregate([
                {"$match": {"key_id": key_id}},
                {"$group": {"_id": None, "tokens": {"$sum": "$total_tokens"}}},
            ])
            rows = await cursor.to_list(1)
        return int(rows[0]["tokens"]) if rows else 0

    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        match: dict[str, Any] = {"account_id": account_id}
        for name, value in (("model", query.model), ("key_id", query.key_id), ("outcome", query.outcome)):
            if value is not None:
                match[name] = value
        span = {op: v for op, v in (("$gte", query.since), ("$lt", query.until)) if v is not None}
        if span:
            match["created_at"] = span
        if query.after is not None:
            at, rid = query.after
            match["$and"] = [{"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": rid}}]}]
        with _driver_errors:
            docs = await self._db.ledger.find(match).sort([("created_at", -1), ("_id", -1)]).limit(query.limit).to_list(None)
        return [_ledger_entry(d) for d in docs]

    # owners, invites, sessions

    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        doc = {"_id": owner.id, "account_id": owner.account_id, "email": owner.email,
               "password": password_hash, "created_at": owner.created_at}
        with _driver_errors:
            if await self._db.accounts.count_documents({"_id": owner.account_id}, limit=1) == 0:
                raise Conflict(f"The owner could not be stored: there is no account '{owner.account_id}'.")
            try:
                await self._db.owners.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"An owner with email '{owner.email}' already exists.", param="email") from None
        return owner

    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        with _driver_errors:
            doc = await self._db.owners.find_one({"email": email})
        return (_owner(doc), doc["password"]) if doc else None

    async def owners(self, account_id: str) -> list[Owner]:
        with _driver_errors:
            docs = await self._db.owners.find({"account_id": account_id}, {"password": 0}).sort(
                [("created_at", 1), ("_id", 1)]
            ).to_list(None)
        return [_owner(d) for d in docs]

    async def create_invite(self, invite: Invite, token_hash: str) -> Invite:
        doc = {"_id": invite.id, "token_hash": token_hash, "account_id": invite.account_id, "email": invite.email,
               "created_at": invite.created_at, "expires_at": invite.expires_at, "accepted_at": invite.accepted_at}
        with _driver_errors:
            if await self._db.accounts.count_documents({"_id": invite.account_id}, limit=1) == 0:
                raise Conflict(f"The invite could not be stored: there is no account '{invite.account_id}'.")
            try:
                await self._db.invites.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict("The invite could not be stored; create it again.") from None
        return invite

    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        with _driver_errors:
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
        with _driver_errors:
            await self._db.sessions.insert_one(doc)
        return session

    async def session(self, token_hash: str, now: float) -> Session | None:
        with _driver_errors:
            doc = await self._db.sessions.find_one({"_id": token_hash, "expires_at": {"$gt": now}})
        if doc is None:
            return None
        return Session(doc["_id"], doc["account_id"], doc["owner_id"], doc["created_at"], doc["expires_at"])

    async def delete_session(self, token_hash: str) -> bool:
        with _driver_errors:
            result = await self._db.sessions.delete_one({"_id": token_hash})
        return result.deleted_count == 1

    # redemption codes and top-ups

    async def create_codes(self, codes: list[tuple[Code, str]]) -> None:
        docs = [{"_id": c.id, "code_hash": h, "batch_id": c.batch_id, "plan": c.plan, "tokens": c.tokens,
                 "days": c.days, "created_at": c.created_at, "expires_at": c.expires_at,
                 "redeemed_at": c.redeemed_at, "redeemed_by": c.redeemed_by} for c, h in codes]
        if not docs:
            return
        with _driver_errors:
            try:
                await self._db.codes.insert_many(docs, ordered=True)
            except (BulkWriteError, DuplicateKeyError):
                raise Conflict("The codes could not be stored; create the batch again.") from None

    async def code_by_hash(self, code_hash: str) -> Code | None:
        with _driver_errors:
            doc = await self._db.codes.find_one({"code_hash": code_hash})
        return _code(doc) if doc else None

    async def codes(self, batch_id: str) -> list[Code]:
        with _driver_errors:
            docs = await self._db.codes.find({"batch_id": batch_id}).sort([("created_at", 1), ("_id", 1)]).to_list(None)
        return [_code(d) for d in docs]

    async def claim_code(self, code_id: str, account_id: str, now: float) -> bool:
        with _driver_errors:
            result = await self._db.codes.update_one(
                {"_id": code_id, "redeemed_at": None, "expires_at": {"$gt": now}},
                {"$set": {"redeemed_at": now, "redeemed_by": account_id}},
            )
        return result.modified_count == 1

    async def record_topup(self, topup: Topup) -> tuple[Topup, bool]:
        doc = {"_id": topup.event_id, "account_id": topup.account_id, "package_id": topup.package_id,
               "plan": topup.plan, "tokens": topup.tokens, "days": topup.days, "received_at": topup.received_at}
        with _driver_errors:
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

    # low-balance alerts

    async def alert_settings(self, account_id: str) -> AlertSettings | None:
        with _driver_errors:
            doc = await self._db.alert_settings.find_one({"_id": account_id})
        if doc is None:
            return None
        return AlertSettings(doc["_id"], doc.get("url"), tuple(doc.get("thresholds") or ()), doc["updated_at"])

    async def set_alert_settings(self, settings: AlertSettings) -> None:
        doc = {"url": settings.url, "thresholds": list(settings.thresholds), "updated_at": settings.updated_at}
        with _driver_errors:
            # Insert, else update: nx-27017's upserts do not take _id from the filter.
            try:
                await self._db.alert_settings.insert_one({"_id": settings.account_id, **doc})
            except DuplicateKeyError:
                await self._db.alert_settings.update_one({"_id": settings.account_id}, {"$set": doc})

    async def enqueue_alert(self, alert: Alert) -> bool:
        with _driver_errors:
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
        with _driver_errors:
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
        with _driver_errors:
            result = await self._db.alert_outbox.update_one(
                {"_id": alert_id, "lease_owner": owner, "state": PENDING},
                {"$set": {"state": DELIVERED, "delivered_at": now, "lease_owner": None, "lease_until": 0.0, "last_error": None}},
            )
        return result.modified_count == 1

    async def retry_alert(self, alert_id: str, owner: str, next_at: float, error: str, give_up: bool = False) -> bool:
        changes = {"next_at": next_at, "last_error": error, "lease_owner": None, "lease_until": 0.0}
        if give_up:
            changes.update(state=FAILED, failed_at=next_at)
        with _driver_errors:
            result = await self._db.alert_outbox.update_one(
                {"_id": alert_id, "lease_owner": owner, "state": PENDING}, {"$set": changes}
            )
        return result.modified_count == 1

    async def alerts(self, account_id: str, limit: int = 50) -> list[Alert]:
        with _driver_errors:
            docs = await self._db.alert_outbox.find({"account_id": account_id}).sort(
                [("created_at", -1), ("_id", -1)]
            ).limit(limit).to_list(None)
        return [_alert(d) for d in docs]

    # audit log

    async def append_audit(self, event: AuditEvent) -> None:
        doc = {"_id": event.id, "at": event.at, "actor": event.actor, "action": event.action,
               "account_id": event.account_id, "target": event.target, "before": event.before,
               "after": event.after, "ip": event.ip}
        with _driver_errors:
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
        with _driver_errors:
            docs = await self._db.audit.find(match).sort([("at", -1), ("_id", -1)]).limit(query.limit).to_list(None)
        return [
            AuditEvent(d["_id"], d["at"], d["actor"], d["action"], d.get("account_id"), d.get("target"),
                       d.get("before"), d.get("after"), d.get("ip"))
            for d in docs
        ]


def _account(doc: dict) -> Account:
    return Account(doc["_id"], doc["name"], doc["created_at"])


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
    doc["state"] = PENDING if entry.total_tokens > 0 or entry.reserved > 0 else APPLIED
    doc["debits"] = []
    return doc


def _debit_view(doc: dict) -> dict:
    return {k: doc[k] for k in ("_id", "account_id", "total_tokens", "created_at", "lease_id", "reserved", "key_lease_id")}


def _ledger_entry(doc: dict) -> LedgerEntry:
    values = {name: doc[name] for name in _LEDGER_FIELDS if name in doc}
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


def _owner(doc: dict) -> Owner:
    return Owner(doc["_id"], doc["account_id"], doc["email"], doc["created_at"])


def _code(doc: dict) -> Code:
    return Code(doc["_id"], doc["batch_id"], doc["plan"], doc["tokens"], doc["days"], doc["created_at"],
                doc["expires_at"], doc.get("redeemed_at"), doc.get("redeemed_by"))


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
