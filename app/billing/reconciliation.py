"""Reconcile: finish what crashed processes of a data directory left, then hold every package
against the ledger and every reservation against its expiry."""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from ..core.config import Settings
from ..store import Store
from . import journal
from .spool import Spool

# A lease past its expiry is swept by any worker's upkeep within a minute; one that lingers longer
# means no worker sweeps (or a clock is wrong).
STALE_LEASE_GRACE = 300.0


async def reconcile(store: Store, settings: Settings) -> dict:
    """Finish what crashed processes of this data directory left (spooled entries, journal records
    of requests a dead worker held, billed by estimate), then check every package against the
    ledger and that no reservation outlived its expiry. ``ok`` is false on a mismatch, a journal
    record that could not be billed yet, or a stale reservation."""
    recovered = await Spool(settings.spool_dir, f"{os.getpid()}-reconcile").replay(store, settings.meter_batch)
    recovered += await journal.recover(settings.journal_dir, store, settings.spool_dir, settings.meter_batch)
    mismatches = await store.reconcile()
    records = journal.census(settings.journal_dir)
    stale = await store.expired_leases(time.time() - STALE_LEASE_GRACE)
    return {
        "ok": not mismatches and not records.unrecovered and not stale,
        "ledger_entries": await store.ledger_count(),
        "worker_lost": await store.ledger_count(outcome=journal.LOST_OUTCOME),
        "recovered": recovered,
        "journal": {"in_flight": records.in_flight, "unrecovered": records.unrecovered},
        "mismatches": [asdict(m) for m in mismatches],
        "expired_reservations": [asdict(l) for l in stale],
    }
