"""How many reads and writes processes make over a phase, counted by ``perf stat`` on the kernel's
system-call tracepoints (counted, not sampled), and how often their threads gave up the CPU to
wait or were preempted (``/proc``); where perf cannot count, ``available()`` says so."""
from __future__ import annotations

import errno
import glob
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

EVENTS = {
    "reads": "syscalls:sys_enter_read",
    "writes": "syscalls:sys_enter_write",
}
# /proc's per-thread counters: switches a thread made to wait, and those the scheduler made for it.
SWITCHES = {"waits": "voluntary_ctxt_switches", "preempted": "nonvoluntary_ctxt_switches"}
NAMES = (*EVENTS, *SWITCHES)


def available() -> bool:
    if shutil.which("perf") is None:
        return False
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS.values()), "true"],
                         capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and set(parse(out.stderr)) == set(EVENTS)


def parse(output: str) -> dict[str, int]:
    """Counts by name from ``perf stat -x ,``'s lines (count, unit, event, ...); a count perf could
    not read ("<not supported>", "<not counted>") is left out."""
    names = {event: name for name, event in EVENTS.items()}
    counts = {}
    for line in output.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in names and fields[0].strip().isdigit():
            counts[names[fields[2]]] = int(fields[0])
    return counts


def switches(pids: list[int]) -> dict[str, dict[str, int]]:
    """Each live thread's context switches, by ``pid/tid``: {waits, preempted}."""
    out = {}
    for path in (p for pid in pids for p in glob.glob(f"/proc/{pid}/task/*/status")):
        try:
            with open(path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        out[path.split("/")[2] + "/" + path.split("/")[4]] = {
            name: int(fields[key]) for name, key in SWITCHES.items() if key in fields}
    return out


class Counting:
    """``with Counting(pids) as c:`` counts the processes' (all their threads') reads, writes and
    context switches over the block; ``c.counts`` holds them after it.

    perf attaches with its counters off and turns them on and off when told through its control
    FIFO, answering each with an ack: the count covers the block exactly, however long perf takes
    to attach."""

    TIMEOUT = 30.0

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.counts: dict[str, int] = {}
        self._perf: subprocess.Popen | None = None
        self._switches: dict[str, dict[str, int]] = {}
        self._dir: tempfile.TemporaryDirectory | None = None
        self._control = self._ack = -1

    def __enter__(self) -> Counting:
        self._dir = tempfile.TemporaryDirectory(prefix="perf-control-")
        control, ack = (os.path.join(self._dir.name, name) for name in ("control", "ack"))
        os.mkfifo(control)
        os.mkfifo(ack)
        self._perf = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(EVENTS.values()), "-D", "-1",
             "--control", f"fifo:{control},{ack}", "-p", ",".join(map(str, self.pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + self.TIMEOUT
            while self._control < 0:
                try:
                    self._control = os.open(control, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO or self._perf.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("perf stat did not start") from None
                    time.sleep(0.01)
            self._ack = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
            self._switches = switches(self.pids)
            self._tell(b"enable")
        except BaseException as exc:
            said = self._stop()[-500:]
            if isinstance(exc, RuntimeError):
                raise RuntimeError(f"{exc}: {said}") from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._tell(b"disable")
            after = switches(self.pids)
        finally:
            err = self._stop()
        self.counts = parse(err)
        for name in SWITCHES:
            self.counts[name] = sum(now[name] - self._switches[thread][name] for thread, now in after.items()
                                    if thread in self._switches and name in now)

    def _tell(self, command: bytes) -> None:
        os.write(self._control, command + b"\n")
        answer = b""
        deadline = time.monotonic() + self.TIMEOUT
        while b"ack\n" not in answer:  # perf writes "ack\n\0"
            ready, _, _ = select.select([self._ack], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"perf stat did not acknowledge {command.decode()!r}")
            answer += os.read(self._ack, 64)

    def _stop(self) -> str:
        """Stop perf (it prints its counts as it ends) and clean up; perf's stderr."""
        assert self._perf is not None and self._dir is not None
        if self._perf.poll() is None:
            self._perf.send_signal(signal.SIGINT)
        try:
            _, err = self._perf.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._perf.kill()
            _, err = self._perf.communicate()
        for fd in (self._control, self._ack):
            if fd >= 0:
                os.close(fd)
        self._control = self._ack = -1
        self._dir.cleanup()
        return err or ""
