"""Packages and the usage ledger that debits them, exactly once per request id; and the debit
rule every backend applies inside its own write: each charge takes from the packages active at its
time, oldest first, spilling into the next, the rest an overdraft on the last."""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    account_id: str
    plan: str
    tokens: int
    used: int
    granted_at: float
    expires_at: float

    @property
    def remaining(self) -> int:
        return max(0, self.tokens - self.used)

    def active_at(self, now: float) -> bool:
        return self.expires_at > now and self.used < self.tokens


@dataclass(slots=True)
class LedgerEntry:
    """One request that reached an upstream: what it cost and how it ended."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    target: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool
    stream: bool
    outcome: str
    status: int
    latency_ms: float
    user: str | None
    created_at: float
    attempts: int = 1
    debits: list[list] = field(default_factory=list)
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    # The balance reservation this request held, settled when the entry is written; with a capped
    # key, the same tokens reserved on the key's cap through its lease there.
    lease_id: str | None = None
    reserved: int = 0
    key_lease_id: str | None = None
    # The client API the request came through: "chat" (Chat Completions), "responses", "messages".
    api: str = "chat"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LedgerEntry":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: int = 0  # requests whose outcome is not "ok"


@dataclass(frozen=True, slots=True)
class Mismatch:
    package_id: str
    account_id: str
    recorded: int
    from_ledger: int


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """A page of an account's ledger, newest first; ``after`` is the last (created_at, request_id) seen."""

    limit: int = 100
    after: tuple[float, str] | None = None
    since: float | None = None
    until: float | None = None
    model: str | None = None
    key_id: str | None = None
    outcome: str | None = None
    api: str | None = None


def active_packages(packages: list[Package], now: float) -> list[Package]:
    """The account's usable packages at ``now``, the one to debit first at the front."""
    return sorted((p for p in packages if p.active_at(now)), key=lambda p: (p.granted_at, p.id))


@dataclass(frozen=True, slots=True)
class PackageBalance:
    """What the debit rule needs to know of one package."""

    id: str
    remaining: int


def allocate(tokens: int, active: Sequence[PackageBalance], fallback_id: str | None) -> list[list]:
    """Spread ``tokens`` over active packages, oldest first, spilling into the next.

    What no active package can hold is an overdraft on the last active package, or on
    ``fallback_id`` (the account's newest package) when none is active. Returns
    ``[[package_id, tokens], ...]``; empty only when the account has no package at all.
    """
    debits: list[list] = []
    left = tokens
    for package in active:
        if left <= 0:
            break
        take = min(package.remaining, left)
        if take > 0:
            debits.append([package.id, take])
            left -= take
    if left > 0:
        sink = active[-1].id if active else fallback_id
        if sink is None:
            return debits
        if debits and debits[-1][0] == sink:
            debits[-1][1] += left
        else:
            debits.append([sink, left])
    return debits


@dataclass(frozen=True, slots=True)
class Charge:
    """What the debit rule needs of one ledger entry."""

    request_id: str
    tokens: int
    created_at: float


def plan_debits(packages: list[Package], charges: list[Charge]) -> tuple[dict[str, int], dict[str, list[list]]]:
    """The debit rule, shared by every backend: each charge in time order takes from the packages
    active at its time, oldest first. Returns the packages' new ``used`` and each charge's debits."""
    ordered = sorted(packages, key=lambda p: (p.granted_at, p.id))
    newest = ordered[-1].id if ordered else None
    used = {p.id: p.used for p in ordered}
    debits: dict[str, list[list]] = {}
    whole = _one_package(ordered, charges)
    if whole is not None:
        # The common case, without the rule's per-charge work: one package takes every charge.
        for charge in charges:
            debits[charge.request_id] = [[whole.id, charge.tokens]] if charge.tokens > 0 else []
        used[whole.id] += sum(c.tokens for c in charges)
        return used, debits
    return _plan_each(ordered, charges, used, newest)


def _plan_each(ordered: list[Package], charges: list[Charge], used: dict[str, int], newest: str | None):
    debits: dict[str, list[list]] = {}
    for charge in sorted(charges, key=lambda c: c.created_at):
        active = [
            PackageBalance(p.id, p.tokens - used[p.id])
            for p in ordered
            if p.expires_at > charge.created_at and used[p.id] < p.tokens
        ]
        debits[charge.request_id] = allocate(charge.tokens, active, newest)
        for package_id, tokens in debits[charge.request_id]:
            used[package_id] += tokens
    return used, debits


def _one_package(ordered: list[Package], charges: list[Charge]) -> Package | None:
    """The package the rule would debit every charge from, when that is one package: the first with
    tokens left, active through the last charge, holding them all, and no earlier package active
    at any charge's time."""
    if not charges:
        return None
    first = min(c.created_at for c in charges)
    last = max(c.created_at for c in charges)
    for package in ordered:
        if package.used >= package.tokens or package.expires_at <= first:
            continue  # spent, or expired before every charge: the rule skips it for each
        if package.expires_at <= last or package.tokens - package.used < sum(c.tokens for c in charges):
            return None
        return package
    return None


class LedgerStore(abc.ABC):
    """What a backend does with packages and the ledger."""

    @abc.abstractmethod
    async def grant_package(self, package: Package) -> Package: ...

    @abc.abstractmethod
    async def packages(self, account_id: str) -> list[Package]: ...

    @abc.abstractmethod
    async def record(self, entries: list[LedgerEntry]) -> int:
        """Write entries and debit their packages, exactly once per ``request_id``.

        Returns how many entries were new. Safe to call again with the same entries.
        """

    @abc.abstractmethod
    async def ledger_entry(self, request_id: str) -> LedgerEntry | None: ...

    @abc.abstractmethod
    async def ledger_count(self, account_id: str | None = None, outcome: str | None = None) -> int:
        """Ledger entries, of one account and/or with one outcome when given."""

    @abc.abstractmethod
    async def usage(self, account_id: str, since: float, until: float) -> list[UsageRow]:
        """Totals by UTC day and public model, with how many of those requests did not end ``ok``."""

    @abc.abstractmethod
    async def reconcile(self) -> list[Mismatch]:
        """Compare every package's used tokens with the ledger's debits for it."""

    async def recover(self) -> int:
        """Finish ledger writes a crashed writer left half done; how many it finished."""
        return 0

    @abc.abstractmethod
    async def key_tokens(self, key_id: str) -> int:
        """Total tokens the ledger holds for a key."""

    @abc.abstractmethod
    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        """An account's ledger entries matching ``query``, newest first."""
