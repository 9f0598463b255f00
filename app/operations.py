"""Operator actions shared by the CLI and the admin API: accounts, keys, packages, usage."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import datetime, timezone

from . import journal
from .config import Settings
from .errors import InvalidRequest, NotFound
from .ids import new_id
from .keys import display_prefix, key_hash, new_key, new_key_id
from .ledger import Spool
from .store import Account, KeyRecord, Package, Store
from .store.base import active_packages

DAY = 86400


async def create_account(store: Store, name: str) -> Account:
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidRequest("An account name must be 1-128 characters.", param="name")
    return await store.create_account(new_id("acct"), name, time.time())


async def find_account(store: Store, id_or_name: str) -> Account:
    account = await store.account(id_or_name)
    if account is None:
        raise NotFound(f"No account '{id_or_name}'.", param="account", code="account_not_found")
    return account


async def create_key(
    store: Store, settings: Settings, account: Account, per_minute: int | None = None, per_hour: int | None = None
) -> tuple[KeyRecord, str]:
    """A new key for ``account``; returns its record and the key itself (shown once)."""
    _check_limits(per_minute, per_hour)
    key = new_key()
    record = KeyRecord(
        id=new_key_id(),
        account_id=account.id,
        prefix=display_prefix(key),
        created_at=time.time(),
        per_minute=per_minute,
        per_hour=per_hour,
    )
    await store.create_key(record, key_hash(key, settings.key_pepper))
    return record, key


async def set_limits(store: Store, key_id: str, per_minute: int | None, per_hour: int | None) -> None:
    _check_limits(per_minute, per_hour)
    if not await store.set_key_limits(key_id, per_minute, per_hour):
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")


async def revoke_key(store: Store, key_id: str) -> None:
    if not await store.revoke_key(key_id, time.time()):
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")


def _check_limits(per_minute: int | None, per_hour: int | None) -> None:
    for name, value in (("per_minute", per_minute), ("per_hour", per_hour)):
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)


async def grant_package(
    store: Store, settings: Settings, account: Account, plan: str, tokens: int | None = None, days: int | None = None
) -> Package:
    if plan not in settings.plans:
        raise InvalidRequest(f"Unknown plan '{plan}'; expected one of {sorted(settings.plans)}.", param="plan")
    if tokens is not None and (type(tokens) is not int or tokens < 1):
        raise InvalidRequest("'tokens' must be a positive integer.", param="tokens")
    if days is not None and (type(days) is not int or days < 1):
        raise InvalidRequest("'days' must be a positive integer.", param="days")
    now = time.time()
    package = Package(
        id=new_id("pkg"),
        account_id=account.id,
        plan=plan,
        tokens=tokens or settings.plans[plan],
        used=0,
        granted_at=now,
        expires_at=now + (days or settings.package_days) * DAY,
    )
    return await store.grant_package(package)


async def balance(store: Store, account: Account) -> dict:
    """The account's packages, which one is debited next, and what is left in all."""
    now = time.time()
    packages = await store.packages(account.id)
    active = active_packages(packages, now)
    return {
        "account": {"id": account.id, "name": account.name},
        "remaining_tokens": sum(p.remaining for p in active),
        "active_package": package_view(active[0], now) if active else None,
        "packages": [package_view(p, now) for p in packages],
    }


def package_view(package: Package, now: float) -> dict:
    view = asdict(package)
    view["remaining"] = package.remaining
    view["active"] = package.active_at(now)
    return view


async def usage_report(store: Store, account: Account, since: float | None = None, until: float | None = None) -> dict:
    until = until if until is not None else time.time() + 1
    since = since if since is not None else until - 30 * DAY
    rows = await store.usage(account.id, since, until)
    by_day: dict[str, dict] = {}
    by_model: dict[str, dict] = {}
    total = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for row in rows:
        for bucket in (by_day.setdefault(row.day, dict.fromkeys(total, 0)), by_model.setdefault(row.model, dict.fromkeys(total, 0)), total):
            bucket["requests"] += row.requests
            bucket["prompt_tokens"] += row.prompt_tokens
            bucket["completion_tokens"] += row.completion_tokens
            bucket["total_tokens"] += row.total_tokens
    return {
        "since": since,
        "until": until,
        "total": total,
        "by_day": [{"day": d, **v} for d, v in sorted(by_day.items())],
        "by_model": [{"model": m, **v} for m, v in sorted(by_model.items())],
    }


def key_view(record: KeyRecord) -> dict:
    return asdict(record)


def parse_time(text: str | None, param: str) -> float | None:
    """An ISO date/datetime (UTC unless it says otherwise) or epoch seconds; None when absent."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be an ISO date or datetime, or epoch seconds.", param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def reconcile(store: Store, settings: Settings) -> dict:
    """Finish what crashed processes of this data directory left (spooled entries, journal records
    of requests a dead worker held, billed by estimate), then check every package against the
    ledger. ``ok`` is false on a mismatch or a journal record that could not be billed yet."""
    recovered = await Spool(settings.spool_dir, f"{os.getpid()}-reconcile").replay(store, settings.meter_batch)
    recovered += await journal.recover(settings.journal_dir, store, settings.spool_dir, settings.meter_batch)
    mismatches = await store.reconcile()
    records = journal.census(settings.journal_dir)
    return {
        "ok": not mismatches and not records.unrecovered,
        "ledger_entries": await store.ledger_count(),
        "worker_lost": await store.ledger_count(outcome=journal.LOST_OUTCOME),
        "recovered": recovered,
        "journal": {"in_flight": records.in_flight, "unrecovered": records.unrecovered},
        "mismatches": [asdict(m) for m in mismatches],
    }
