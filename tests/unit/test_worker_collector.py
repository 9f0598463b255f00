"""The worker's cycle collector after start-up (app/process/worker.py ``_settle_collector``): what
start-up made is frozen out of its scans, and the objects of the requests in flight, freed by their
counts when they end, do not set off a scan of the youngest generation."""
from __future__ import annotations

import gc

from app.process import worker


def test_start_up_objects_are_frozen_and_short_lived_ones_are_not_scanned():
    threshold = gc.get_threshold()
    scans: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            scans.append(info["generation"])

    kept = [{"made": "at start-up"} for _ in range(1000)]
    try:
        worker._settle_collector()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold()[0] == worker.YOUNG_OBJECTS
        gc.callbacks.append(seen)
        for _ in range(10):  # 32 requests in flight, each holding a few hundred containers until it ends
            in_flight = [[{"role": "user", "content": [{"type": "text"}]} for _ in range(40)] for _ in range(32)]
            del in_flight
        assert scans == []
        held = [[] for _ in range(worker.YOUNG_OBJECTS + 10)]
        assert scans and scans[0] == 0  # long-lived allocations are still collected
        del held
    finally:
        if seen in gc.callbacks:
            gc.callbacks.remove(seen)
        gc.unfreeze()
        gc.set_threshold(*threshold)
