"""Redemption codes and top-up events in the SQLite store."""
from __future__ import annotations

import sqlite3

from ...core.errors import Conflict
from ..contracts.grants import Code, Topup
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (
    id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    redeemed_at REAL,
    redeemed_by TEXT
);
CREATE INDEX IF NOT EXISTS codes_batch ON codes(batch_id);
CREATE TABLE IF NOT EXISTS topups (
    event_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    package_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS topups_account ON topups(account_id);
"""


class SqliteGrants(SqliteBase):
    _CODE_COLUMNS = "id, batch_id, plan, tokens, days, created_at, expires_at, redeemed_at, redeemed_by"

    async def create_codes(self, codes: list[tuple[Code, str]]) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    f"INSERT INTO codes ({self._CODE_COLUMNS}, code_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(c.id, c.batch_id, c.plan, c.tokens, c.days, c.created_at, c.expires_at, c.redeemed_at,
                      c.redeemed_by, h) for c, h in codes],
                )
                db.execute("COMMIT")
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise Conflict("The codes could not be stored; create the batch again.") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._slow.run(run)

    async def code_by_hash(self, code_hash: str) -> Code | None:
        row = await self._hot.run(
            lambda db: db.execute(f"SELECT {self._CODE_COLUMNS} FROM codes WHERE code_hash = ?", (code_hash,)).fetchone()
        )
        return Code(*row) if row else None

    async def codes(self, batch_id: str) -> list[Code]:
        rows = await self._slow.run(
            lambda db: db.execute(
                f"SELECT {self._CODE_COLUMNS} FROM codes WHERE batch_id = ? ORDER BY created_at, id", (batch_id,)
            ).fetchall()
        )
        return [Code(*r) for r in rows]

    async def claim_code(self, code_id: str, account_id: str, now: float) -> bool:
        cur = await self._hot.run(
            lambda db: db.execute(
                "UPDATE codes SET redeemed_at = ?, redeemed_by = ? WHERE id = ? AND redeemed_at IS NULL AND expires_at > ?",
                (now, account_id, code_id, now),
            )
        )
        return cur.rowcount == 1

    async def record_topup(self, topup: Topup) -> tuple[Topup, bool]:
        def run(db: sqlite3.Connection) -> tuple[Topup, bool]:
            cur = db.execute(
                "INSERT INTO topups (event_id, account_id, package_id, plan, tokens, days, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (topup.event_id, topup.account_id, topup.package_id, topup.plan, topup.tokens, topup.days, topup.received_at),
            )
            if cur.rowcount == 1:
                return topup, True
            row = db.execute(
                "SELECT event_id, account_id, package_id, plan, tokens, days, received_at FROM topups WHERE event_id = ?",
                (topup.event_id,),
            ).fetchone()
            return Topup(*row), False

        return await self._hot.run(run)
