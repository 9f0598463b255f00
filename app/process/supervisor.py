"""The main process of ``python -m app serve``: it binds the listening socket, runs the workers,
replaces one that dies, and on SIGTERM or SIGINT stops them all within the drain timeout plus a margin.

Workers are ``python -m app serve --worker-of <pid>`` processes, each in a process group of its own
(a terminal's Ctrl-C reaches the supervisor only), handed the socket, a status pipe and the settings.
A second signal does not cut the drain short: the drain is bounded anyway, and a supervisor ended by
SIGKILL leaves no worker behind (each notices and stops by itself).
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ..core import instance
from ..core.config import Settings
from ..core.metrics import Metrics
from . import stop_signals
from .worker import READY, STOP_MARGIN, WorkerSpec

log = logging.getLogger("zowy")

# Delay before restarting a worker that died young, by how many times in a row it did.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
STEADY = 30.0  # a worker that lived this long resets its slot's delay
STARTUP_ATTEMPTS = 3  # per slot, before any worker was ready: then the instance gives up
TICK = 0.5


def bind(settings: Settings) -> socket.socket:
    from ..http.server import bind

    return bind(settings.host, settings.port)


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen | None = None
    status: int | None = None
    ready: bool = False
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock: socket.socket | None = sock
        port = sock.getsockname()[1]
        self.state_path = instance.state_path(settings.data_dir, f"{socket.gethostname()}-{port}").resolve()
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.stopping = False
        self.kill_at = 0.0
        self.exit_code = 0
        self.ever_ready = False
        self._signals: list[int] = []
        self._published: tuple[int, int] | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()

    def run(self) -> int:
        for fd in (self._wakeup_r, self._wakeup_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        signal.set_wakeup_fd(self._wakeup_w)
        for sig in stop_signals.STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop up
        self._signals += stop_signals.take()  # a stop asked for while the command started
        try:
            if not self._signals:
                for slot in self.slots:
                    self._start(slot)
            while True:
                self._wait()
                for signum in self._take_signals():
                    self._begin_stop(signal.Signals(signum).name)
                self._reap()
                if self.stopping:
                    if not any(s.proc for s in self.slots):
                        break
                    if time.monotonic() >= self.kill_at:
                        self._kill_stragglers()
                else:
                    self._restart_due()
                self._publish()
        finally:
            stop_signals.ignore()
            signal.set_wakeup_fd(-1)
            self._close_socket()
            self.state_path.unlink(missing_ok=True)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        log.warning("stopped")
        return self.exit_code

    # signals and stopping

    def _on_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _begin_stop(self, reason: str) -> None:
        if self.stopping:
            log.warning("%s while stopping: the workers go on draining (at most %.0f s more)", reason,
                        max(0.0, self.kill_at - time.monotonic()))
            return
        self.stopping = True
        self.kill_at = time.monotonic() + self.settings.drain_timeout + STOP_MARGIN + 1.0
        log.warning("%s: stopping %d worker(s), drain timeout %.0f s", reason,
                    sum(1 for s in self.slots if s.proc), self.settings.drain_timeout)
        # Each worker closes its copy as it stops accepting; when the last copy closes, new
        # connections are refused (a proxy retries them elsewhere).
        self._close_socket()
        for slot in self.slots:
            if slot.proc is not None:
                _signal(slot.proc, signal.SIGTERM)

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                log.error("worker %s did not stop in time: killing it", slot.proc.pid)
                _signal(slot.proc, signal.SIGKILL)
                slot.proc.wait()
                self.exit_code = 1
        self._reap()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # workers

    def _start(self, slot: _Slot) -> None:
        assert self.sock is not None
        status_r, status_w = os.pipe()
        spec = WorkerSpec(self.settings, self.sock.fileno(), status_w, os.getpid(), self.state_path)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--worker-of", str(os.getpid())],
                stdin=subprocess.PIPE, pass_fds=(self.sock.fileno(), status_w), process_group=0,
            )
        except OSError:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        try:
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
        except OSError:
            pass  # it died at once; reaped below
        slot.proc, slot.status, slot.ready, slot.started = proc, status_r, False, time.monotonic()

    def _wait(self) -> None:
        fds = [self._wakeup_r] + [s.status for s in self.slots if s.status is not None]
        timeout = 0.0 if self._signals else TICK
        if not self.stopping:
            due = [s.restart_at for s in self.slots if s.proc is None]
            if due:
                timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wakeup_r in readable:
            try:
                while os.read(self._wakeup_r, 512):
                    pass
            except BlockingIOError:
                pass
        for slot in self.slots:
            if slot.status is not None and slot.status in readable:
                data = os.read(slot.status, 64)
                if not data:
                    os.close(slot.status)
                    slot.status = None
                elif READY in data:
                    slot.ready = self.ever_ready = True

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            if slot.status is not None:
                os.close(slot.status)
                slot.status = None
            Metrics.worker_stopped(proc.pid)
            was_ready, slot.proc, slot.ready = slot.ready, None, False
            if self.stopping:
                continue
            lived = now - slot.started
            slot.failures = 0 if lived >= STEADY else slot.failures + 1
            if not was_ready and not self.ever_ready and slot.failures >= STARTUP_ATTEMPTS:
                log.error("worker %d exited with %s before it was ready, %d times: giving up",
                          slot.index, proc.returncode, slot.failures)
                self.exit_code = 1
                self._begin_stop("startup failure")
                continue
            delay = RESTART_DELAYS[min(slot.failures, len(RESTART_DELAYS)) - 1] if slot.failures else 0.0
            slot.restart_at = now + delay
            log.error("worker %d (pid %s) exited with %s after %.1f s: replacing it in %.1f s",
                      slot.index, proc.pid, proc.returncode, lived, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and now >= slot.restart_at:
                self._start(slot)

    def _publish(self) -> None:
        state = (len(self.slots), sum(1 for s in self.slots if s.proc is not None and s.ready))
        if state != self._published and not self.stopping:
            self._published = state
            try:
                instance.publish(self.state_path, state[0], state[1], os.getpid())
            except OSError as exc:
                log.error("cannot publish the workers' state to %s: %s", self.state_path, exc)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
