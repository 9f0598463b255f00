"""The resources one worker process owns: store connection, upstream client, caches, ledger writer
and journal, low-balance alerts, and the chat requests in flight.

Built in ``before_server_start`` (after the fork) and closed when the worker stops.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from ..alerts.rules import Alerts
from ..billing.journal import Journal
from ..billing.ledger_writer import LedgerWriter
from ..core.config import Settings
from ..core.errors import StoreUnavailable
from ..core.logs import AccessLog
from ..core.metrics import Metrics
from ..store import Store, open_store
from ..upstream.client import UpstreamClient
from ..upstream.mock import MockTransport
from ..upstream.transport_base import Transport
from .admission import Admission

log = logging.getLogger("zowy")

FLUSH_INTERVAL = 0.2


class InFlight(Protocol):
    """A request in flight, as the worker's drain sees it (gateway/exchange.py's Exchange)."""

    def cut(self) -> None:
        """End it now: the drain deadline passed."""


@dataclass
class Services:
    settings: Settings
    store: Store
    upstream: UpstreamClient
    admission: Admission
    ledger_writer: LedgerWriter
    journal: Journal
    metrics: Metrics
    access_log: AccessLog
    alerts: Alerts
    draining: bool = False
    exchanges: set[InFlight] = field(default_factory=set)
    _ticker: asyncio.Task | None = None
    _upkeep: asyncio.Task | None = None
    guard_bytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # What the guard prompt adds to every request's reservation; the setting never changes.
        self.guard_bytes = len(self.settings.persona_prompt.encode())

    @classmethod
    def build(cls, settings: Settings, transport: Transport | None = None) -> "Services":
        """A worker's services; ``transport`` replaces the HTTP one (the demo model, unit tests)."""
        if transport is None and settings.demo:
            from ..upstream import demo

            transport = MockTransport(demo.answer)
        store = open_store(settings)
        metrics = Metrics()
        # Names this process's journal and spool files: its pid, and randomness for pid reuse.
        journal = Journal(settings.journal_dir, f"{os.getpid()}-{secrets.token_hex(4)}")
        ledger_writer = LedgerWriter(
            store, settings.spool_dir, settings.meter_batch, settings.meter_interval, metrics=metrics, journal=journal
        )
        alerts = Alerts(settings, store)
        ledger_writer.on_written = alerts.written
        return cls(
            settings=settings,
            store=store,
            upstream=UpstreamClient(settings, transport=transport, metrics=metrics),
            admission=Admission(settings, store),
            ledger_writer=ledger_writer,
            journal=journal,
            metrics=metrics,
            access_log=AccessLog(settings.log_format, enabled=settings.access_log),
            alerts=alerts,
        )

    @property
    def inflight(self) -> int:
        return len(self.exchanges)

    async def start(self) -> None:
        """Open the upstream pool and the store, then replay spooled ledger entries."""
        await self.upstream.start()
        try:
            await self.store.init()
        except StoreUnavailable:
            log.error("store unavailable at start: serving 503s until it is back")
        await self.ledger_writer.start()
        await self.alerts.start()
        self._ticker = asyncio.create_task(self._tick(), name="worker-tick")
        self._upkeep = asyncio.create_task(self._reservations(), name="reservations")

    async def _tick(self) -> None:
        """Hand what requests accumulated (log lines, metric sums) to their outputs, in batches."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.access_log.flush()
            self.metrics.flush()

    async def _reservations(self) -> None:
        """Give back idle reserved tokens and renew the leases in use, once a second."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.admission.reservations.upkeep()
            except Exception:
                log.exception("reservation upkeep failed")

    async def close(self) -> None:
        for task in (self._ticker, self._upkeep):
            if task is not None:
                task.cancel()
        self.access_log.close()
        self.metrics.flush()
        await self.ledger_writer.close()
        await self.admission.reservations.close()
        await self.alerts.close()
        await self.upstream.close()
        await self.store.close()
