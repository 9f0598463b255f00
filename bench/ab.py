"""Interleaved comparison: CPU per request of two or more systems (``gateway``, ``gateway@<rev>``,
``bare``) under the same wrk load, in rounds that alternate their order, so that the machine's drift
over minutes falls on every system alike. Finer than one run of bench.run for differences of a few
per cent; it measures nothing else.

``python -m bench.ab --systems gateway,gateway@HEAD --rounds 6 --seconds 5 --phases stream,plain,refused``
(``gateway-2w``, ``bare-2w``: the same in two worker processes)
(``--syscalls``: the reads, writes and context switches, waits and preemptions, each system made per
request or event too; ``--upstream-on generators``: the fake upstream off the systems' core)
"""
from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import tempfile
from pathlib import Path

from . import syscalls, systems, wrk
from .procs import cpu_plan, cpu_seconds, free_port
from .loads import bodies, loadgen
from .report import per_round, ratio
from .variants import Trees, is_gateway


# A phase: the bench body it sends and the API's path; "refused" sends the plain body with a key whose
# window is full (429s).
PHASES = {
    "plain": ("plain", "/chat/completions"),
    "stream": ("stream", "/chat/completions"),
    "refused": ("plain", "/chat/completions"),
    "responses": ("responses_plain", "/responses"),
    "responses-stream": ("responses_stream", "/responses"),
    "responses-stored": ("responses_plain_stored", "/responses"),
    "long": ("long", "/chat/completions"),
}
LONG_CHUNKS, LONG_SPACING = 200, 0.01


def _headers(system: systems.System, phase: str) -> dict[str, str]:
    return system.limited_headers if phase == "refused" else system.headers


def applies(key: str, phase: str, only: dict[str, list[str]] | None = None) -> bool:
    """Whether ``phase`` is measured on the system ``key``: the refused phase needs a gateway's limited
    key; ``only`` may name the phases of some systems."""
    if only and key in only and phase not in only[key]:
        return False
    return phase != "refused" or key.startswith("gateway")


def _start(key: str, ctx: systems.Context, trees: Trees) -> systems.System:
    """``key``: bare, gateway or gateway@<rev>, with ``-<n>w`` for n worker processes."""
    match = re.fullmatch(r"(.+?)(?:-(\d+)w)?", key)
    name, workers = match.group(1), int(match.group(2) or 1)
    if name == "bare":
        return systems.bare(ctx, key=key, workers=workers)
    if not is_gateway(name):
        raise SystemExit(f"bench.ab compares gateway, gateway@<rev> and bare (each with -<n>w for n workers), not {key!r}")
    tree, info = trees.tree(name)
    return systems.gateway(ctx, free_port(), key=key, tree=tree, tree_info=info, workers=workers)


def _long(url: str, body: Path, headers: dict[str, str], args: argparse.Namespace, gen_cpus) -> dict:
    """``args.long_streams`` streams of LONG_CHUNKS events LONG_SPACING apart, kept open for the
    phase; its "requests" are the events the client counted, so the figure is CPU per relayed event."""
    result = loadgen("streams", url, body, headers, ("--streams", str(args.long_streams), "--duration",
                     str(args.seconds), "--spacing", str(LONG_SPACING), "--tail", "60"), gen_cpus, args.seconds + 120)
    failed = result.get("failed") or 0
    return {"requests": result.get("events") or 0, "error_detail": {"failed": failed} if failed else {}}


Rounds = dict[tuple[str, str], list[tuple[float, float]]]
Counted = dict[tuple[str, str], list[dict[str, float]]]


