"""The plumbing every part of the SQLite store shares: its connections, inline on the event loop or
on a thread of their own, and the keyset page filter."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from ...core.errors import StoreUnavailable

T = TypeVar("T")

PACKAGE_COLUMNS = "id, account_id, plan, tokens, used, granted_at, expires_at"
LEASE_COLUMNS = "id, account_id, tokens, expires_at"


class Connection:
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


class Inline:
    """A connection used on the event loop's own thread, for the short statements of a request.

    A statement that finds the file locked changed nothing: it is tried again a few times within a
    fraction of a millisecond, then handed to ``fallback``'s thread with the full timeout, so the
    loop never sleeps in SQLite's busy handler.
    """

    RETRIES = 4
    PAUSE = 0.00005

    def __init__(self, path: Path, fallback: Connection, synchronous: str = "NORMAL") -> None:
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


class SqliteBase:
    """The files and connections every part of the store works on: the main file (statements of a
    request inline on the loop, ledger batches on a thread of their own, the rest on another) and the
    rate windows' file of its own."""

    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = Path(path)
        # Statements run inline on the event loop: a thread doing SQLite work next to the loop
        # costs more in GIL hand-overs than the statements themselves. Only a locked file (and the
        # long reports) go to a thread.
        self._slow = Connection(self.path, timeout)
        self._hot = Inline(self.path, self._slow)
        # Ledger batches: a thread and connection of their own, so the loop never waits on their
        # writes (nor on the checkpoints they trigger), and a report never delays them.
        self._ledger = Connection(self.path, timeout)
        self.limits_path = self.path.with_name(self.path.stem + "-limits" + self.path.suffix)
        self._limits_slow = Connection(self.limits_path, timeout)
        self._limits = Inline(self.limits_path, self._limits_slow, synchronous="OFF")


def page_filter(
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
