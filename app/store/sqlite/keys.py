"""API keys in the SQLite store; the models and address allow-lists of a key are JSON lists."""
from __future__ import annotations

import sqlite3
from typing import Any, Mapping

import orjson

from ...core.errors import Conflict
from ..contracts.keys import KEY_CONTROLS, KeyRecord
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    per_minute INTEGER,
    per_hour INTEGER,
    name TEXT,
    expires_at REAL,
    models TEXT,
    token_cap INTEGER,
    ips TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
"""

# Columns added after the first release, for files made before them.
ADDED_COLUMNS = (
    ("api_keys", "name", "TEXT"),
    ("api_keys", "expires_at", "REAL"),
    ("api_keys", "models", "TEXT"),
    ("api_keys", "token_cap", "INTEGER"),
    ("api_keys", "ips", "TEXT"),
)


class SqliteKeys(SqliteBase):
    _KEY_COLUMNS = "id, account_id, prefix, created_at, revoked_at, per_minute, per_hour, name, expires_at, models, token_cap, ips"

    async def create_key(self, record: KeyRecord, key_hash: str) -> KeyRecord:
        def run(db: sqlite3.Connection) -> KeyRecord:
            try:
                db.execute(
                    "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at, revoked_at, per_minute, per_hour, "
                    "name, expires_at, models, token_cap, ips) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.account_id, key_hash, record.prefix, record.created_at,
                     record.revoked_at, record.per_minute, record.per_hour, record.name, record.expires_at,
                     _json_list(record.models), record.token_cap, _json_list(record.ips)),
                )
            except sqlite3.IntegrityError:
                raise Conflict("The key could not be stored; create it again.") from None
            return record

        return await self._hot.run(run)

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._hot.run(
            lambda db: db.execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        )
        return _key(row) if row else None

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._hot.run(
            lambda db: db.execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        )
        return _key(row) if row else None

    async def keys(self, account_id: str) -> list[KeyRecord]:
        rows = await self._hot.run(
            lambda db: db.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE account_id = ? ORDER BY created_at", (account_id,)
            ).fetchall()
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
            if cur.rowcount:
                return True
            return db.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone() is not None

        return await self._hot.run(run)

    async def set_key_limits(self, key_id: str, per_minute: int | None, per_hour: int | None) -> bool:
        cur = await self._hot.run(
            lambda db: db.execute(
                "UPDATE api_keys SET per_minute = ?, per_hour = ? WHERE id = ?", (per_minute, per_hour, key_id)
            )
        )
        return cur.rowcount == 1

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        columns = [c for c in changes if c in KEY_CONTROLS]
        values = [_json_list(changes[c]) if c in ("models", "ips") else changes[c] for c in columns]

        def run(db: sqlite3.Connection) -> KeyRecord | None:
            if columns:
                sets = ", ".join(f"{c} = ?" for c in columns)
                db.execute(f"UPDATE api_keys SET {sets} WHERE id = ?", (*values, key_id))
            row = db.execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return _key(row) if row else None

        return await self._hot.run(run)


def _key(row: tuple) -> KeyRecord:
    values = list(row)
    for i in (9, 11):  # models, ips: JSON lists
        values[i] = tuple(orjson.loads(values[i])) if values[i] is not None else None
    return KeyRecord(*values)


def _json_list(value: Any) -> str | None:
    return None if value is None else orjson.dumps(list(value)).decode()
