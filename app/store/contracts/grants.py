"""Redemption codes (kept by hash) and top-up events, each granting a package once."""
from __future__ import annotations

import abc
from dataclasses import dataclass


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


class GrantStore(abc.ABC):
    """What a backend does with codes and top-ups."""

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
