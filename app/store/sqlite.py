"""The embedded store: SQLite files in WAL mode, shared safely by several worker processes.

A request's short statements run inline on the event loop and hand over to a thread if a file is
locked; ledger batches and reports run on threads of their own. Every write is one short transaction.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import orjson

from .. import ratelimit
from ..errors import StoreUnavailable
from ..metering import LedgerEntry
from .base import (
    Account,
    Charge,
    Conflict,
    KeyRecord,
    Mismatch,
    Package,
    Store,
    UsageRow,
    WindowCount,
    plan_debits,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    per_minute INTEGER,
    per_hour INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS packages (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS packages_account ON packages(account_id, granted_at);
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    user TEXT,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    debits TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger(account_id, created_at);
"""

# Rate windows live in a file of their own: they are written on every request, and there they
# never wait behind a ledger batch. Losing them in a power cut costs nothing, hence synchronous=OFF.
LIMITS_SCHEMA = """
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
# processes) is counted in the later one, which can only make the limit stricter.
_HIT = """
INSERT INTO rate_windows (key_id, hour, hour_count, minute, minute_count, expires_at)
VALUES (?1, ?2, 1, ?3, 1, ?4)
ON CONFLICT (key_id, hour) DO UPDATE SET
    hour_count = hour_count + 1,
    minute_count = CASE WHEN excluded.minute > minute THEN 1 ELSE minute_count + 1 END,
    minute = MAX(minute, excluded.minute)
WHERE hour_count < ?5 AND (excluded.minute > minute OR minute_count < ?6)
RETURNING hour_count, minute_count
"""

_LEDGER_COLUMNS = (
    "request_id", "account_id", "key_id", "model", "target", "prompt_tokens", "completion_tokens",
    "total_tokens", "estimated", "stream", "outcome", "status", "latency_ms", "user", "created_at",
    "attempts", "debits",
)
_INSERT_LEDGER = (
    f"INSERT INTO ledger ({', '.join(_LEDGER_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _LEDGER_COLUMNS)})"
)


class _Connection:
    """A SQLite connection used only from its own thread."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._path = path
        self._timeout = timeout
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            deadline = time.monotonic() + self._timeout
            while True:
                # Switching a new file to WAL can report "locked" without waiting on the busy
                # handler while another process creates the schema: wait here instead.
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        db.close()
                        raise
                    time.sleep(0.02)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
        return self._db

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._open())
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            if self._db is not None:
                try:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    self._close_db()
            raise StoreUnavailable() from exc

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_db)
        self._executor.shutdown(wait=True)


