"""Accounts in the SQLite store."""
from __future__ import annotations

import sqlite3

from ...core.errors import Conflict
from ..contracts.accounts import Account
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""


class SqliteAccounts(SqliteBase):
    async def create_account(self, account_id: str, name: str, now: float) -> Account:
        def run(db: sqlite3.Connection) -> Account:
            try:
                db.execute("INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?)", (account_id, name, now))
            except sqlite3.IntegrityError:
                raise Conflict(f"An account named '{name}' already exists.", param="name") from None
            return Account(account_id, name, now)

        return await self._hot.run(run)

    async def account(self, id_or_name: str) -> Account | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT id, name, created_at FROM accounts WHERE id = ?1 OR name = ?1", (id_or_name,)
            ).fetchone()
        )
        return Account(*row) if row else None

    async def accounts(self) -> list[Account]:
        rows = await self._slow.run(lambda db: db.execute("SELECT id, name, created_at FROM accounts ORDER BY created_at").fetchall())
        return [Account(*r) for r in rows]
