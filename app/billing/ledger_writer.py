"""The per-worker ledger writer: requests hand it entries, it writes them in batches off the
response path, and spools them to a local fsync'd file whenever the store cannot take them.

Nothing is dropped: a batch is either in the store (idempotently, keyed by request id) or in a
spool file that this or any later process replays; once it is, its journal records are settled.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Callable

from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..store import Store
from ..store.contracts.ledger import LedgerEntry
from . import journal
from .journal import Journal
from .spool import Spool

log = logging.getLogger("zowy.ledger")

UPKEEP_INTERVAL = 60.0
# At shutdown a batch the store does not take within this many seconds is spooled instead.
CLOSING_WRITE_TIMEOUT = 2.0


class LedgerWriter:
    """Queue, batch, write; spool on failure; replay when the store is back."""

    def __init__(
        self, store: Store, spool_dir: Path, batch: int = 512, interval: float = 0.2,
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
        """Write everything queued when called; on failure put it in the spool. Replays the spool
        when possible. What requests hand over meanwhile waits for the next flush: written as it
        came, a steady trickle would make one store write every few requests."""
        queued, self._queue = self._queue, []
        for start in range(0, len(queued), self.batch):
            batch = queued[start:start + self.batch]
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
                self._queue[:0] = queued[start + self.batch:]  # the rest goes first in the next flush
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
