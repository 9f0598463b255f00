"""A gateway for the console's tests (two workers, so live traffic is summed over them), a headless
Chromium, and where screenshots go."""
from __future__ import annotations

import time

import pytest

from tests import support
from tests.console import browser as kit

ENV = {
    "ZOWY_SCRYPT_COST": "12",
    "ZOWY_TRUSTED_PROXIES": "127.0.0.1/32",  # tests name their client address with X-Forwarded-For
    "ZOWY_SIGNIN_IP_PER_MINUTE": "5",
    "ZOWY_RESERVE_IDLE": "30",  # a worker keeps an idle slice while the dashboard is read
}


def stop(gateway: support.Gateway, workers: int = 1, wait: float = 15.0) -> None:
    """Stop a gateway a moment after each of its workers said it is ready: a SIGTERM within a moment of
    a worker's start hangs the instance until it is killed, and the worker is left behind (the same
    issue tests/scale/cluster.py waits out)."""
    deadline = time.monotonic() + wait
    while gateway.process.log().count("Worker ready") < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    gateway.stop()


@pytest.fixture(scope="module")
def console_gateway(tmp_path_factory, models_path):
    gw = support.start_gateway(tmp_path_factory.mktemp("console"), models_path, workers=2, **ENV)
    yield gw
    stop(gw, workers=2)


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the console's browser tests need Playwright: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        browser = kit.launch(playwright)
        sync_api.expect.set_options(timeout=15_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> kit.Shots:
    return kit.Shots(tmp_path_factory.mktemp("screenshots"))
