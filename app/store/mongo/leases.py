"""Leases on balances and on keys' token caps in the MongoDB store: held in the account's wallet
and changed with it by compare-and-set, in the same swap as the debits that settle them."""
from __future__ import annotations

from typing import Any, Callable

from ...core.errors import StoreUnavailable
from ..contracts.leases import CapAsk, Lease, LeaseGrant, lease_refused, plan_lease
from .base import APPLIED, CAS_ATTEMPTS, PENDING, WALLET_FIELDS, MongoBase, Wallet, backoff, driver_errors, package_of

_KEY_USE_FIELDS = {"total_tokens": 1, "key_lease_id": 1, "reserved": 1}


class MongoLeases(MongoBase):
    async def lease(
        self, account_id: str, lease_id: str, need: int, size: Callable[[int, int], int], now: float, expires_at: float,
        cap: CapAsk | None = None,
    ) -> LeaseGrant:
        for attempt in range(CAS_ATTEMPTS):
            wallet = await self._wallet(account_id)
            if wallet is None:
                return LeaseGrant(0, 0, 0, 0, None if cap is None else LeaseGrant(0, 0, 0, 0))
            packages = [package_of(account_id, p) for p in wallet.packages]
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
            await backoff(attempt)
        raise StoreUnavailable("The account is too busy to reserve tokens; retry shortly.")

    async def _key_used(self, wallet: Wallet, key_id: str, now: float) -> int:
        """A key's ledger sum as ``wallet`` (read before) sees it. An entry's debit and settlement move
        the wallet's version, so if one lands after ``wallet`` was read the swap that follows fails;
        else each entry is counted once: settled ones (applied, or in the wallet's inflight) in full,
        and one written but not yet settled without the reservation its lease on the cap still holds.
        The applied ones are summed first: an entry written after the reads is missed for a moment,
        while its lease holds its reservation; none is counted twice."""
        settled = wallet.inflight_ids()
        with driver_errors:
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
            await backoff(attempt)
        raise StoreUnavailable("The account is too busy to return reserved tokens; retry shortly.")

    async def leases(self, account_id: str) -> list[Lease]:
        wallet = await self._wallet(account_id)
        return sorted(wallet.lease_records(), key=lambda l: l.id) if wallet else []

    async def key_leases(self, key_id: str) -> list[Lease]:
        with driver_errors:
            doc = await self._db.api_keys.find_one({"_id": key_id}, {"account_id": 1})
        wallet = await self._wallet(doc["account_id"]) if doc else None
        return sorted(wallet.key_lease_records(key_id), key=lambda l: l.id) if wallet else []

    async def expired_leases(self, before: float) -> list[Lease]:
        with driver_errors:
            docs = await self._db.accounts.find(
                {"leases": {"$elemMatch": {"expires_at": {"$lt": before}}}}, WALLET_FIELDS
            ).to_list(None)
        return [l for d in docs for l in Wallet.from_doc(d).lease_records() if l.expires_at < before]

    async def sweep(self, now: float) -> None:
        """Drop expired leases from the wallets they are in."""
        with driver_errors:
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
                await backoff(attempt)
        await super().sweep(now)
