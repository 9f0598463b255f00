"""Stored responses in the SQLite store: one row each, its JSON as text; expired rows are swept."""
from __future__ import annotations

from typing import Sequence

import orjson

from ..contracts.responses import StoredResponse
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    chain TEXT NOT NULL,
    response BLOB NOT NULL,
    input BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses(expires_at);
"""
# Ids asked for at once stay well under SQLite's limit on a statement's variables.
_BATCH = 500


class SqliteResponses(SqliteBase):
    async def save_response(self, stored: StoredResponse) -> None:
        row = (stored.id, stored.account_id, stored.created_at, stored.expires_at, orjson.dumps(list(stored.chain)).decode(),
               stored.response, stored.input)
        await self._slow.run(lambda db: db.execute(
            "INSERT OR REPLACE INTO responses (id, account_id, created_at, expires_at, chain, response, input) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", row,
        ))

    async def stored_responses(self, account_id: str, ids: Sequence[str], now: float) -> list[StoredResponse]:
        out: list[StoredResponse] = []
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), _BATCH):
            batch = ids[start:start + _BATCH]
            sql = (
                "SELECT id, account_id, created_at, expires_at, chain, response, input FROM responses "
                f"WHERE id IN ({','.join('?' * len(batch))}) AND account_id = ? AND expires_at > ?"
            )
            rows = await self._hot.run(lambda db, sql=sql, batch=batch: db.execute(sql, (*batch, account_id, now)).fetchall())
            out += [StoredResponse(r[0], r[1], r[2], r[3], tuple(orjson.loads(r[4])), bytes(r[5]), bytes(r[6])) for r in rows]
        return out

    async def delete_response(self, account_id: str, response_id: str, now: float) -> bool:
        cursor = await self._hot.run(lambda db: db.execute(
            "DELETE FROM responses WHERE id = ? AND account_id = ? AND expires_at > ?", (response_id, account_id, now)
        ))
        return cursor.rowcount > 0

    async def sweep(self, now: float) -> None:
        await self._slow.run(lambda db: db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,)))
        await super().sweep(now)
