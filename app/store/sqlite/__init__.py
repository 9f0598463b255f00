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
from typing import Any, Callable, Mapping, TypeVar

import orjson

from ...core.errors import Conflict, StoreUnavailable
from ..contracts import Store
from ..contracts.accounts import Account
from ..contracts.alerts import Alert, AlertSettings
from ..contracts.audit import AuditEvent, AuditQuery
from ..contracts.grants import Code, Topup
from ..contracts.keys import KEY_CONTROLS, KeyRecord
from ..contracts.leases import CapAsk, Lease, LeaseGrant, lease_refused, plan_lease, settle_leases
from ..contracts.ledger import Charge, LedgerEntry, LedgerQuery, Mismatch, Package, UsageRow, plan_debits
from ..contracts.limits import WindowCount, hour_of, minute_of, window_expiry
from ..contracts.owners import Invite, Owner, Session

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
    per_hour INTEGER,
    name TEXT,
    expires_at REAL,
    models TEXT,
    token_cap INTEGER,
    ips TEXT
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
    debits TEXT NOT NULL DEFAULT '[]',
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    reserved INTEGER NOT NULL DEFAULT 0,
    key_lease_id TEXT
);
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger(account_id, created_at);
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
CREATE TABLE IF NOT EXISTS owners (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    email TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS owners_account ON owners(account_id);
CREATE TABLE IF NOT EXISTS invites (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    email TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    accepted_at REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
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

_LEDGER_COLUMNS = (
    "request_id", "account_id", "key_id", "model", "target", "prompt_tokens", "completion_tokens",
    "total_tokens", "estimated", "stream", "outcome", "status", "latency_ms", "user", "created_at",
    "attempts", "debits", "reasoning_tokens", "cached_tokens", "lease_id", "reserved", "key_lease_id",
)
# Columns added after the first release: (table, column, definition) for files made before them.
_ADDED_COLUMNS = (
    ("ledger", "reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "lease_id", "TEXT"),
    ("ledger", "reserved", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "key_lease_id", "TEXT"),
    ("api_keys", "name", "TEXT"),
    ("api_keys", "expires_at", "REAL"),
    ("api_keys", "models", "TEXT"),
    ("api_keys", "token_cap", "INTEGER"),
    ("api_keys", "ips", "TEXT"),
)
_LEASE_COLUMNS = "id, account_id, tokens, expires_at"
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
        await self._slow.run(_add_columns)
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
            self._settle(db, fresh)
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

    @staticmethod
    def _settle(db: sqlite3.Connection, entries: list[LedgerEntry]) -> None:
        """Each new entry's reservation leaves its lease, and its key's lease on its cap, in the
        transaction that debits it."""
        for table, of in (("leases", lambda e: e.lease_id), ("key_leases", lambda e: e.key_lease_id)):
            ids = sorted({of(e) for e in entries if of(e) and e.reserved > 0})
            if not ids:
                continue
            marks = ",".join("?" for _ in ids)
            leases = [Lease(*row) for row in db.execute(f"SELECT {_LEASE_COLUMNS} FROM {table} WHERE id IN ({marks})", ids)]
            settled = settle_leases(leases, [(of(e), e.reserved) for e in entries])
            db.executemany(f"UPDATE {table} SET tokens = ? WHERE id = ?", [(t, i) for i, t in settled.items()])

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
                "SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), SUM(outcome != 'ok') FROM ledger "
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

    # balance reservations

    async def lease(
        self, account_id: str, lease_id: str, need: int, size: Callable[[int, int], int], now: float, expires_at: float,
        cap: CapAsk | None = None,
    ) -> LeaseGrant:
        def run(db: sqlite3.Connection) -> LeaseGrant:
            db.execute("BEGIN IMMEDIATE")  # outside the try: a locked file changed nothing, and is retried
            try:
                packages = [
                    Package(*r)
                    for r in db.execute(f"SELECT {self._PACKAGE_COLUMNS} FROM packages WHERE account_id = ?", (account_id,))
                ]
                leases = [Lease(*r) for r in db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE account_id = ?", (account_id,))]
                used, key_leases = 0, None
                if cap is not None:
                    used = db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM ledger WHERE key_id = ?", (cap.key_id,)).fetchone()[0]
                    key_leases = [
                        Lease(*r) for r in db.execute(f"SELECT {_LEASE_COLUMNS} FROM key_leases WHERE key_id = ?", (cap.key_id,))
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
            lambda db: db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE account_id = ? ORDER BY id", (account_id,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    async def key_leases(self, key_id: str) -> list[Lease]:
        rows = await self._hot.run(
            lambda db: db.execute(f"SELECT {_LEASE_COLUMNS} FROM key_leases WHERE key_id = ? ORDER BY id", (key_id,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    async def expired_leases(self, before: float) -> list[Lease]:
        rows = await self._slow.run(
            lambda db: db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE expires_at < ?", (before,)).fetchall()
        )
        return [Lease(*r) for r in rows]

    # rate windows

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
        await self._slow.run(lambda db: db.execute("DELETE FROM leases WHERE expires_at < ?", (now,)))
        await self._slow.run(lambda db: db.execute("DELETE FROM key_leases WHERE expires_at < ?", (now,)))
        await self._slow.run(lambda db: db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)))

    # key controls

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

    async def key_tokens(self, key_id: str) -> int:
        row = await self._hot.run(
            lambda db: db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM ledger WHERE key_id = ?", (key_id,)).fetchone()
        )
        return row[0]

    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        where, args = _page_filter(
            (("account_id", account_id), ("model", query.model), ("key_id", query.key_id), ("outcome", query.outcome)),
            "created_at", "request_id", query.since, query.until, query.after,
        )
        sql = (
            f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ledger WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, request_id DESC LIMIT ?"
        )
        rows = await self._slow.run(lambda db: db.execute(sql, (*args, query.limit)).fetchall())
        return [_ledger_entry(r) for r in rows]

    # owners, invites, sessions

    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        def run(db: sqlite3.Connection) -> Owner:
            try:
                db.execute(
                    "INSERT INTO owners (id, account_id, email, password, created_at) VALUES (?, ?, ?, ?, ?)",
                    (owner.id, owner.account_id, owner.email, password_hash, owner.created_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"An owner with email '{owner.email}' already exists.", param="email") from None
            return owner

        return await self._hot.run(run)

    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT id, account_id, email, created_at, password FROM owners WHERE email = ?", (email,)
            ).fetchone()
        )
        return (Owner(*row[:4]), row[4]) if row else None

    async def owners(self, account_id: str) -> list[Owner]:
        rows = await self._hot.run(
            lambda db: db.execute(
                "SELECT id, account_id, email, created_at FROM owners WHERE account_id = ? ORDER BY created_at, id",
                (account_id,),
            ).fetchall()
        )
        return [Owner(*r) for r in rows]

    async def create_invite(self, invite: Invite, token_hash: str) -> Invite:
        def run(db: sqlite3.Connection) -> Invite:
            try:
                db.execute(
                    "INSERT INTO invites (id, token_hash, account_id, email, created_at, expires_at, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (invite.id, token_hash, invite.account_id, invite.email, invite.created_at, invite.expires_at, invite.accepted_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict("The invite could not be stored; create it again.") from None
            return invite

        return await self._hot.run(run)

    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "UPDATE invites SET accepted_at = ? WHERE token_hash = ? AND accepted_at IS NULL AND expires_at > ? "
                "RETURNING id, account_id, email, created_at, expires_at, accepted_at",
                (now, token_hash, now),
            ).fetchone()
        )
        return Invite(*row) if row else None

    async def create_session(self, session: Session) -> Session:
        await self._hot.run(
            lambda db: db.execute(
                "INSERT INTO sessions (token_hash, account_id, owner_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, session.account_id, session.owner_id, session.created_at, session.expires_at),
            )
        )
        return session

    async def session(self, token_hash: str, now: float) -> Session | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT token_hash, account_id, owner_id, created_at, expires_at FROM sessions "
                "WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            ).fetchone()
        )
        return Session(*row) if row else None

    async def delete_session(self, token_hash: str) -> bool:
        cur = await self._hot.run(lambda db: db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)))
        return cur.rowcount == 1

    # redemption codes and top-ups

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

    # low-balance alerts

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

    # audit log

    async def append_audit(self, event: AuditEvent) -> None:
        await self._hot.run(
            lambda db: db.execute(
                "INSERT INTO audit (id, at, actor, action, account_id, target, before, after, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.id, event.at, event.actor, event.action, event.account_id, event.target,
                 _json(event.before), _json(event.after), event.ip),
            )
        )

    async def audit(self, query: AuditQuery) -> list[AuditEvent]:
        where, args = _page_filter(
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


def _page_filter(
    equal: tuple[tuple[str, Any], ...], at: str, tiebreak: str, since: float | None, until: float | None,
    after: tuple[float, str] | None,
) -> tuple[list[str], list[Any]]:
    """The WHERE of one page, newest first: columns equal to the values given, a time range, and a
    keyset cursor (the last row's time and id)."""
    where, args = ["1 = 1"], []
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append(f"{at} >= ?")
        args.append(since)
    if until is not None:
        where.append(f"{at} < ?")
        args.append(until)
    if after is not None:
        where.append(f"({at} < ? OR ({at} = ? AND {tiebreak} < ?))")
        args += [after[0], after[0], after[1]]
    return where, args


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


def _ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    return (
        entry.request_id, entry.account_id, entry.key_id, entry.model, entry.target,
        entry.prompt_tokens, entry.completion_tokens, entry.total_tokens, int(entry.estimated),
        int(entry.stream), entry.outcome, entry.status, entry.latency_ms, entry.user,
        entry.created_at, entry.attempts, orjson.dumps(entry.debits).decode(),
        entry.reasoning_tokens, entry.cached_tokens, entry.lease_id, entry.reserved, entry.key_lease_id,
    )


def _ledger_entry(row: tuple) -> LedgerEntry:
    values = dict(zip(_LEDGER_COLUMNS, row))
    values["estimated"] = bool(values["estimated"])
    values["stream"] = bool(values["stream"])
    values["debits"] = orjson.loads(values["debits"])
    return LedgerEntry(**values)


def _key(row: tuple) -> KeyRecord:
    values = list(row)
    for i in (9, 11):  # models, ips: JSON lists
        values[i] = tuple(orjson.loads(values[i])) if values[i] is not None else None
    return KeyRecord(*values)


def _json_list(value: Any) -> str | None:
    return None if value is None else orjson.dumps(list(value)).decode()


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
