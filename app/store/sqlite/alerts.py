"""Alert settings and the alert outbox in the SQLite store."""
from __future__ import annotations

import orjson

from ..contracts.alerts import Alert, AlertSettings
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_settings (
    account_id TEXT PRIMARY KEY,
    url TEXT,
    thresholds TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox(next_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_outbox_account ON alert_outbox(account_id, created_at);
"""


class SqliteAlerts(SqliteBase):
    async def alert_settings(self, account_id: str) -> AlertSettings | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT account_id, url, thresholds, updated_at FROM alert_settings WHERE account_id = ?", (account_id,)
            ).fetchone()
        )
        return AlertSettings(row[0], row[1], tuple(orjson.loads(row[2])), row[3]) if row else None

    async def set_alert_settings(self, settings: AlertSettings) -> None:
        await self._hot.run(
            lambda db: db.execute(
                "INSERT INTO alert_settings (account_id, url, thresholds, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET url = excluded.url, thresholds = excluded.thresholds, "
                "updated_at = excluded.updated_at",
                (settings.account_id, settings.url, orjson.dumps(list(settings.thresholds)).decode(), settings.updated_at),
            )
        )

    _ALERT_COLUMNS = (
        "id, account_id, url, body, created_at, next_at, attempts, delivered_at, failed_at, last_error, lease_owner, lease_until"
    )

    async def enqueue_alert(self, alert: Alert) -> bool:
        cur = await self._hot.run(
            lambda db: db.execute(
                f"INSERT INTO alert_outbox ({self._ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (alert.id, alert.account_id, alert.url, alert.body, alert.created_at, alert.next_at, alert.attempts,
                 alert.delivered_at, alert.failed_at, alert.last_error, alert.lease_owner, alert.lease_until),
            )
        )
        return cur.rowcount == 1

    async def claim_alerts(self, owner: str, now: float, lease: float, limit: int) -> list[Alert]:
        rows = await self._hot.run(
            lambda db: db.execute(
                "UPDATE alert_outbox SET lease_owner = ?, lease_until = ?, attempts = attempts + 1 WHERE id IN ("
                "SELECT id FROM alert_outbox WHERE delivered_at IS NULL AND failed_at IS NULL AND next_at <= ? "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at LIMIT ?) "
                f"RETURNING {self._ALERT_COLUMNS}",
                (owner, now + lease, now, now, limit),
            ).fetchall()
        )
        return [Alert(*r) for r in rows]

    async def finish_alert(self, alert_id: str, owner: str, now: float) -> bool:
        cur = await self._hot.run(
            lambda db: db.execute(
                "UPDATE alert_outbox SET delivered_at = ?, lease_owner = NULL, lease_until = NULL, last_error = NULL "
                "WHERE id = ? AND lease_owner = ? AND delivered_at IS NULL",
                (now, alert_id, owner),
            )
        )
        return cur.rowcount == 1

    async def retry_alert(self, alert_id: str, owner: str, next_at: float, error: str, give_up: bool = False) -> bool:
        cur = await self._hot.run(
            lambda db: db.execute(
                "UPDATE alert_outbox SET next_at = ?, last_error = ?, failed_at = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ? AND delivered_at IS NULL",
                (next_at, error, next_at if give_up else None, alert_id, owner),
            )
        )
        return cur.rowcount == 1

    async def alerts(self, account_id: str, limit: int = 50) -> list[Alert]:
        rows = await self._hot.run(
            lambda db: db.execute(
                f"SELECT {self._ALERT_COLUMNS} FROM alert_outbox WHERE account_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                (account_id, limit),
            ).fetchall()
        )
        return [Alert(*r) for r in rows]
