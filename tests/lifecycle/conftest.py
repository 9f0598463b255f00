"""Gateway instances a test starts, stopped (then SIGKILLed with every process of their session)
when the test ends, whatever it did to them. ``ZOWY_LIFECYCLE_ROUNDS`` (``make soak``) multiplies
how many times the lifecycle tests try."""
from __future__ import annotations

import os
import signal

import pytest

from tests import support

ROUNDS = max(1, int(os.environ.get("ZOWY_LIFECYCLE_ROUNDS", "1")))


@pytest.fixture
def instances():
    started: list[support.Gateway] = []

    def start(*args, **kwargs) -> support.Gateway:
        gateway = support.start_gateway(*args, **kwargs)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
        for pid, _ in support.session_processes(gateway.process.popen.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