class _Inline:
    """A connection used on the event loop's own thread, for the short statements of a request.

    A statement that finds the file locked changed nothing: it is tried again a few times within a
    fraction of a millisecond, then handed to ``fallback``'s thread with the full timeout, so the
    loop never sleeps in SQLite's busy handler.
    """

    RETRIES = 4
    PAUSE = 0.00005

    def __init__(self, path: Path, fallback: _Connection, synchronous: str = "NORMAL") -> None:
        self._path = path
        self._fallback = fallback
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T], timeout: float | None = None) -> T:
        """Run ``fn`` now; if the file stays locked, on the fallback thread within ``timeout``."""
        try:
            if self._db is None:
                self._db = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
                self._db.execute("PRAGMA foreign_keys=ON")
            for _ in range(self.RETRIES):
                try:
                    return fn(self._db)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    time.sleep(self.PAUSE)
        except sqlite3.Error as exc:
            self.close()
            raise StoreUnavailable() from exc
        if timeout is None:
            return await self._fallback.run(fn)
        try:
            async with asyncio.timeout(timeout):
                return await self._fallback.run(fn)
        except TimeoutError:
            raise StoreUnavailable() from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class SqliteStore(Store):
    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = Path(path)
        # Statements run inline on the event loop: a thread doing SQLite work next to the loop
        # costs more in GIL hand-overs than the statements themselves. Only a locked file (and the
        # long reports) go to a thread.
        self._slow = _Connection(self.path, timeout)
        self._hot = _Inline(self.path, self._slow)
        self.limits_path = self.path.with_name(self.path.stem + "-limits" + self.path.suffix)
        self._limits_slow = _Connection(self.limits_path, timeout)
        self._limits = _Inline(self.limits_path, self._limits_slow, synchronous="OFF")

    async def init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._slow.run(lambda db: db.executescript(SCHEMA))
        await self._limits_slow.run(lambda db: db.executescript(LIMITS_SCHEMA))

    async def close(self) -> None:
        self._hot.close()
        self._limits.close()
        for connection in (self._slow, self._limits_slow):
            await connection.close()

    async def ping(self) -> None:
        await self._hot.run(lambda db: db.execute("SELECT 1").fetchone())

    # accounts

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

    # keys

    _KEY_COLUMNS = "id, account_id, prefix, created_at, revoked_at, per_minute, per_hour"

    async def create_key(self, record: KeyRecord, key_hash: str) -> KeyRecord:
        def run(db: sqlite3.Connection) -> KeyRecord:
            try:
                db.execute(
                    "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at, revoked_at, per_minute, per_hour) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.account_id, key_hash, record.prefix, record.created_at,
                     record.revoked_at, record.per_minute, record.per_hour),
                )
            except sqlite3.IntegrityError:
                raise Conflict("The key could not be stored; create it again.") from None
            return record

        return await self._hot.run(run)

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._hot.run(
            lambda db: db.execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        )
        return KeyRecord(*row) if row else None

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._hot.run(
            lambda db: db.execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        )
        return KeyRecord(*row) if row else None

    async def keys(self, account_id: str) -> list[KeyRecord]:
        rows = await self._hot.run(
            lambda db: db.execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE account_id = ? ORDER BY created_at", (account_id,)
            ).fetchall()
        )
        return [KeyRecord(*r) for r in rows]

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

    # packages

    _PACKAGE_COLUMNS = "id, account_id, plan, tokens, used, granted_at, expires_at"

    async def grant_package(self, package: Package) -> Package:
        def run(db: sqlite3.Connection) -> Package:
            try:
                db.execute(
                    f"INSERT INTO packages ({self._PACKAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (package.id, package.account_id, package.plan, package.tokens, package.used,
                     package.granted_at, package.expires_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict("The package could not be stored: its id is taken or its account does not exist.") from None
            return package

        return await self._hot.run(run)

    async def packages(self, account_id: str) -> list[Package]:
        rows = await self._hot.run(
            lambda db: db.execute(
                f"SELECT {self._PACKAGE_COLUMNS} FROM packages WHERE account_id = ? ORDER BY granted_at, id",
                (account_id,),
            ).fetchall()
        )
        return [Package(*r) for r in rows]

    # ledger

    async def record(self, entries: list[LedgerEntry]) -> int:
        if not entries:
            return 0
        return await self._hot.run(lambda db: self._record(db, entries))

    def _record(self, db: sqlite3.Connection, entries: list[LedgerEntry]) -> int:
        unique: dict[str, LedgerEntry] = {e.request_id: e for e in entries}
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = list(unique)
            seen: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" for _ in chunk)
                seen.update(r[0] for r in db.execute(f"SELECT request_id FROM ledger WHERE request_id IN ({marks})", chunk))
            fresh = [e for rid, e in unique.items() if rid not in seen]
            by_account: dict[str, list[LedgerEntry]] = {}
            for entry in fresh:
                if entry.total_tokens > 0:
                    by_account.setdefault(entry.account_id, []).append(entry)
            for account_id, account_entries in by_account.items():
                self._debit(db, account_id, account_entries)
            db.executemany(_INSERT_LEDGER, [_ledger_row(e) for e in fresh])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(fresh)

    def _debit(self, db: sqlite3.Connection, account_id: str, entries: list[LedgerEntry]) -> None:
        packages = [
            Package(*r)
            for r in db.execute(f"SELECT {self._PACKAGE_COLUMNS} FROM packages WHERE account_id = ?", (account_id,))
        ]
        used, debits = plan_debits(packages, [Charge(e.request_id, e.total_tokens, e.created_at) for e in entries])
        for entry in entries:
            entry.debits = debits[entry.request_id]
        db.executemany("UPDATE packages SET used = ? WHERE id = ?", [(used[p.id], p.id) for p in packages if used[p.id] != p.used])

    async def ledger_entry(self, request_id: str) -> LedgerEntry | None:
        row = await self._hot.run(
            lambda db: db.execute(
                f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ledger WHERE request_id = ?", (request_id,)
            ).fetchone()
        )
        return _ledger_entry(row) if row else None

    async def ledger_count(self, account_id: str | None = None, outcome: str | None = None) -> int:
        where = [(column, value) for column, value in (("account_id", account_id), ("outcome", outcome)) if value is not None]
        sql = "SELECT COUNT(*) FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(f"{column} = ?" for column, _ in where)
        args = tuple(value for _, value in where)
        row = await self._slow.run(lambda db: db.execute(sql, args).fetchone())
        return row[0]

    async def usage(self, account_id: str, since: float, until: float) -> list[UsageRow]:
        rows = await self._slow.run(
            lambda db: db.execute(
                "SELECT strftime('%Y-%m-%d', created_at, 'unixepoch') AS day, model, COUNT(*), "
                "SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens) FROM ledger "
                "WHERE account_id = ? AND created_at >= ? AND created_at < ? GROUP BY day, model ORDER BY day, model",
                (account_id, since, until),
            ).fetchall()
        )
        return [UsageRow(*r) for r in rows]

    async def reconcile(self) -> list[Mismatch]:
        def run(db: sqlite3.Connection) -> list[Mismatch]:
            from_ledger: dict[str, int] = {}
            # One read transaction: both reads see the same snapshot while other writers commit.
            db.execute("BEGIN")
            try:
                for (debits,) in db.execute("SELECT debits FROM ledger WHERE debits != '[]'"):
                    for package_id, tokens in orjson.loads(debits):
                        from_ledger[package_id] = from_ledger.get(package_id, 0) + tokens
                packages = db.execute("SELECT id, account_id, used FROM packages").fetchall()
            finally:
                db.execute("COMMIT")
            out = []
            for package_id, account_id, used in packages:
                expected = from_ledger.pop(package_id, 0)
                if expected != used:
                    out.append(Mismatch(package_id, account_id, used, expected))
            out.extend(Mismatch(pid, "", 0, tokens) for pid, tokens in from_ledger.items())
            return out

        return await self._slow.run(run)

    # rate windows

    async def hit(self, key_id: str, per_minute: int, per_hour: int, now: float, timeout: float | None = None) -> WindowCount:
        hour = ratelimit.hour_of(now)
        minute = ratelimit.minute_of(now)
        expires = ratelimit.window_expiry(now)

        def run(db: sqlite3.Connection) -> WindowCount:
            row = db.execute(_HIT, (key_id, hour, minute, expires, per_hour, per_minute)).fetchone()
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


def _ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    return (
        entry.request_id, entry.account_id, entry.key_id, entry.model, entry.target,
        entry.prompt_tokens, entry.completion_tokens, entry.total_tokens, int(entry.estimated),
        int(entry.stream), entry.outcome, entry.status, entry.latency_ms, entry.user,
        entry.created_at, entry.attempts, orjson.dumps(entry.debits).decode(),
    )


def _ledger_entry(row: tuple) -> LedgerEntry:
    values = dict(zip(_LEDGER_COLUMNS, row))
    values["estimated"] = bool(values["estimated"])
    values["stream"] = bool(values["stream"])
    values["debits"] = orjson.loads(values["debits"])
    return LedgerEntry(**values)

