"""Processes of a bench run: spawn pinned to CPUs, wait until they answer, stop them, and read
their CPU time and RSS (the whole process tree) from /proc, or psutil where /proc is missing."""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(load generator CPUs, system-under-test + upstream CPUs), or (None, None) when not pinning."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


NICE = 0  # niceness for every process the bench starts (set by bench.run --nice)


def _preexec(cpus: set[int] | None):
    nice = NICE

    def run() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nice:
            try:
                os.nice(nice)
            except OSError:
                pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            except (ValueError, OSError):
                pass

    return run


def raise_nofile() -> None:
    """Let this process hold as many sockets as the hard limit allows."""
    _preexec(None)()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """This process and all its descendants."""
        return tree(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()
            self.popen.wait(5)


def preexec(cpus: set[int] | None):
    """What a child runs before exec: pin to ``cpus``, renice, raise its file limit."""
    return _preexec(cpus)


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
          cpus: set[int] | None = None, cwd: Path | None = None) -> Proc:
    """Start ``args`` in its own session (so the whole group can be stopped), output to a log file."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            args, cwd=cwd or ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_preexec(cpus),
        )
    return Proc(name, popen, log_path)


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30.0, headers: dict | None = None) -> None:
    """Wait until ``url`` answers with any status below 500."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = str(exc)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    detail = proc.log() if proc is not None else ""
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})\n{detail}")


# ---------------------------------------------------------------- /proc accounting


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    if not os.path.isdir("/proc"):
        return _psutil_tree(pid)
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (live processes only)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
        except (OSError, IndexError, ValueError):
            total += _psutil_cpu(pid)
    return total


def rss_bytes(pids: list[int]) -> dict[int, int]:
    """Resident set size of each live pid."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                out[pid] = int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            value = _psutil_rss(pid)
            if value:
                out[pid] = value
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _psutil_tree(pid: int) -> list[int]:
    try:
        import psutil

        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except Exception:
        return [pid]


def _psutil_cpu(pid: int) -> float:
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return 0.0


def _psutil_rss(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return 0


def python() -> str:
    return sys.executable
