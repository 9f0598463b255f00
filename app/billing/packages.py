"""Packages and what they hold: granting one (by an operator), an account's balance over its
packages and reservations, and its usage report.

Every grant is written to the audit log under the actor who made it.
"""
from __future__ import annotations

import time
from dataclasses import asdict

from ..accounts import audit
from ..accounts.audit import SYSTEM, Actor
from ..core.config import Settings
from ..core.errors import InvalidRequest
from ..core.ids import new_id
from ..store import Store
from ..store.contracts.accounts import Account
from ..store.contracts.ledger import Package, active_packages

DAY = 86400


async def grant_package(
    store: Store, settings: Settings, account: Account, plan: str, tokens: int | None = None, days: int | None = None,
    actor: Actor = SYSTEM,
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
    granted = await store.grant_package(package)
    await audit.record(store, actor, "package.grant", account.id, granted.id, after=package_view(granted, now))
    return granted


async def balance(store: Store, account: Account) -> dict:
    """The account's packages, which one is debited next, and what is left in all: remaining in
    active packages, reserved by requests in flight (or held by workers for them), available to new
    requests, and settled (debited by the ledger) over every package."""
    now = time.time()
    packages = await store.packages(account.id)
    active = active_packages(packages, now)
    remaining = sum(p.remaining for p in active)
    reserved = sum(l.tokens for l in await store.leases(account.id) if l.expires_at > now)
    return {
        "account": {"id": account.id, "name": account.name},
        "remaining_tokens": remaining,
        "reserved_tokens": reserved,
        "available_tokens": max(0, remaining - reserved),
        "settled_tokens": sum(p.used for p in packages),
        "active_package": package_view(active[0], now) if active else None,
        "packages": [package_view(p, now) for p in packages],
    }


def package_view(package: Package, now: float) -> dict:
    view = asdict(package)
    view["remaining"] = package.remaining
    view["active"] = package.active_at(now)
    return view


async def usage_report(store: Store, account: Account, since: float | None = None, until: float | None = None) -> dict:
    """Requests, tokens and errors (requests that did not end ``ok``) in all, by UTC day, by
    model, and by day and model."""
    until = until if until is not None else time.time() + 1
    since = since if since is not None else until - 30 * DAY
    rows = await store.usage(account.id, since, until)
    by_day: dict[str, dict] = {}
    by_model: dict[str, dict] = {}
    by_day_model: list[dict] = []
    total = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "errors": 0}
    for row in rows:
        cell = {"day": row.day, "model": row.model, **dict.fromkeys(total, 0)}
        by_day_model.append(cell)
        for bucket in (by_day.setdefault(row.day, dict.fromkeys(total, 0)), by_model.setdefault(row.model, dict.fromkeys(total, 0)), total, cell):
            bucket["requests"] += row.requests
            bucket["prompt_tokens"] += row.prompt_tokens
            bucket["completion_tokens"] += row.completion_tokens
            bucket["total_tokens"] += row.total_tokens
            bucket["errors"] += row.errors
    return {
        "since": since,
        "until": until,
        "total": total,
        "by_day": [{"day": d, **v} for d, v in sorted(by_day.items())],
        "by_model": [{"model": m, **v} for m, v in sorted(by_model.items())],
        "by_day_model": sorted(by_day_model, key=lambda c: (c["day"], c["model"])),
    }
