"""The circuit breaker on a fake clock: only health failures count, a ratio over a minimum volume
opens it, the cool-down lets one probe through, and old outcomes leave the window."""
from __future__ import annotations

from app.upstream.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> Breaker:
    return Breaker(min_requests=4, failure_ratio=0.5, window=10.0, cooldown=5.0, clock=clock)


def test_answers_caused_by_a_request_never_open_it():
    b = breaker(Clock())
    for _ in range(50):
        b.record("t", "status_500")
        b.record("t", "status_400")
        b.record("t", "malformed")
        b.record("t", "error_event")
    assert b.state("t") == "closed" and b.allow("t")


def test_a_few_failures_in_a_row_do_not_open_it_below_the_minimum_volume():
    b = breaker(Clock())
    for _ in range(3):
        b.record("t", "connect")
    assert b.state("t") == "closed"
    b.record("t", "timeout")
    assert b.state("t") == "open" and not b.allow("t")


def test_opens_on_the_ratio_of_health_failures():
    b = breaker(Clock())
    for _ in range(6):
        b.record("t", None)
    for kind in ("status_503", "status_529", "status_429", "status_502", "connection"):
        b.record("t", kind)
    assert b.state("t") == "closed"  # 5 of 11
    b.record("t", "status_504")
    assert b.state("t") == "open"  # 6 of 12


def test_old_outcomes_leave_the_window():
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record("t", "connect")
    clock.now += 11
    b.record("t", "connect")  # the three before are out of the 10 s window
    assert b.state("t") == "closed"


def test_cool_down_then_one_probe_decides():
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.record("t", "connect")
    assert not b.allow("t")
    clock.now += 5
    assert b.state("t") == "half_open"
    assert b.allow("t") and not b.allow("t")  # one probe at a time
    b.record("t", "timeout")
    assert b.state("t") == "open"
    clock.now += 5
    assert b.allow("t")
    b.record("t", None)
    assert b.state("t") == "closed" and b.allow("t")
    b.abandon("t")
    assert b.allow("t")
