"""How many reads, writes and context switches processes make over a phase, counted by ``perf stat``
on the kernel's system-call tracepoints (no sampling, no slowdown); where perf cannot count them,
``available()`` says so and a phase is measured without."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

EVENTS = {
    "reads": "syscalls:sys_enter_read",
    "writes": "syscalls:sys_enter_write",
    "switches": "context-switches",
}


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


class Counting:
    """``with Counting(pids) as c:`` counts the processes' (all their threads') events over the
    block; ``c.counts`` holds them after it."""

    START = 0.2  # perf attaches to every thread of the processes before the block starts

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.counts: dict[str, int] = {}
        self._perf: subprocess.Popen | None = None

    def __enter__(self) -> Counting:
        self._perf = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(EVENTS.values()), "-p", ",".join(map(str, self.pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(self.START)
        return self

    def __exit__(self, *exc) -> None:
        assert self._perf is not None
        self._perf.send_signal(signal.SIGINT)
        try:
            _, err = self._perf.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._perf.kill()
            _, err = self._perf.communicate()
        self.counts = parse(err)
