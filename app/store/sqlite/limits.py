"""Rate windows in the SQLite store, in a file of their own."""
from __future__ import annotations

import sqlite3

from ..contracts.limits import WindowCount, hour_of, minute_of, window_expiry
from .base import SqliteBase

# Rate windows live in a file of their own: they are written on every request, and there they
# never wait behind a ledger batch. Losing them in a power cut costs nothing, hence synchronous=OFF.
SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_windows (
    key_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    hour_count INTEGER NOT NULL,
    minute INTEGER NOT NULL,
    minute_count INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_windows_expiry ON rate_windows(expires_at);
"""

# One statement decides both windows: the row of the key's current hour carries the hour count
# and the count of its latest minute. A request from an earlier minute (clock skew between
# processes) is counted in the later one, which can only make the limit stricter. ?7 requests are
# counted at once (at most both limits; the caller sees to it).
_HIT = """
INSERT INTO rate_windows (key_id, hour, hour_count, minute, minute_count, expires_at)
VALUES (?1, ?2, ?7, ?3, ?7, ?4)
ON CONFLICT (key_id, hour) DO UPDATE SET
    hour_count = hour_count + ?7,
    minute_count = CASE WHEN excluded.minute > minute THEN ?7 ELSE minute_count + ?7 END,
    minute = MAX(minute, excluded.minute)
WHERE hour_count + ?7 <= ?5 AND (excluded.minute > minute OR minute_count + ?7 <= ?6)
RETURNING hour_count, minute_count
"""


class SqliteLimits(SqliteBase):
    async def hit(
        self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None, take: int = 1
    ) -> WindowCount:
        hour = hour_of(now)
        minute = minute_of(now)
        expires = window_expiry(now)

        def run(db: sqlite3.Connection) -> WindowCount:
            row = db.execute(_HIT, (key_id, hour, minute, expires, per_hour, per_minute, take)).fetchone()
            if row is not None:
                return WindowCount(True, row[1], row[0])
            row = db.execute(
                "SELECT hour_count, minute, minute_count FROM rate_windows WHERE key_id = ? AND hour = ?",
                (key_id, hour),
            ).fetchone()
            hour_count, last_minute, minute_count = row
            return WindowCount(False, minute_count if last_minute >= minute else 0, hour_count)

        return await self._limits.run(run, timeout)

    async def sweep(self, now: float) -> None:
        await self._limits_slow.run(lambda db: db.execute("DELETE FROM rate_windows WHERE expires_at < ?", (now,)))
        await super().sweep(now)