def measure(args: argparse.Namespace) -> tuple[Rounds, Counted]:
    """(system, phase) -> [(CPU µs per request, requests per second)] for every round, and with
    ``args.syscalls`` -> [{reads, writes, waits, preempted} per request] for every round;
    ``args.only`` (optional): system -> the phases it is measured in, where not all; ``args.wrk_binary``
    (optional): the wrk to run, else one found or installed."""
    gen_cpus, sut_cpus = cpu_plan(True)
    only = getattr(args, "only", None)
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        work = Path(tmp)
        ctx = systems.Context(work, sut_cpus, install=False)
        files = bodies(work, 10, 0.0, LONG_CHUNKS, LONG_SPACING)
        trees = Trees(work, Path.cwd())
        upstream = systems.start_upstream(ctx, gen_cpus if args.upstream_on == "generators" else None)
        started: dict[str, systems.System] = {}
        try:
            for key in args.systems:
                started[key] = _start(key, ctx, trees)
            binary = getattr(args, "wrk_binary", None) or wrk.ensure(install=True, log=print)
            if binary is None:
                raise SystemExit("wrk is not installed: make bench installs it")
            scripts = {(key, phase): wrk.script(work / re.sub(r"[^A-Za-z0-9._-]", "_", f"{key}-{phase}.lua"),
                                                files[PHASES[phase][0]].read_bytes(),
                                                {**_headers(started[key], phase), "Content-Type": "application/json"})
                       for key in started for phase in args.phases if applies(key, phase, only)}
            results: Rounds = {k: [] for k in scripts}
            counted: Counted = {k: [] for k in scripts}
            for round_ in range(args.rounds):
                order = args.systems if round_ % 2 == 0 else args.systems[::-1]
                for phase in args.phases:
                    for key in order:
                        if not applies(key, phase, only):
                            continue
                        system = started[key]
                        pids = system.pids()
                        url = system.url.replace("/chat/completions", PHASES[phase][1])
                        counting = syscalls.Counting(pids) if args.syscalls else None
                        with counting or contextlib.nullcontext():
                            before = cpu_seconds(pids)
                            if phase == "long":
                                out = _long(url, files["long"], _headers(system, phase), args, gen_cpus)
                            else:
                                out = wrk.run(binary, url, scripts[(key, phase)], 32, args.seconds, gen_cpus)
                            used = cpu_seconds(pids) - before
                        done = out.get("requests") or 0
                        errors = out.get("error_detail") or {}
                        refused = errors.get("status", 0)
                        # A refused phase may see its key's window open once a minute.
                        wrong = sum(errors.values()) - refused + (done - refused > 2 if phase == "refused" else refused)
                        if not done or wrong:
                            raise SystemExit(f"{key} {phase}: {out}")
                        results[(key, phase)].append((used / done * 1e6, done / args.seconds))
                        if counting is not None:
                            counted[(key, phase)].append({k: v / done for k, v in counting.counts.items()})
                        print(f"round {round_} {phase:6} {key:24} {used / done * 1e6:7.1f} µs/{_unit(phase)} "
                              f"{done / args.seconds:7.0f} rps", flush=True)
            return results, counted
        finally:
            systems.stop_all(list(started.values()))
            upstream.stop()
            trees.close()


def _unit(phase: str) -> str:
    return "event" if phase == "long" else "request"


def report(results: Rounds, systems_: list[str], phases: list[str]) -> str:
    """Medians per system and phase, and each system's ratio to the first: of the medians, and the
    median of each round's ratio (the systems of a round measured minutes apart at most)."""
    lines = ["| phase | system | CPU µs / request or event (median) | rps (median) | CPU ratio to " + systems_[0] +
             " | the same, median of each round's |", "|---|---|---:|---:|---:|---:|"]
    for phase in phases:
        firsts = [cpu for cpu, _ in results.get((systems_[0], phase), [])]
        first = statistics.median(firsts) if firsts else None
        for key in systems_:
            if (key, phase) not in results:
                continue
            cpus = [c for c, _ in results[(key, phase)]]
            cpu = statistics.median(cpus)
            rps = statistics.median(r for _, r in results[(key, phase)])
            by_round = per_round([cpus, firsts], ratio)
            lines.append(f"| {phase} | {key} | {cpu:.1f} | {rps:,.0f} | {f'{cpu / first:.3f}' if first else '–'} "
                         f"| {f'{by_round:.3f}' if by_round else '–'} |")
    return "\n".join(lines)


def syscall_report(counted: Counted, systems_: list[str], phases: list[str]) -> str:
    """Medians of the reads, writes and context switches (to wait, and preempted) per request (per
    event in the long phase)."""
    lines = ["| phase | system | " + " | ".join(f"{name} per request or event" for name in syscalls.NAMES) + " |",
             "|---|---|" + "---:|" * len(syscalls.NAMES)]
    for phase in phases:
        for key in systems_:
            if (key, phase) not in counted:
                continue
            rounds = counted[(key, phase)]
            cells = [f"{statistics.median(r[name] for r in rounds):.3f}" if all(name in r for r in rounds) else "–"
                     for name in syscalls.NAMES]
            lines.append(f"| {phase} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default="gateway,gateway@HEAD", type=lambda s: s.split(","))
    p.add_argument("--phases", default="stream,plain", type=lambda s: s.split(","),
                   help="plain (non-stream), stream (10 events), refused (429s of a full window), "
                        "responses, responses-stream (the same through the Responses API), responses-stored "
                        "(non-stream with store: true, one store write each), "
                        "long (--long-streams streams of 200 events 10 ms apart: CPU per relayed event)")
    p.add_argument("--long-streams", type=int, default=400)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--upstream-on", choices=("systems", "generators"), default="systems",
                   help="the CPUs the fake upstream runs on: the systems' (as bench.run), or the load "
                        "generators', so that it does not take turns with the system on one core")
    p.add_argument("--syscalls", action="store_true",
                   help="count each system's reads and writes (perf stat) and context switches (/proc) as well")
    args = p.parse_args(argv)
    if args.syscalls and not syscalls.available():
        raise SystemExit("--syscalls needs perf with the kernel's system-call tracepoints (Debian: linux-perf)")
    results, counted = measure(args)
    print(report(results, args.systems, args.phases))
    if args.syscalls:
        print(syscall_report(counted, args.systems, args.phases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
