"""Request ids: unique, 24 hex digits, and ordered by the millisecond they were made in."""
from __future__ import annotations

import re

from app.core import ids


def test_request_ids_are_24_hex_digits_and_unique():
    made = [ids.new_request_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in made)
    assert len(set(made)) == len(made)


def test_request_ids_sort_by_the_millisecond_they_were_made_in(monkeypatch):
    times = [1_764_720_000.0, 1_764_720_000.002, 1_764_720_000.004, 1_764_720_007.5]
    clock = iter(times)
    monkeypatch.setattr(ids.time, "time", lambda: next(clock))
    made = [ids.new_request_id() for _ in range(4)]
    assert made == sorted(made)
    assert [int(i[:10], 16) for i in made] == [int(t * 1000) & 0xFFFFFFFFFF for t in times]
