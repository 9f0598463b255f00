"""Accounts: the record every other one hangs on, and what a backend does with it."""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    created_at: float


class AccountStore(abc.ABC):
    """What a backend does with accounts."""

    @abc.abstractmethod
    async def create_account(self, account_id: str, name: str, now: float) -> Account: ...

    @abc.abstractmethod
    async def account(self, id_or_name: str) -> Account | None: ...

    @abc.abstractmethod
    async def accounts(self) -> list[Account]: ...
