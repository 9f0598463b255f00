"""Packages and the ledger in the SQLite store: a batch of entries, its debits and the settling of
the reservations it held are one transaction."""
from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from ...core.errors import Conflict
from ..contracts.leases import Lease, settle_leases
from ..contracts.ledger import Charge, LedgerEntry, LedgerQuery, Mismatch, Package, UsageRow, plan_debits
from .base import LEASE_COLUMNS, PACKAGE_COLUMNS, SqliteBase, page_filter

SCHEMA = """
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
    key_lease_id TEXT,
    api TEXT NOT NULL DEFAULT 'chat'
);
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger(account_id, created_at);
"""

_LEDGER_COLUMNS = (
    "request_id", "account_id", "key_id", "model", "target", "prompt_tokens", "completion_tokens",
    "total_tokens", "estimated", "stream", "outcome", "status", "latency_ms", "user", "created_at",
    "attempts", "debits", "reasoning_tokens", "cached_tokens", "lease_id", "reserved", "key_lease_id",
    "api",
)
# Columns added after the first release, for files made before them.
ADDED_COLUMNS = (
    ("ledger", "reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "lease_id", "TEXT"),
    ("ledger", "reserved", "INTEGER NOT NULL DEFAULT 0"),
    ("ledger", "key_lease_id", "TEXT"),
    ("ledger", "api", "TEXT NOT NULL DEFAULT 'chat'"),
)
_ROW_MARKS = f"({', '.join('?' for _ in _LEDGER_COLUMNS)})"
_INSERT_LEDGER = f"INSERT INTO ledger ({', '.join(_LEDGER_COLUMNS)}) VALUES {_ROW_MARKS}"
# Rows per multi-row INSERT: one statement step for the lot instead of one per row (a quarter less
# CPU per row, and the writer thread takes the GIL back fewer times); a fixed size keeps it one
# cached statement. The remainder of a batch goes row by row.
_ROWS_PER_INSERT = 64


class SqliteLedger(SqliteBase):
    async def grant_package(self, package: Package) -> Package:
        def run(db: sqlite3.Connection) -> Package:
            try:
                db.execute(
                    f"INSERT INTO packages ({PACKAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE account_id = ? ORDER BY granted_at, id",
                (account_id,),
            ).fetchall()
        )
        return [Package(*r) for r in rows]

    async def record(self, entries: list[LedgerEntry]) -> int:
        if not entries:
            return 0
        return await self._ledger.run(lambda db: self._record(db, entries))

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
            _insert_ledger(db, [_ledger_row(e) for e in fresh])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(fresh)

    def _debit(self, db: sqlite3.Connection, account_id: str, entries: list[LedgerEntry]) -> None:
        packages = [
            Package(*r)
            for r in db.execute(f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE account_id = ?", (account_id,))
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
            leases = [Lease(*row) for row in db.execute(f"SELECT {LEASE_COLUMNS} FROM {table} WHERE id IN ({marks})", ids)]
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

    async def key_tokens(self, key_id: str) -> int:
        row = await self._hot.run(
            lambda db: db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM ledger WHERE key_id = ?", (key_id,)).fetchone()
        )
        return row[0]

    async def ledger_page(self, account_id: str, query: LedgerQuery) -> list[LedgerEntry]:
        where, args = page_filter(
            (("account_id", account_id), ("model", query.model), ("key_id", query.key_id), ("outcome", query.outcome),
             ("api", query.api)),
            "created_at", "request_id", query.since, query.until, query.after,
        )
        sql = (
            f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ledger WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, request_id DESC LIMIT ?"
        )
        rows = await self._slow.run(lambda db: db.execute(sql, (*args, query.limit)).fetchall())
        return [_ledger_entry(r) for r in rows]


def _ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    return (
        entry.request_id, entry.account_id, entry.key_id, entry.model, entry.target,
        entry.prompt_tokens, entry.completion_tokens, entry.total_tokens, int(entry.estimated),
        int(entry.stream), entry.outcome, entry.status, entry.latency_ms, entry.user,
        entry.created_at, entry.attempts, orjson.dumps(entry.debits).decode(),
        entry.reasoning_tokens, entry.cached_tokens, entry.lease_id, entry.reserved, entry.key_lease_id,
        entry.api,
    )


def _ledger_entry(row: tuple) -> LedgerEntry:
    values = dict(zip(_LEDGER_COLUMNS, row))
    values["estimated"] = bool(values["estimated"])
    values["stream"] = bool(values["stream"])
    values["debits"] = orjson.loads(values["debits"])
    return LedgerEntry(**values)


def _insert_ledger(db: sqlite3.Connection, rows: list[tuple]) -> None:
    per = min(_ROWS_PER_INSERT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_LEDGER_COLUMNS))
    whole = len(rows) - len(rows) % per if per > 1 else 0
    statement = _INSERT_LEDGER + (", " + _ROW_MARKS) * (per - 1)
    for start in range(0, whole, per):
        db.execute(statement, [value for row in rows[start:start + per] for value in row])
    db.executemany(_INSERT_LEDGER, rows[whole:])
