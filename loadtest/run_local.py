"""``make loadtest``: a headless locust smoke against a local gateway and the bundled fake upstream.

    python -m loadtest.run_local [--time 30s] [--users 28] [--workers 1] [--profiles ChatShort,Mixed,...]

Starts the fake upstream and a gateway (embedded SQLite store, every model routed to the fake
upstream) on 127.0.0.1, creates keys with the CLI, runs every profile at once for ``--time`` and
prints locust's summary and the 429 share of the ``limits`` profile. Everything it started is
stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import systems
from bench.procs import ROOT, cpu_plan, free_port, preexec, raise_nofile, spawn, wait_http

from . import keys as keymaker

PROFILES = ("ChatShort", "ChatLongHistory", "StreamLong", "Tools", "Vision", "Mixed", "Limits")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.run_local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", default="30s", help="locust --run-time (default 30s)")
    p.add_argument("--users", type=int, default=28)
    p.add_argument("--spawn-rate", type=float, default=14)
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--profiles", default=",".join(PROFILES), help="user classes, comma-separated")
    args = p.parse_args(argv)
    raise_nofile()
    gen_cpus, sut_cpus = cpu_plan(True)
    work = Path(tempfile.mkdtemp(prefix="zowy-loadtest-"))
    ctx = systems.Context(work, sut_cpus, install=False)
    started = []
    try:
        started.append(systems.start_upstream(ctx))
        data = work / "gateway"
        data.mkdir()
        models = work / "models.toml"
        models.write_text(systems.models_toml(ctx.upstream_base, ctx.upstream_base, False))
        env = systems.gateway_env(data, models)
        print(f"creating {args.keys} keys (+2 with default limits) with the CLI ...", flush=True)
        made = keymaker.create(keymaker.Cli(env), args.keys, 2, 10_000_000, 1_000_000_000, 100_000_000_000)
        keys_file = work / "keys.json"
        keys_file.write_text(json.dumps(made))
        port = free_port()
        gateway = spawn("gateway", [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
                                    "--workers", str(args.workers)], work, env=env, cpus=sut_cpus)
        started.append(gateway)
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway, timeout=60)
        host = f"http://127.0.0.1:{port}"
        print(f"gateway on {host} ({args.workers} worker(s)), fake upstream on {ctx.upstream_base}; "
              f"locust for {args.time} with {args.users} users: {args.profiles}", flush=True)
        locust_env = {**os.environ, "ZOWY_LOADTEST_KEYS_FILE": str(keys_file), "ZOWY_LOADTEST_FAKE": "1"}
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.time, "--host", host,
               "--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "0",
               *[c.strip() for c in args.profiles.split(",") if c.strip()]]
        done = subprocess.run(cmd, cwd=ROOT, env=locust_env, preexec_fn=preexec(gen_cpus))
        if not gateway.alive():
            print(f"the gateway died during the load test:\n{gateway.log()}")
            return 1
        return done.returncode
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
