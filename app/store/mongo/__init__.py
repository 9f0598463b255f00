"""The MongoDB store, on PyMongo's native async API; the only package that imports pymongo. One
part per feature of the contract (``MongoKeys``, ``MongoLedger``, ...) composed into ``MongoStore``.

Collections and indexes are declared once, each with its part, and gathered in ``INDEXES``. Each
account document is also its wallet: package balances, a ``version`` for compare-and-set, and the
``inflight`` debits of ledger entries not yet marked applied. Debits are exactly-once without
transactions; see ``MongoLedger.record`` and mongo/README.md.
"""
from __future__ import annotations

from ..contracts import Store
from . import accounts, alerts, audit, grants, keys, ledger, limits, owners, responses
from .accounts import MongoAccounts
from .alerts import MongoAlerts
from .audit import MongoAudit
from .base import Index, driver_errors
from .grants import MongoGrants
from .keys import MongoKeys
from .leases import MongoLeases
from .ledger import MongoLedger
from .limits import MongoLimits
from .owners import MongoOwners
from .responses import MongoResponses

__all__ = ["INDEXES", "MongoStore", "driver_errors"]

# Every collection the store uses and all its indexes; init() creates them, mongo/init.js mirrors them.
INDEXES: dict[str, tuple[Index, ...]] = {
    **accounts.INDEXES, **keys.INDEXES, **ledger.INDEXES, **limits.INDEXES, **owners.INDEXES, **grants.INDEXES,
    **alerts.INDEXES, **audit.INDEXES, **responses.INDEXES,
}


class MongoStore(
    MongoAccounts, MongoKeys, MongoLedger, MongoLeases, MongoLimits, MongoOwners, MongoGrants, MongoAlerts, MongoAudit,
    MongoResponses, Store,
):
    async def init(self) -> None:
        db = self._db
        with driver_errors:
            for collection, indexes in INDEXES.items():
                for index in indexes:
                    await db[collection].create_index(list(index.key), **index.options())
        await self.recover()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        with driver_errors:
            await self._db.command("ping")
