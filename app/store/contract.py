"""The storage contract: domain records and the operations every backend provides.

Backends raise ``errors.StoreUnavailable`` when the database cannot be reached and
``Conflict`` when a unique name is taken; nothing else from a driver escapes them.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from ..core.errors import Conflict
from ..wire.usage import LedgerEntry, PackageBalance, allocate


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
    name: str | None = None
    expires_at: float | None = None
    models: tuple[str, ...] | None = None
    token_cap: int | None = None
    ips: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, model_id: str) -> bool:
        """Whether the key's model allow-list (none: every model) holds ``model_id``."""
        return self.models is None or model_id in self.models


# What an operator (or, within its rights, the account's owner) may change on a key.
KEY_CONTROLS = ("name", "expires_at", "models", "token_cap", "ips", "per_minute", "per_hour")


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
class Lease:
    """Tokens of an account's balance one worker holds for its requests: reserved against the
    balance of every instance until settled by ledger entries, returned, or expired."""

    id: str
    account_id: str
    tokens: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class CapAsk:
    """A lease on a key's token cap, asked in the same operation as its account's: the key's free
    tokens are its cap minus its ledger's sum minus every unexpired lease on the cap."""

    key_id: str
    cap: int
    lease_id: str
    need: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    granted: int
    # What the scope held when asked: remaining in the account's active packages (or under the key's
    # cap, below zero once passed), and reserved by unexpired leases (this grant included); and what
    # this lease now holds.
    remaining: int
    reserved: int
    held: int
    # The grant on the key's cap, when one was asked with the account's.
    cap: "LeaseGrant | None" = None

    @property
    def free(self) -> int:
        return max(0, self.remaining - self.reserved)

    def refused(self) -> "LeaseGrant":
        """The same reading with nothing granted."""
        return LeaseGrant(0, self.remaining, self.reserved - self.granted, self.held - self.granted)


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
    errors: int = 0  # requests whose outcome is not "ok"


@dataclass(frozen=True, slots=True)
class Mismatch:
    package_id: str
    account_id: str
    recorded: int
    from_ledger: int


@dataclass(frozen=True, slots=True)
class Owner:
    """A person who signs in to run an account."""

    id: str
    account_id: str
    email: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Invite:
    id: str
    account_id: str
    email: str
    created_at: float
    expires_at: float
    accepted_at: float | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in owner; the store knows it by the hash of its bearer token."""

    token_hash: str
    account_id: str
    owner_id: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Code:
    """A redemption code (stored by hash): what it grants, until when, and who redeemed it."""

    id: str
    batch_id: str
    plan: str
    tokens: int
    days: int
    created_at: float
    expires_at: float
    redeemed_at: float | None = None
    redeemed_by: str | None = None


@dataclass(frozen=True, slots=True)
class Topup:
    """A top-up event as first received: the event id is unique, the package id derived from it."""

    event_id: str
    account_id: str
    package_id: str
    plan: str
    tokens: int
    days: int
    received_at: float


@dataclass(frozen=True, slots=True)
class AlertSettings:
    account_id: str
    url: str | None
    thresholds: tuple[int, ...]
    updated_at: float


@dataclass(frozen=True, slots=True)
class Alert:
    """One low-balance webhook in the outbox; its id is unique per account, package and threshold."""

    id: str
    account_id: str
    url: str
    body: str
    created_at: float
    next_at: float
    attempts: int = 0
    delivered_at: float | None = None
    failed_at: float | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change to money or access: who, when, what, and the value before and after."""

    id: str
    at: float
    actor: str
    action: str
    account_id: str | None = None
    target: str | None = None
    before: Any = None
    after: Any = None
    ip: str | None = None


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


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A page of the audit log, newest first; ``after`` is the last (at, id) seen."""

    limit: int = 100
    after: tuple[float, str] | None = None
    account_id: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None


def active_packages(packages: list[Package], now: float) -> list[Package]:
    """The account's usable packages at ``now``, the one to debit first at the front."""
    return sorted((p for p in packages if p.active_at(now)), key=lambda p: (p.granted_at, p.id))


