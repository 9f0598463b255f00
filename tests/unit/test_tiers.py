"""The suite's two speeds keep to their word: a fast-tier test that starts a process fails (every
test here runs under that check), but for making a certificate; a test marked ``processes`` may."""
from __future__ import annotations

import asyncio
import asyncio.subprocess
import multiprocessing
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST_TIER, StartedAProcess, in_fast_tier


def test_this_test_is_in_the_fast_tier(request):
    assert "tests/unit" in FAST_TIER and in_fast_tier(request.node)


def test_a_fast_test_cannot_start_a_process():
    with pytest.raises(StartedAProcess, match="the fast tier runs in process"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(StartedAProcess):
        os.fork()
    with pytest.raises(StartedAProcess):
        os.system("true")
    with pytest.raises(StartedAProcess):
        os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)
    with pytest.raises(StartedAProcess):
        os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_nor_through_asyncio(loop):
    async def start():
        with pytest.raises(StartedAProcess):
            await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        with pytest.raises(StartedAProcess):
            await asyncio.subprocess.create_subprocess_shell("true")

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(start())
    else:
        asyncio.run(start())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_nor_through_multiprocessing(method):
    process = multiprocessing.get_context(method).Process(target=print)
    with pytest.raises(StartedAProcess):
        process.start()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_fast_test_may_make_a_certificate():
    done = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(("OpenSSL", "LibreSSL"))


@pytest.mark.processes
def test_a_test_marked_processes_may_start_one(request):
    assert not in_fast_tier(request.node)
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\n"
