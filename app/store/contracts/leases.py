"""Leases: tokens of an account's balance (or of a key's token cap) that one worker holds for its
requests, reserved against every instance until settled by ledger entries, returned, or expired;
and the lease rule every backend applies in one atomic operation."""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Callable

from .ledger import Package, active_packages


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


class LeaseStore(abc.ABC):
    """What a backend does with leases."""

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
