"""The circuit breaker on a fake clock: only health failures count, a ratio over a minimum volume
opens it only when the failures are shared by the callers (or the target could not be reached at
all), the cool-down lets one probe through, and old outcomes leave the window."""
from __future__ import annotations

from app.upstream.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, min_accounts: int = 1) -> Breaker:
    return Breaker(min_requests=4, failure_ratio=0.5, window=10.0, cooldown=5.0, min_accounts=min_accounts, clock=clock)


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


# Two tenants: the failures of one caller alone never open the breaker for the others.

def test_one_accounts_timeouts_alone_do_not_open_it():
    b = breaker(Clock(), min_accounts=2)
    for _ in range(100):
        b.record("t", "timeout", "acct_slow")
    assert b.state("t") == "closed" and b.allow("t")
    for _ in range(20):
        b.record("t", None, "acct_other")
        b.record("t", "timeout", "acct_slow")
    assert b.state("t") == "closed"


def test_one_account_with_every_health_failure_but_connect_does_not_open_it():
    b = breaker(Clock(), min_accounts=2)
    for kind in ("timeout", "connection", "status_429", "status_502", "status_503", "status_504", "status_529") * 10:
        b.record("t", kind, "acct_a")
    assert b.state("t") == "closed"


def test_a_victims_occasional_failure_does_not_tip_it():
    b = breaker(Clock(), min_accounts=2)
    for _ in range(50):
        b.record("t", "timeout", "acct_slow")
    for _ in range(3):
        b.record("t", None, "acct_victim")
    b.record("t", "timeout", "acct_victim")  # its own attempts mostly succeed
    b.record("t", None, "acct_victim")
    b.record("t", "timeout", "acct_victim")
    assert b.state("t") == "closed"


def test_failures_every_caller_shares_open_it():
    b = breaker(Clock(), min_accounts=2)
    for _ in range(2):
        b.record("t", "status_503", "acct_a")
    assert b.state("t") == "closed"
    b.record("t", "status_503", "acct_b")
    assert b.state("t") == "closed"  # 3 attempts, below the minimum volume
    b.record("t", "status_503", "acct_b")
    assert b.state("t") == "open"


def test_shared_failures_need_the_ratio_of_the_callers():
    b = breaker(Clock(), min_accounts=2)
    for account in ("a", "b", "c", "d", "e"):
        b.record("t", None, account)
    for _ in range(10):
        b.record("t", "timeout", "x")
        b.record("t", "timeout", "y")
    assert b.state("t") == "closed"  # 2 of 7 callers failing
    for account in ("a", "b"):
        b.record("t", "timeout", account)
        b.record("t", "timeout", account)
    assert b.state("t") == "open"  # 4 of 7


def test_an_unreachable_target_opens_it_whoever_calls():
    """A connect failure happens before any request reaches the target: no caller can cause it."""
    b = breaker(Clock(), min_accounts=2)
    for _ in range(4):
        b.record("t", "connect", "acct_only")
    assert b.state("t") == "open"


def test_callers_leave_the_window_with_their_outcomes():
    clock = Clock()
    b = breaker(clock, min_accounts=2)
    for _ in range(3):
        b.record("t", "timeout", "acct_a")
    clock.now += 11
    b.record("t", "timeout", "acct_b")
    b.record("t", "timeout", "acct_b")
    b.record("t", "timeout", "acct_b")
    b.record("t", "timeout", "acct_b")
    assert b.state("t") == "closed"  # acct_a's failures left the window: one failing caller
    assert b.snapshot(["t"])["t"] == {"state": "closed", "attempts": 4, "failures": 4, "callers": 1, "failing_callers": 1}
    b.record("t", "timeout", "acct_c")
    assert b.state("t") == "open"
