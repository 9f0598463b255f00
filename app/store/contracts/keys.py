"""API keys as the store keeps them (by the hash of the key, never the key) with their controls."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping


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


class KeyStore(abc.ABC):
    """What a backend does with API keys."""

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

    @abc.abstractmethod
    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Set some of ``KEY_CONTROLS`` on a key; the key as it is now, or None when there is none."""
