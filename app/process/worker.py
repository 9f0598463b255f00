"""One worker process: serve the app on the listening socket its supervisor handed it until told to
stop, then stop accepting, let requests in flight finish until the drain deadline, cut the rest, and
write the ledger.

A worker stops on SIGTERM or SIGINT, and when its supervisor is gone (the kernel's parent-death
signal on Linux, and a parent check every second). Whatever happens, it exits within the drain
timeout plus ``STOP_MARGIN`` of being told to stop.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import logs
from ..core.config import Settings
from . import stop_signals

log = logging.getLogger("zowy")

# Beyond the drain timeout: cut requests send their error and end, connections close, the ledger
# queue is written (or spooled), the store and upstream pool close.
STOP_MARGIN = 5.0
CUT_GRACE = 1.0
PARENT_CHECK = 1.0
READY = b"R"
_PR_SET_PDEATHSIG = 1
YOUNG_OBJECTS = 20_000  # tracked objects allocated between scans of the youngest generation


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker on its stdin."""

    settings: Settings
    listen_fd: int
    status_fd: int
    parent: int
    state_path: Path


def main() -> int:
    """``python -m app serve --worker-of <pid>``: read the spec from stdin and serve."""
    _die_with_parent()
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    if os.getppid() != spec.parent:
        return 0  # the supervisor died before the parent-death signal was armed
    logs.configure(spec.settings.log_level, spec.settings.log_format)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(Worker(spec, loop).run())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        for sig in stop_signals.STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        stop_signals.ignore()
        loop.close()


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass


class Worker:
    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.loop = loop
        self.stop = asyncio.Event()
        self._deadline: float | None = None  # monotonic; read by the watch thread
        self._orphaned = False

    def request_stop(self, reason: str) -> None:
        """On the loop: begin the stop, once; later requests do not shorten the drain."""
        if self.stop.is_set():
            log.warning("%s while stopping: the drain goes on until its deadline", reason)
            return
        log.warning("worker stopping (%s)", reason)
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.drain_timeout + STOP_MARGIN
        self.stop.set()

    async def run(self) -> int:
        from ..http.server import Server

        for sig in stop_signals.STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        for sig in stop_signals.take():  # held since the process started
            self.request_stop(signal.Signals(sig).name)
        threading.Thread(target=self._watch, name="worker-watch", daemon=True).start()
        server = await Server.open(self.settings, self.spec.listen_fd, self.spec.state_path)
        try:
            await server.prepare()
            _settle_collector()
            if not self.stop.is_set():
                await server.serve()
                self._tell(READY)
                log.info("Worker ready [%s]", os.getpid())
                await self.stop.wait()
            server.stop_accepting()  # first, before the drain
            await server.stopping()
            if server.services is not None:
                await drain(server.services, server.connections, self.settings.drain_timeout)
        finally:
            await server.close()
        await _end_tasks()
        return 0

    def _tell(self, message: bytes) -> None:
        try:
            os.write(self.spec.status_fd, message)
        except OSError:
            pass

    def _watch(self) -> None:
        """Off the loop: notice a supervisor gone; end the process if a stop overruns its deadline
        (a loop that no longer turns cannot stop it)."""
        while True:
            time.sleep(PARENT_CHECK)
            if not self._orphaned and os.getppid() != self.spec.parent:
                self._orphaned = True
                if self._deadline is None:
                    self._deadline = time.monotonic() + self.settings.drain_timeout + STOP_MARGIN
                try:
                    self.loop.call_soon_threadsafe(self.request_stop, "supervisor gone")
                except RuntimeError:
                    return  # the loop is closed: the process is exiting
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                log.error("worker did not stop within the drain timeout plus %.0f s: exiting now", STOP_MARGIN)
                logging.shutdown()
                os._exit(1)


def _settle_collector() -> None:
    """What start-up made stays for the worker's life: out of the cycle collector's scans
    (``gc.freeze``); and a young generation large enough that a request's objects, freed by their
    counts, are mostly gone before it is scanned."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, 20, 10)


async def drain(services, connections: set, timeout: float) -> None:
    """Let requests and streams in flight finish until the deadline; then cut what is left (a
    stream ends with an error event, anything else gets a 503) and close every connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if services.inflight:
        log.warning("draining: %d request(s) in flight", services.inflight)
    while _busy(services, connections) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if services.exchanges:
        log.warning("drain deadline: cutting %d request(s)", services.inflight)
        for exchange in list(services.exchanges):
            exchange.cut()
        end = loop.time() + CUT_GRACE
        while _busy(services, connections) and loop.time() < end:
            await asyncio.sleep(0.05)
    for connection in list(connections):
        connection.abort()
    end = loop.time() + CUT_GRACE
    while services.exchanges and loop.time() < end:
        await asyncio.sleep(0.05)
    if services.exchanges:
        log.error("%d request(s) did not end after being cut", services.inflight)


def _busy(services, connections: set) -> bool:
    """Requests in flight, or connections that are not idle (idle ones are closed here)."""
    busy = bool(services.exchanges)
    for connection in list(connections):
        if not connection.close_if_idle():
            busy = True
    return busy


async def _end_tasks(timeout: float = 1.0) -> None:
    """Cancel and await what is still running, so no task is destroyed pending."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            log.error("%d task(s) did not end when cancelled: %s", len(pending), sorted(t.get_name() for t in pending))
