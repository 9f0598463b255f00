"""The embedded store: SQLite files in WAL mode, shared safely by several worker processes, one
part per feature of the contract (``SqliteKeys``, ``SqliteLedger``, ...) composed into ``SqliteStore``.

A request's short statements run inline on the event loop and hand over to a thread if a file is
locked; ledger batches and reports run on threads of their own. Every write is one short transaction.
"""
from __future__ import annotations

import sqlite3

from ..contracts import Store
from . import accounts, alerts, audit, grants, keys, leases, ledger, limits, owners, responses
from .accounts import SqliteAccounts
from .alerts import SqliteAlerts
from .audit import SqliteAudit
from .grants import SqliteGrants
from .keys import SqliteKeys
from .leases import SqliteLeases
from .ledger import SqliteLedger
from .limits import SqliteLimits
from .owners import SqliteOwners
from .responses import SqliteResponses

__all__ = ["SqliteStore"]

# The main file's tables, in the order they were first made; the rate windows live in a file of their own.
SCHEMA = "".join(part.SCHEMA for part in (accounts, keys, ledger, leases, owners, grants, alerts, audit, responses))
ADDED_COLUMNS = ledger.ADDED_COLUMNS + keys.ADDED_COLUMNS


class SqliteStore(
    SqliteAccounts, SqliteKeys, SqliteLedger, SqliteLimits, SqliteLeases, SqliteOwners, SqliteGrants, SqliteAlerts,
    SqliteAudit, SqliteResponses, Store,
):
    async def init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._slow.run(lambda db: db.executescript(SCHEMA))
        await self._slow.run(_add_columns)
        await self._limits_slow.run(lambda db: db.executescript(limits.SCHEMA))

    async def close(self) -> None:
        self._hot.close()
        self._limits.close()
        for connection in (self._slow, self._limits_slow):
            await connection.close()

    async def ping(self) -> None:
        await self._hot.run(lambda db: db.execute("SELECT 1").fetchone())


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, definition in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
