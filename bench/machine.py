"""What a bench number was measured on: CPU, cores, memory, OS, Python, package and tool versions,
and how busy the machine was with other work."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

from .procs import ROOT

PACKAGES = ("sanic", "aiohttp", "uvloop", "orjson", "pydantic-core", "pydantic", "httpx", "httpx-aiohttp",
            "pymongo", "matplotlib", "locust")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + (" (app/ modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def cpu_times() -> dict[str, float] | None:
    """Seconds all CPUs together spent since boot, by kind (from /proc/stat): ``task`` is
    user + nice + system (time processes are charged for), then irq + softirq and steal."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    fields += [0] * (8 - len(fields))
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {"task": (user + nice + system) / hz, "irq": (irq + softirq) / hz, "steal": steal / hz}


def info() -> dict:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "packages": versions(),
        "git": _git(),
        "loadavg_at_start": loadavg(),
    }
