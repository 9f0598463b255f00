"""The per-worker ledger writer: requests hand it entries, it writes them in batches off the
response path, and spools them to a local fsync'd file whenever the store cannot take them.

Nothing is dropped: a batch is either in the store (idempotently, keyed by request id) or in a
spool file that this or any later process replays; once it is, its journal records are settled.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Callable

import orjson

from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..store import Store
from ..store.contracts.ledger import LedgerEntry
from . import journal
from .journal import Journal

log = logging.getLogger("zowy.ledger")

_SPOOL_SUFFIX = ".spool"
UPKEEP_INTERVAL = 60.0
# At shutdown a batch the store does not take within this many seconds is spooled instead.
CLOSING_WRITE_TIMEOUT = 2.0


class Spool:
    """Append-only files of ledger entries that did not reach the store yet, one per process,
    named by the process's token (its journal files carry the same one)."""

    def __init__(self, directory: Path, token: str) -> None:
        self.directory = Path(directory)
        self.token = token
        self._path: Path | None = None
        self._fd: int | None = None

    def append(self, entries: list[LedgerEntry]) -> None:
        """Write entries durably (fsync) before returning."""
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"{self.token}{_SPOOL_SUFFIX}"
            # Locked under a name replay ignores, then renamed: never visible unlocked.
            temp = self._path.with_suffix(".tmp")
            self._fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.rename(temp, self._path)
        data = b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in entries)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def size(self) -> int:
        """Bytes waiting in this directory's spool files."""
        try:
            return sum(p.stat().st_size for p in self.directory.glob(f"*{_SPOOL_SUFFIX}"))
        except OSError:
            return 0

    async def replay(self, store: Store, batch: int) -> int:
        """Move every spool file this process can lock into the store; how many entries were new."""
        if not self.directory.exists():
            return 0
        added = 0
        for path in sorted(self.directory.glob(f"*{_SPOOL_SUFFIX}")):
            own = path == self._path
            fd = self._fd if own else journal.try_lock(path)
            if fd is None:
                continue
            try:
                entries = _read_entries(path)
                for start in range(0, len(entries), batch):
                    added += await store.record(entries[start:start + batch])
                    await asyncio.sleep(0)  # let requests in between batches
                if own:
                    os.ftruncate(fd, 0)
                else:
                    path.unlink()
            finally:
                if not own:
                    os.close(fd)
        return added

    def close(self) -> None:
        if self._fd is not None:
            empty = os.fstat(self._fd).st_size == 0
            os.close(self._fd)
            if empty and self._path is not None:
                self._path.unlink(missing_ok=True)
            self._fd = None
            self._path = None


def _read_entries(path: Path) -> list[LedgerEntry]:
    entries = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a torn last write; the entry was never acknowledged as spooled
            try:
                entries.append(LedgerEntry.from_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError):
                log.error("skipping an unreadable spool line in %s", path)
    return entries


class Meter:
    """Queue, batch, write; spool on failure; replay when the store is back."""

    def __init__(
        self, store: Store, spool_dir: Path, batch: int = 512, interval: float = 0.05,
        write_timeout: float = 10.0, metrics: Metrics | None = None, journal: Journal | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.journal = journal
        self.spool = Spool(spool_dir, token or (journal.token if journal else f"{os.getpid()}-spool"))
        self.batch = batch
        self.interval = interval
        self.write_timeout = write_timeout
        self._queue: list[LedgerEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._spooled = False
        # Told of every batch the store took (low-balance alerts read the balances it moved).
        self.on_written: Callable[[list[LedgerEntry]], None] | None = None

    def record(self, entry: LedgerEntry) -> None:
        """Hand over one entry; never blocks, never fails."""
        self._queue.append(entry)
        if len(self._queue) >= self.batch:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        """Bill what earlier processes left in spools and journals, then start writing."""
        if not await self.recover():
            self._spooled = True
            log.error("store unavailable at start; spooled ledger entries will be replayed later")
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def recover(self) -> bool:
        """Replay spools, then bill the journals of dead processes; False if the store was unavailable."""
        try:
            added = await self.spool.replay(self.store, self.batch)
            if added:
                log.warning("replayed %d spooled ledger entries", added)
            if self.journal is not None:
                await journal.recover(self.journal.directory, self.store, self.spool.directory, self.batch)
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def _run(self) -> None:
        last_upkeep = time.monotonic()
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            if self.metrics is not None:
                self.metrics.queue_depth.set(len(self._queue))
                self.metrics.spool_bytes.set(self.spool.size() if self._spooled else 0)
            if time.monotonic() - last_upkeep > UPKEEP_INTERVAL:
                last_upkeep = time.monotonic()
                await self._upkeep()

    async def _upkeep(self) -> None:
        """Finish ledger writes a crashed process left half done, bill what dead workers left in
        their journals; drop spent rate windows."""
        try:
            if not self._spooled:
                await self.recover()
            finished = await self.store.recover()
            if finished:
                log.warning("finished %d half-written ledger entries", finished)
            await self.store.sweep(time.time())
        except (StoreUnavailable, TimeoutError):
            pass
        except Exception:
            log.exception("ledger upkeep failed")

    async def flush(self) -> None:
        """Write everything queued; on failure put it in the spool. Replays the spool when possible."""
        while self._queue:
            batch, self._queue = self._queue[: self.batch], self._queue[self.batch:]
            if self._spooled:
                self._to_spool(batch)
                continue
            try:
                await asyncio.sleep(0)  # let requests in between batches
                async with asyncio.timeout(self.write_timeout):
                    await self.store.record(batch)
                if self.on_written is not None:
                    self.on_written(batch)
            except (StoreUnavailable, TimeoutError):
                log.error("store unavailable: spooling %d ledger entries", len(batch))
                self._spooled = True
                self._to_spool(batch)
                continue
            except asyncio.CancelledError:
                self._to_spool(batch)  # written or not, it is safe in the spool: replays are idempotent
                raise
            except Exception:
                log.exception("ledger write failed: spooling %d entries", len(batch))
                self._spooled = True
                self._to_spool(batch)
                continue
            self._settle(batch)
        if self._spooled:
            await self._replay()

    def _to_spool(self, batch: list[LedgerEntry]) -> None:
        self.spool.append(batch)
        self._settle(batch)

    def _settle(self, batch: list[LedgerEntry]) -> None:
        if self.journal is not None:
            self.journal.settle([e.request_id for e in batch])

    async def _replay(self) -> None:
        try:
            await self.store.ping()
            added = await self.spool.replay(self.store, self.batch)
        except (StoreUnavailable, TimeoutError):
            return
        self._spooled = False
        log.warning("store is back: replayed %d spooled ledger entries", added)

    async def close(self) -> None:
        """Stop the writer after writing (or spooling) everything still queued, in bounded time."""
        self._closing = True
        self.write_timeout = min(self.write_timeout, CLOSING_WRITE_TIMEOUT)
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=2 * CLOSING_WRITE_TIMEOUT)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
            if not self._task.cancelled() and self._task.exception() is not None:
                log.error("ledger writer failed", exc_info=self._task.exception())
        await self.flush()
        self.spool.close()
        if self.journal is not None:
            self.journal.close()
