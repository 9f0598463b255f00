"""The audit log in the SQLite store; an event's before and after values are JSON."""
from __future__ import annotations

from typing import Any

import orjson

from ..contracts.audit import AuditEvent, AuditQuery
from .base import SqliteBase, page_filter

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    account_id TEXT,
    target TEXT,
    before TEXT,
    after TEXT,
    ip TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit(at, id);
CREATE INDEX IF NOT EXISTS audit_account ON audit(account_id, at);
"""


class SqliteAudit(SqliteBase):
    async def append_audit(self, event: AuditEvent) -> None:
        await self._hot.run(
            lambda db: db.execute(
                "INSERT INTO audit (id, at, actor, action, account_id, target, before, after, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.id, event.at, event.actor, event.action, event.account_id, event.target,
                 _json(event.before), _json(event.after), event.ip),
            )
        )

    async def audit(self, query: AuditQuery) -> list[AuditEvent]:
        where, args = page_filter(
            (("account_id", query.account_id), ("action", query.action)), "at", "id", query.since, query.until, query.after,
        )
        sql = (
            "SELECT id, at, actor, action, account_id, target, before, after, ip FROM audit "
            f"WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT ?"
        )
        rows = await self._slow.run(lambda db: db.execute(sql, (*args, query.limit)).fetchall())
        return [
            AuditEvent(r[0], r[1], r[2], r[3], r[4], r[5], _unjson(r[6]), _unjson(r[7]), r[8]) for r in rows
        ]


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)
