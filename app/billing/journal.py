"""The started-record journal: one line when a request's body first goes to an upstream, one line
when its ledger entry is written or spooled. What a dead process left unsettled is billed by estimate.

A process writes its own files under ``$ZOWY_DATA_DIR/journal/`` and holds an exclusive flock on
each while it lives, so a file that can be locked belongs to a dead process. Lines are appended with
one ``os.write`` and no fsync: the page cache outlives the process (kill -9, OOM, a crash), not the
machine; a machine crash is what the ledger spool's fsync covers.

The lines stay on the event loop: a started line is one ~0.75 µs append that must precede the
upstream call; a writer thread would take ~0.4 µs of it off the loop and no longer guarantee that
order (bench/micro/journal.py). Settled lines are one per ledger batch.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import orjson

from ..store import Store
from ..store.contracts.ledger import LedgerEntry
from ..wire.usage import estimate_tokens

log = logging.getLogger("zowy.ledger")

SUFFIX = ".journal"
SEGMENT_BYTES = 4 * 1024 * 1024
# A segment with nothing unsettled is emptied once this big (a truncate costs ~10x a line).
EMPTY_AT = 64 * 1024
LOST_OUTCOME = "worker_lost"
# What a caller whose worker died saw: its connection dropped (a proxy in front answers 502).
LOST_STATUS = 502

# started:  b"S " + JSON [request_id, account_id, key_id, model, target, stream, prompt_bytes, user, at] + b"\n"
# settled:  b"D " + request ids separated by spaces + b"\n"
_STARTED = b"S "
_SETTLED = b"D "


class _Segment:
    __slots__ = ("path", "fd", "size", "pending")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.pending = 0


class Journal:
    """This process's journal: segments of at most ``segment_bytes``, each deleted once every
    request started in it is settled."""

    def __init__(self, directory: Path, token: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.token = token
        self.segment_bytes = segment_bytes
        self._current: _Segment | None = None
        self._segments: list[_Segment] = []
        self._where: dict[str, _Segment] = {}
        self._seq = 0
        self._broken = False

    @property
    def pending(self) -> int:
        """Requests started and not yet settled."""
        return len(self._where)

    def started(self, request_id: str, account_id: str | None, key_id: str | None, model: str, target: str,
                stream: bool, prompt_bytes: int, user: str | None, api: str = "chat") -> None:
        """Record that the request's body is going to an upstream: from here on it is billable."""
        segment = self._current or self._open()
        if segment is None:
            return
        line = _STARTED + orjson.dumps(
            (request_id, account_id, key_id, model, target, stream, prompt_bytes, user, time.time(), api)
        ) + b"\n"
        try:
            os.write(segment.fd, line)
        except OSError as exc:
            self._failed(exc)
            return
        segment.size += len(line)
        segment.pending += 1
        self._where[request_id] = segment
        if segment.size >= self.segment_bytes:
            self._current = None

    def settle(self, request_ids: Iterable[str]) -> None:
        """Record that these requests' ledger entries are in the store or the spool."""
        by_segment: dict[_Segment, list[str]] = {}
        for request_id in request_ids:
            segment = self._where.pop(request_id, None)
            if segment is not None:
                by_segment.setdefault(segment, []).append(request_id)
        for segment, ids in by_segment.items():
            segment.pending -= len(ids)
            try:
                if segment.pending == 0 and segment is not self._current:
                    self._drop(segment)
                elif segment.pending == 0 and segment.size >= EMPTY_AT:
                    os.ftruncate(segment.fd, 0)  # nothing in it is unsettled
                    segment.size = 0
                else:
                    line = _SETTLED + " ".join(ids).encode() + b"\n"
                    os.write(segment.fd, line)
                    segment.size += len(line)
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        """Release the files; one still holding unsettled requests stays for recovery."""
        for segment in list(self._segments):
            if segment.pending == 0:
                self._drop(segment)
            else:
                os.close(segment.fd)
                log.error("%d started request(s) left unsettled in %s", segment.pending, segment.path)
        self._segments = []
        self._current = None
        self._where.clear()

    def _open(self) -> _Segment | None:
        if self._broken:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            path = self.directory / f"{self.token}.{self._seq}{SUFFIX}"
            # Locked under a name recovery ignores, then renamed: never visible unlocked.
            temp = path.with_suffix(".tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(temp, path)
        except OSError as exc:
            self._failed(exc)
            return None
        segment = self._current = _Segment(path, fd)
        self._segments.append(segment)
        return segment

    def _drop(self, segment: _Segment) -> None:
        try:
            segment.path.unlink(missing_ok=True)
        finally:
            os.close(segment.fd)
        self._segments.remove(segment)

    def _failed(self, exc: OSError) -> None:
        if not self._broken:
            log.error("journal unavailable (%s): a worker crash now would lose its in-flight requests", exc)
        self._broken = True
        self._current = None


@dataclass(frozen=True, slots=True)
class Census:
    """Unsettled started records under a journal directory."""

    in_flight: int  # in files of live processes: requests being served now
    unrecovered: int  # in files of dead processes: to be billed by the next recovery


def census(directory: Path) -> Census:
    in_flight = unrecovered = 0
    for path in _files(directory):
        fd = try_lock(path)
        try:
            started = _unsettled(path)
        finally:
            if fd is not None:
                os.close(fd)
        if fd is None:
            in_flight += len(started)
        else:
            unrecovered += len(started)
    return Census(in_flight, unrecovered)


async def recover(directory: Path, store: Store, spool_dir: Path, batch: int = 512) -> int:
    """Bill every started-and-unsettled request of dead processes by its estimate, as outcome
    ``worker_lost``; how many entries were new. Idempotent: the request id is the ledger key.

    A dead process's spool is replayed first by whoever can lock it; while one is left the
    process's journal waits, so a real entry always wins over the estimate.
    """
    added = 0
    for path in _files(directory):
        token = path.name.split(".", 1)[0]
        if any(Path(spool_dir).glob(f"{token}.spool")):
            continue
        fd = try_lock(path)
        if fd is None:
            continue
        try:
            entries = [_lost_entry(record) for record in _unsettled(path).values()]
            for start in range(0, len(entries), batch):
                added += await store.record(entries[start:start + batch])
            path.unlink()
        finally:
            os.close(fd)
        if entries:
            log.warning("billed %d request(s) of a dead worker by estimate (%s)", len(entries), path.name)
    return added


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(Path(directory).glob(f"*{SUFFIX}"))
    except OSError:
        return []


def try_lock(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, or None: a file another live process
    holds (journal segments and ledger spools are locked by their process while it lives)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unsettled(path: Path) -> dict[str, list]:
    started: dict[str, list] = {}
    settled: set[str] = set()
    try:
        data = path.read_bytes()
    except OSError:
        return started
    for line in data.split(b"\n")[:-1]:  # a torn last line was never acknowledged
        if line.startswith(_STARTED):
            try:
                record = orjson.loads(line[2:])
            except orjson.JSONDecodeError:
                log.error("skipping an unreadable journal line in %s", path)
                continue
            started[record[0]] = record
        elif line.startswith(_SETTLED):
            settled.update(line[2:].decode().split())
    for request_id in settled:
        started.pop(request_id, None)
    return started


def _lost_entry(record: list) -> LedgerEntry:
    # Records written before the API was kept have nine fields: they came through Chat Completions.
    request_id, account_id, key_id, model, target, stream, prompt_bytes, user, at = record[:9]
    api = record[9] if len(record) > 9 else "chat"
    prompt = estimate_tokens(prompt_bytes)
    return LedgerEntry(
        request_id=request_id, account_id=account_id or "", key_id=key_id or "", model=model, target=target,
        prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt, estimated=True, stream=stream,
        outcome=LOST_OUTCOME, status=LOST_STATUS, latency_ms=0.0, user=user, created_at=at, api=api,
    )
