"""wrk as the bench's native load generator: find or install it, write the Lua script that POSTs
the bench body and reports a JSON summary, run it pinned, parse what it printed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

NAME = "wrk"

_LUA = r"""
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def find() -> str | None:
    return shutil.which("wrk")


def ensure(install: bool, log=print) -> str | None:
    """The wrk binary; installed with apt-get when absent, allowed, and we are root."""
    path = find()
    if path or not install:
        return path
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        log("wrk is not installed and apt-get cannot be used here: falling back to the aiohttp load generator")
        return None
    log("installing wrk with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (["apt-get", "install", "-y", "-qq", "wrk"], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "wrk"]):
        try:
            subprocess.run(attempt, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired):
            break
        if find():
            return find()
    log("wrk could not be installed: falling back to the aiohttp load generator")
    return None


def version(path: str) -> str:
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body cannot be embedded in a Lua long string")
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    path.write_text(_LUA % {"body": text, "headers": lines})
    return path


def parse(output: str) -> dict:
    match = re.search(r"^WRKJSON (\{.*\})$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = max(0, raw["requests"] - raw["status"])
    return {
        "generator": NAME,
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "ok": ok,
        "errors": errors,
        "error_detail": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
        "rps": round(ok / seconds, 1) if seconds else 0.0,
        "latency": {
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "mean_ms": round(raw["mean_us"] / 1000, 4),
            "max_ms": raw["max_us"] / 1000,
        },
    }


def run(binary: str, url: str, lua: Path, connections: int, seconds: int, cpus: set[int] | None,
        threads: int = 1, timeout_s: int = 30) -> dict:
    """Run wrk and return its parsed summary (``connections`` keep-alive connections)."""
    args = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, int(round(seconds)))}s",
            "--timeout", f"{timeout_s}s", "-s", str(lua), url]
    from .procs import preexec

    out = subprocess.run(args, capture_output=True, text=True, preexec_fn=preexec(cpus),
                         timeout=seconds + timeout_s + 30)
    result = parse(out.stdout)
    result["concurrency"] = connections
    return result