def plan_lease(
    packages: list[Package], leases: list[Lease], lease_id: str, need: int, size: Callable[[int, int], int], now: float,
    cap: CapAsk | None = None, key_used: int = 0, key_leases: list[Lease] | None = None,
) -> LeaseGrant:
    """The lease rule, shared by every backend: how many tokens lease ``lease_id`` gets for a request
    needing ``need`` (``size(need, free)``), with the account's remaining and reserved tokens after;
    with ``cap``, the same on the key's cap (``key_used``: its ledger's sum), granted only together:
    when either scope cannot cover what is asked of it, neither grants anything."""
    account = _plan(sum(p.remaining for p in active_packages(packages, now)), leases, lease_id, need, size, now)
    if cap is None:
        return account
    grant = replace(account, cap=_plan(cap.cap - key_used, key_leases or [], cap.lease_id, cap.need, size, now))
    if lease_refused(grant, need, cap):
        return replace(account.refused(), cap=grant.cap.refused())
    return grant


def lease_refused(grant: LeaseGrant, need: int, cap: CapAsk | None = None) -> bool:
    """Whether a lease asked for ``need`` tokens (and for ``cap``) was refused: then nothing moved."""
    return bool((need > 0 and not grant.granted) or (cap is not None and cap.need > 0 and not grant.cap.granted))


def _plan(remaining: int, leases: list[Lease], lease_id: str, need: int, size: Callable[[int, int], int], now: float) -> LeaseGrant:
    reserved = sum(l.tokens for l in leases if l.expires_at > now and l.id != lease_id)
    own = next((l.tokens for l in leases if l.id == lease_id and l.expires_at > now), 0)
    granted = size(need, remaining - reserved - own) if need > 0 else 0
    return LeaseGrant(granted, remaining, reserved + own + granted, own + granted)


