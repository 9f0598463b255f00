"""The storage contract: domain records and the operations every backend provides.

Backends raise ``errors.StoreUnavailable`` when the database cannot be reached and
``Conflict`` when a unique name is taken; nothing else from a driver escapes them.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

from ..errors import Conflict
from ..metering import LedgerEntry, PackageBalance, allocate


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    account_id: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    per_minute: int | None = None
    per_hour: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


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


@dataclass(frozen=True, slots=True)
class WindowCount:
    """The state of a key's two windows right after one request asked to pass."""

    admitted: bool
    minute: int
    hour: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    package_id: str
    account_id: str
    recorded: int
    from_ledger: int


def active_packages(packages: list[Package], now: float) -> list[Package]:
    """The account's usable packages at ``now``, the one to debit first at the front."""
    return sorted((p for p in packages if p.active_at(now)), key=lambda p: (p.granted_at, p.id))


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


class Store(abc.ABC):
    """Keys, accounts, packages, the usage ledger and the rate windows."""

    @abc.abstractmethod
    async def init(self) -> None:
        """Create tables/collections and indexes; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    # accounts
    @abc.abstractmethod
    async def create_account(self, account_id: str, name: str, now: float) -> Account: ...

    @abc.abstractmethod
    async def account(self, id_or_name: str) -> Account | None: ...

    @abc.abstractmethod
    async def accounts(self) -> list[Account]: ...

    # keys
    @abc.abstractmethod
    async def create_key(self, record: KeyRecord, key_hash: str) -> KeyRecord: ...

    @abc.abstractmethod
    async def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def key(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def keys(self, account_id: str) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def set_key_limits(self, key_id: str, per_minute: int | None, per_hour: int | None) -> bool: ...

    # packages
    @abc.abstractmethod
    async def grant_package(self, package: Package) -> Package: ...

    @abc.abstractmethod
    async def packages(self, account_id: str) -> list[Package]: ...

    # ledger
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
        """Totals by UTC day and public model."""

    @abc.abstractmethod
    async def reconcile(self) -> list[Mismatch]:
        """Compare every package's used tokens with the ledger's debits for it."""

    # rate windows
    @abc.abstractmethod
    async def hit(self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None) -> WindowCount:
        """Count one request in the key's minute and hour windows, unless either is full.

        One atomic operation decides; the counts returned include this request when admitted.
        Raises StoreUnavailable if the store cannot answer within ``timeout`` seconds.
        """

    async def sweep(self, now: float) -> None:
        """Drop spent rate windows (backends with native expiry need nothing)."""

    async def recover(self) -> int:
        """Finish ledger writes a crashed writer left half done; how many it finished."""
        return 0
