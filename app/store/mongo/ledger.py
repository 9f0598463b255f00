"""Packages and the ledger in the MongoDB store: exactly-once debits without transactions (insert
pending, debit the account's wallet by compare-and-set, mark applied, clear; see mongo/README.md)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from ...core.errors import Conflict, StoreUnavailable
from ..contracts.leases import settle_leases
from ..contracts.ledger import Charge, LedgerEntry, LedgerQuery, Mismatch, Package, UsageRow, plan_debits
from .base import (
    APPLIED,
    CAS_ATTEMPTS,
    DUPLICATE_KEY,
    PENDING,
    WALLET_FIELDS,
    Index,
    MongoBase,
    Wallet,
    backoff,
    driver_errors,
    package_of,
)

log = logging.getLogger(__name__)

RECOVERY_CHUNK = 1000

INDEXES = {
    "ledger": (
        Index("account_created", (("account_id", 1), ("created_at", 1))),
        # Only pending entries are ever looked up by state (nx-27017 ignores the partial filter).
        Index("pending", (("state", 1),), partial={"state": PENDING}),
        # A key's used tokens (its cap) from the index alone.
        Index("key_tokens", (("key_id", 1), ("total_tokens", 1))),
    ),
}

_LEDGER_FIELDS = tuple(f for f in LedgerEntry.__dataclass_fields__ if f not in ("request_id", "debits"))
_DEBIT_FIELDS = {"account_id": 1, "total_tokens": 1, "created_at": 1, "lease_id": 1, "reserved": 1, "key_lease_id": 1}


@dataclass(slots=True)
class _Debited:
    """What one account's compare-and-set decided: the new version, its inflight list, and per-entry debits."""

    account_id: str
    version: int | None
    inflight: list[dict]
    debits: dict[str, list[list]] = field(default_factory=dict)


class MongoLedger(MongoBase):
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
            await backoff(attempt)
        raise StoreUnavailable("The account is too busy to change; retry shortly.")

    async def packages(self, account_id: str) -> list[Package]:
        wallet = await self._wallet(account_id)
        if wallet is None:
            return []
        return sorted((package_of(account_id, p) for p in wallet.packages), key=lambda p: (p.granted_at, p.id))


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
        with driver_errors:
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
        with driver_errors:
            # {$elemMatch} rather than {"inflight.0": {$exists}} or {$ne: []}: nx-27017 answers those wrongly.
            stuck = await self._db.accounts.find(
                {"inflight": {"$elemMatch": {"rid": {"$exists": True}}}}, WALLET_FIELDS
            ).to_list(None)
        for doc in stuck:
            wallet = Wallet.from_doc(doc)
            debits = {item["rid"]: item["debits"] for item in wallet.inflight}
            done += await self._mark_applied(debits)
            await self._clear_inflight(_Debited(wallet.id, wallet.version, wallet.inflight, debits))
        seen: set[str] = set()
        while True:
            with driver_errors:
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
        self, account_id: str, docs: list[dict], first: tuple[Wallet | None, dict[str, str]] | None = None
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
            await backoff(attempt)
        raise StoreUnavailable("The account is too busy to debit; retry shortly.")

    async def _mark_applied(self, debits: dict[str, list[list]]) -> int:
        """Step (c): a pending entry becomes applied with the debits its inflight record holds."""
        if not debits:
            return 0
        ops = [UpdateOne({"_id": rid, "state": PENDING}, {"$set": {"state": APPLIED, "debits": d}}) for rid, d in debits.items()]
        with driver_errors:
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
        with driver_errors:
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
            with driver_errors:
                # A version swap, not $pull: nx-27017 cannot match inside arrays of subdocuments.
                result = await self._db.accounts.update_one(
                    {"_id": debited.account_id, "version": version},
                    {"$set": {"inflight": kept, "version": version + 1}},
                )
            if result.matched_count:
                return
            version = None
            await backoff(attempt)
        log.warning("inflight of %s left for the next debit to clear", debited.account_id)

    async def _states(self, rids: list[str]) -> dict[str, str]:
        with driver_errors:
            docs = await self._db.ledger.find({"_id": {"$in": rids}}, {"state": 1}).to_list(None)
        return {d["_id"]: d.get("state") for d in docs}

    async def ledger_entry(self, request_id: str) -> LedgerEntry | None:
        with driver_errors:
            doc = await self._db.ledger.find_one({"_id": request_id})
        return _ledger_entry(doc) if doc else None

    async def ledger_count(self, account_id: str | None = None, outcome: str | None = None) -> int:
        query = {k: v for k, v in (("account_id", account_id), ("outcome", outcome)) if v is not None}
        with driver_errors:
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
        with driver_errors:
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
        with driver_errors:
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
            with driver_errors:
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
            await backoff(attempt)
        return found

    async def key_tokens(self, key_id: str) -> int:
        with driver_errors:
            cursor = await self._db.ledger.aggregate([
                {"$match": {"key_id": key_id}},
                {"$group": {"_id": None, "tokens": {"$sum": "$total_tokens"}}},
            ])
            rows = await cursor.to_list(1)
        return int(rows[0]["tokens"]) if rows else 0

    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        match: dict[str, Any] = {"account_id": account_id}
        for name, value in (("model", query.model), ("key_id", query.key_id), ("outcome", query.outcome),
                        ("api", query.api)):
            if value is not None:
                match[name] = value
        if query.api == "chat":
            match["api"] = {"$in": ["chat", None]}  # entries written before the field was kept
        span = {op: v for op, v in (("$gte", query.since), ("$lt", query.until)) if v is not None}
        if span:
            match["created_at"] = span
        if query.after is not None:
            at, rid = query.after
            match["$and"] = [{"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": rid}}]}]
        with driver_errors:
            docs = await self._db.ledger.find(match).sort([("created_at", -1), ("_id", -1)]).limit(query.limit).to_list(None)
        return [_ledger_entry(d) for d in docs]


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
        [package_of(account_id, p) for p in raw_packages],
        [Charge(d["_id"], d["total_tokens"], d["created_at"]) for d in docs],
    )
    return [{**p, "used": used[p["id"]]} for p in raw_packages], debits


def _add(totals: dict[str, int], debits: Iterable[Iterable]) -> None:
    for package_id, tokens in debits:
        totals[package_id] = totals.get(package_id, 0) + tokens
