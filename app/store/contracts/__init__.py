"""The store's contract: one module per feature (its records, the operations a backend provides,
and the pure rules a backend applies inside its own writes), composed here into ``Store``.

Backends raise ``StoreUnavailable`` when the database cannot be reached and ``Conflict`` when a
unique name is taken; nothing else from a driver escapes them.
"""
from __future__ import annotations

import abc

from .accounts import AccountStore
from .alerts import AlertStore
from .audit import AuditStore
from .grants import GrantStore
from .keys import KeyStore
from .leases import LeaseStore
from .ledger import LedgerStore
from .limits import LimitStore
from .owners import OwnerStore
from .responses import ResponseStore


class Store(
    AccountStore, KeyStore, LedgerStore, LeaseStore, LimitStore, OwnerStore, GrantStore, AlertStore, AuditStore, ResponseStore,
):
    """Everything the gateway keeps. A backend composes one part per feature (each part's ``sweep``
    drops what expired of its own and passes on with ``super().sweep``)."""

    @abc.abstractmethod
    async def init(self) -> None:
        """Create tables/collections and indexes; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    async def sweep(self, now: float) -> None:
        """Drop spent rate windows, expired leases, sessions and stored responses."""
