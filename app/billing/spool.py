"""The ledger spool: entries the store could not take yet, appended durably (fsync'd) to a file of
this process's own and replayed into the store by this or any later process."""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

import orjson

from ..store import Store
from ..store.contracts.ledger import LedgerEntry
from . import journal

log = logging.getLogger("zowy.ledger")

_SPOOL_SUFFIX = ".spool"


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