def settle_leases(leases: list[Lease], reservations: list[tuple[str | None, int]]) -> dict[str, int]:
    """What each lease holds once new ledger entries settle their ``(lease_id, reserved)``
    reservations (never below zero); only the leases that change."""
    held = {l.id: l.tokens for l in leases}
    changed: dict[str, int] = {}
    for lease_id, reserved in reservations:
        if lease_id in held and reserved > 0:
            held[lease_id] = changed[lease_id] = max(0, held[lease_id] - reserved)
    return changed


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
        """Totals by UTC day and public model, with how many of those requests did not end ``ok``."""

    @abc.abstractmethod
    async def reconcile(self) -> list[Mismatch]:
        """Compare every package's used tokens with the ledger's debits for it."""

    # balance reservations
    @abc.abstractmethod
    async def lease(
        self, account_id: str, lease_id: str, need: int, size: Callable[[int, int], int], now: float, expires_at: float,
        cap: CapAsk | None = None,
    ) -> LeaseGrant:
        """Atomically add ``size(need, free)`` tokens (``free`` = the account's remaining tokens in
        active packages minus every unexpired lease's) to lease ``lease_id``, created if new, and
        move its expiry to ``expires_at``. ``size`` answers 0 when ``free`` cannot cover ``need``:
        nothing changes then. ``need`` 0 only renews the lease. With ``cap``, the key's lease on its
        cap is sized and moved the same way in the same operation (``plan_lease``)."""

    @abc.abstractmethod
    async def return_lease(self, account_id: str, lease_id: str, tokens: int, key_id: str | None = None) -> None:
        """Give ``tokens`` of a lease back to the balance, or to the cap of key ``key_id`` (at most
        what it holds)."""

    @abc.abstractmethod
    async def leases(self, account_id: str) -> list[Lease]:
        """The account's leases on its balance, expired ones included until swept."""

    @abc.abstractmethod
    async def key_leases(self, key_id: str) -> list[Lease]:
        """The leases on a key's token cap, expired ones included until swept."""

    @abc.abstractmethod
    async def expired_leases(self, before: float) -> list[Lease]:
        """Leases of any account that expired before ``before`` and were not swept."""

    # rate windows
    @abc.abstractmethod
    async def hit(
        self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None, take: int = 1
    ) -> WindowCount:
        """Count ``take`` requests in the key's minute and hour windows, unless that would overfill either.

        One atomic operation decides; the counts returned include them when admitted.
        Raises StoreUnavailable if the store cannot answer within ``timeout`` seconds.
        """

    async def sweep(self, now: float) -> None:
        """Drop spent rate windows, expired leases and expired sessions."""

    async def recover(self) -> int:
        """Finish ledger writes a crashed writer left half done; how many it finished."""
        return 0

    # key controls

    @abc.abstractmethod
    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Set some of ``KEY_CONTROLS`` on a key; the key as it is now, or None when there is none."""

    @abc.abstractmethod
    async def key_tokens(self, key_id: str) -> int:
        """Total tokens the ledger holds for a key."""

    @abc.abstractmethod
    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        """An account's ledger entries matching ``query``, newest first."""

    # owners, invites, sessions

    @abc.abstractmethod
    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        """Conflict when the email is taken."""

    @abc.abstractmethod
    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        """The owner signing in with ``email`` and the stored password hash."""

    @abc.abstractmethod
    async def owners(self, account_id: str) -> list[Owner]: ...

    @abc.abstractmethod
    async def create_invite(self, invite: Invite, token_hash: str) -> Invite: ...

    @abc.abstractmethod
    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        """Mark an unexpired, unused invite accepted; the invite only for the one caller that did."""

    @abc.abstractmethod
    async def create_session(self, session: Session) -> Session: ...

    @abc.abstractmethod
    async def session(self, token_hash: str, now: float) -> Session | None:
        """The unexpired session of a token hash."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> bool: ...

    # redemption codes and top-ups

    @abc.abstractmethod
    async def create_codes(self, codes: list[tuple[Code, str]]) -> None:
        """Store codes with their hashes."""

    @abc.abstractmethod
    async def code_by_hash(self, code_hash: str) -> Code | None: ...

    @abc.abstractmethod
    async def codes(self, batch_id: str) -> list[Code]: ...

    @abc.abstractmethod
    async def claim_code(self, code_id: str, account_id: str, now: float) -> bool:
        """Mark an unexpired, unredeemed code redeemed by ``account_id``; True for the one caller that did."""

    @abc.abstractmethod
    async def record_topup(self, topup: Topup) -> tuple[Topup, bool]:
        """Store a top-up event unless its id is known; the stored event and whether it is new."""

    # low-balance alerts

    @abc.abstractmethod
    async def alert_settings(self, account_id: str) -> AlertSettings | None: ...

    @abc.abstractmethod
    async def set_alert_settings(self, settings: AlertSettings) -> None: ...

    @abc.abstractmethod
    async def enqueue_alert(self, alert: Alert) -> bool:
        """Add an alert to the outbox unless its id is there; whether it was added."""

    @abc.abstractmethod
    async def claim_alerts(self, owner: str, now: float, lease: float, limit: int) -> list[Alert]:
        """Lease up to ``limit`` due, undelivered alerts whose lease is free or expired; counts an attempt."""

    @abc.abstractmethod
    async def finish_alert(self, alert_id: str, owner: str, now: float) -> bool:
        """Mark an alert delivered, if ``owner`` still holds its lease."""

    @abc.abstractmethod
    async def retry_alert(self, alert_id: str, owner: str, next_at: float, error: str, give_up: bool = False) -> bool:
        """Release the lease and try again at ``next_at`` (or mark failed), if ``owner`` holds the lease."""

    @abc.abstractmethod
    async def alerts(self, account_id: str, limit: int = 50) -> list[Alert]:
        """An account's outbox, newest first."""

    # audit log

    @abc.abstractmethod
    async def append_audit(self, event: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def audit(self, query: AuditQuery) -> list[AuditEvent]:
        """Audit events matching ``query``, newest first."""
