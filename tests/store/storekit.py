"""Shared helpers of the store tests: fixed times, ledger entries, packages, quick reads."""
from __future__ import annotations

import time

from app.store import Store
from app.store.contracts.ledger import LedgerEntry, Package

DAY = 86400.0
T = 1_760_000_000.0  # ledger and package times: 2025-10-09
FAR = T + 3650 * DAY


def hour_start(ahead: int = 48) -> float:
    """A UTC hour in the future: a TTL monitor must not expire the windows a test is filling."""
    return float((int(time.time()) // 3600 + ahead) * 3600)


def entry(rid: str, account: str, tokens: int, at: float, model: str = "zowy-1", **extra) -> LedgerEntry:
    prompt = tokens // 3
    values = dict(
        request_id=rid, account_id=account, key_id="key_1", model=model, target="gemini-flash",
        prompt_tokens=prompt, completion_tokens=tokens - prompt, total_tokens=tokens, estimated=False,
        stream=False, outcome="ok", status=200, latency_ms=12.5, user=None, created_at=at,
    )
    values.update(extra)
    return LedgerEntry(**values)


def package(pid: str, account: str, tokens: int, granted: float, expires: float = FAR, plan: str = "pro") -> Package:
    return Package(pid, account, plan, tokens, 0, granted, expires)


async def account_with(store: Store, account: str, *packages: Package) -> None:
    await store.create_account(account, f"name-{account}", T)
    for p in packages:
        await store.grant_package(p)


async def used(store: Store, account: str) -> dict[str, int]:
    return {p.id: p.used for p in await store.packages(account)}


async def debits(store: Store, rid: str) -> list[list]:
    found = await store.ledger_entry(rid)
    assert found is not None, rid
    return found.debits
