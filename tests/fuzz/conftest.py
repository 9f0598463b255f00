"""The fuzzing target and budget.

A dedicated 2-worker gateway (so a dead worker or a traceback in its log is this suite's alone) with
small input limits (so inputs near every limit are cheap), a key with huge limits on an account with
a huge package, and a victim account for the admin API fuzzing.

Size: ``ZOWY_FUZZ_CASES`` (default 1200, the CI pass: derandomized, no example database); ``make fuzz``
sets 5000 (randomized, examples kept under ``.hypothesis/``).
"""
from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests import support
from tests.fuzz.harness import TALLIES, Harness

CI_CASES = 1200
CASES = int(os.environ.get("ZOWY_FUZZ_CASES") or CI_CASES)
LONG = CASES > CI_CASES

LIMITS = {
    "ZOWY_MAX_BODY_BYTES": "262144",
    "ZOWY_MAX_TEXT_CHARS": "100000",
    "ZOWY_MAX_MESSAGES": "64",
    "ZOWY_MAX_TOOLS": "16",
    "ZOWY_MAX_IMAGE_URL_BYTES": "8192",
    "ZOWY_MAX_HEADER_BYTES": "8192",
    "ZOWY_BODY_TIMEOUT": "2",
}


def budget(share: float) -> int:
    """This test's number of generated cases: its share of the total."""
    return max(10, round(CASES * share))


def fuzz_settings(share: float) -> settings:
    return settings(
        max_examples=budget(share),
        deadline=None,
        derandomize=not LONG,
        database=DirectoryBasedExampleDatabase(".hypothesis/fuzz") if LONG else None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=LONG,
    )


@pytest.fixture(scope="session")
def fuzz_gateway(tmp_path_factory, models_path):
    gateway = support.start_gateway(tmp_path_factory.mktemp("fuzz-gateway"), models_path, workers=2, **LIMITS)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def fuzz(fuzz_gateway, upstreams):
    customer = support.new_customer(fuzz_gateway, tokens=10**12, per_minute=10**9, per_hour=10**9)
    victim = support.new_customer(fuzz_gateway, tokens=1000, per_minute=10, per_hour=10)
    hosts = tuple(f"127.0.0.1:{p.port}" for p in upstreams.values()) + ("googleapis", "api.openai.com")
    harness = Harness(fuzz_gateway, customer.key, customer.account_id, hosts,
                      {"account": victim.account_id, "key_id": victim.key_id})
    harness.alive()
    yield harness
    harness.alive()
    harness.close()


@contextlib.contextmanager
def batch(harness: Harness):
    """Around one fuzz test: the ledger, liveness and log checks on everything it sent."""
    start = len(harness.sent)
    before = harness.ledger_snapshot()
    yield
    harness.alive()
    harness.check_ledger(before, harness.sent[start:])


def pytest_terminal_summary(terminalreporter):
    if not TALLIES:
        return
    write = terminalreporter.write_line
    total = sum(t.cases for t in TALLIES.values())
    seconds = sum(t.seconds for t in TALLIES.values())
    write("")
    write(f"fuzz: {total} requests ({'long run' if LONG else 'CI pass'}, budget {CASES}), {seconds:.1f}s on the wire")
    for kind, tally in sorted(TALLIES.items()):
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(tally.statuses.items()))
        known = f"  known bugs hit: {dict(tally.known)}" if tally.known else ""
        slowest = f" (slowest {tally.slowest:.2f}s)" if tally.slowest else ""
        write(f"  {kind:<16} {tally.cases:>6} cases {tally.seconds:6.1f}s{slowest}  {statuses}{known}")
