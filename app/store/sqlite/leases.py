"""Leases on balances and on keys' token caps in the SQLite store, each asked in one transaction."""
from __future__ import annotations

import sqlite3
from typing import Callable

from ..contracts.leases import CapAsk, Lease, LeaseGrant, lease_refused, plan_lease
from ..contracts.ledger import Package
from .base import LEASE_COLUMNS, PACKAGE_COLUMNS, SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    tokens INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_account ON leases(account_id);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
CREATE TABLE IF NOT EXISTS key_leases (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    tokens INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS key_leases_key ON key_leases(key_id);
CREATE INDEX IF NOT EXISTS ledger_key_tokens ON ledger(key_id, total_tokens);
"""


class SqliteLeases(SqliteBase):
    async def lease(
        self, account_id: str, lease_id: str, need: int, size: Callable[[int, int], int], now: float, expires_at: float,
        cap: CapAsk | None = None,
    ) -> LeaseGrant:
        def run(db: sqlite3.Connection) -> LeaseGrant:
            db.execute("BEGIN IMMEDIATE")  # outside the try: a locked file changed nothing, and is retried
            try:
                packages = [
                    Package(*r)
                    for r in db.execute(f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE account_id = ?", (account_id,))
                ]
                leases = [Lease(*r) for r in db.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE account_id = ?", (account_id,))]
                used, key_leases = 0, None
                if cap is not None:
                    used = db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM ledger WHERE key_id = ?", (cap.key_id,)).fetchone()[0]
                    key_leases = [
                        Lease(*r) for r in db.execute(f"SELECT {LEASE_COLUMNS} FROM key_leases WHERE key_id = ?", (cap.key_id,))
                    ]
                grant = plan_lease(packages, leases, lease_id, need, size, now, cap, used, key_leases)
                if not lease_refused(grant, need, cap):
                    _put_lease(db, account_id, lease_id, grant.held, now, expires_at)
                    if cap is not None:
                        _put_lease(db, account_id, cap.lease_id, grant.cap.held, now, expires_at, cap.key_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return grant

        return await self._hot.run(run)

    async def return_lease(self, account_id: str, lease_id: str, tokens: int, key_id: str | None = None) -> None:
        table = "leases" if key_id is None else "key_leases"
        await self._hot.run(
            lambda db: db.execute(f"UPDATE {table} SET tokens = MAX(0, tokens - ?) WHERE id = ?", (tokens, lease_id))
        )

    async def leases(self, account_id: str) -> list[Lease]:
        rows = await self._hot.run(
            lambda db: db.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE account_id = ? ORDER BY id", (account_id,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    async def key_leases(self, key_id: str) -> list[Lease]:
        rows = await self._hot.run(
            lambda db: db.execute(f"SELECT {LEASE_COLUMNS} FROM key_leases WHERE key_id = ? ORDER BY id", (key_id,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    async def expired_leases(self, before: float) -> list[Lease]:
        rows = await self._slow.run(
            lambda db: db.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE expires_at < ?", (before,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    async def sweep(self, now: float) -> None:
        await self._slow.run(lambda db: db.execute("DELETE FROM leases WHERE expires_at < ?", (now,)))
        await self._slow.run(lambda db: db.execute("DELETE FROM key_leases WHERE expires_at < ?", (now,)))
        await super().sweep(now)


def _put_lease(
    db: sqlite3.Connection, account_id: str, lease_id: str, held: int, now: float, expires_at: float, key_id: str | None = None
) -> None:
    """Write a lease on the account's balance (or on key ``key_id``'s cap) as planned, dropping the
    expired leases of the same scope on the way."""
    if key_id is None:
        db.execute("DELETE FROM leases WHERE account_id = ? AND expires_at <= ? AND id != ?", (account_id, now, lease_id))
        db.execute(
            "INSERT INTO leases (id, account_id, tokens, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET tokens = excluded.tokens, expires_at = excluded.expires_at",
            (lease_id, account_id, held, expires_at),
        )
        return
    db.execute("DELETE FROM key_leases WHERE key_id = ? AND expires_at <= ? AND id != ?", (key_id, now, lease_id))
    db.execute(
        "INSERT INTO key_leases (id, key_id, account_id, tokens, expires_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET tokens = excluded.tokens, expires_at = excluded.expires_at",
        (lease_id, key_id, account_id, held, expires_at),
    )
