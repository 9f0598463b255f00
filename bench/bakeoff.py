"""The upstream transport bake-off: which systems of a bench run are its candidates, and the table of
several runs with their spread.

System keys (``python -m bench.run --systems …``): ``bare-<transport>`` is the bare proxy relaying
through one of the gateway's transports (bench/transports.py:TRANSPORTS), ``gateway-<transport>``
the gateway with ``ZOWY_UPSTREAM_TRANSPORT`` set to it; a ``-tls`` suffix puts the system in front of
the TLS fake upstream (bench/tls_upstream.py) instead of the plain one (``bare-tls`` and
``gateway-tls`` are the plain ``bare`` and ``gateway`` over TLS). For instance:

    python -m bench.run --lean --no-micro --clients none --duration 5 --long-streams 200 \\
        --systems bare,bare-h1,gateway,gateway-h1,bare-tls,bare-h1-tls,gateway-tls,gateway-h1-tls
    python -m bench.bakeoff bench/results/A.json bench/results/B.json   # the table, runs side by side
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from .transports import TRANSPORTS


@dataclass(frozen=True)
class Candidate:
    kind: str  # "bare" or "gateway"
    transport: str | None  # a key of TRANSPORTS; None: the system's own client (bare: aiohttp's session)
    tls: bool


def parse(key: str) -> Candidate | None:
    """The candidate a system key names, or None when it is not a bake-off key."""
    tls = key.endswith("-tls")
    stem = key[:-4] if tls else key
    for kind in ("bare", "gateway"):
        if stem == kind:
            return Candidate(kind, None, True) if tls else None
        if stem.startswith(kind + "-") and stem[len(kind) + 1:] in TRANSPORTS:
            return Candidate(kind, stem[len(kind) + 1:], tls)
    return None


# ---------------------------------------------------------------- the table of several runs

METRICS = (
    ("CPU µs / non-stream request", ("throughput", "non_stream", "cpu", "per_1000_requests_s"), 1000.0),
    ("CPU µs / relayed event", ("long_streams", "cpu_per_event_us"), 1.0),
    ("p99 ms c=32 non-stream", ("throughput", "non_stream", "latency", "p99_ms"), 1.0),
    ("rps non-stream c=32", ("throughput", "non_stream", "rps"), 1.0),
    ("rps stream (10 events) c=32", ("throughput", "stream", "rps"), 1.0),
    ("CPU µs / stream request", ("throughput", "stream", "cpu", "per_1000_requests_s"), 1000.0),
)


def _get(d, path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def value(system: dict, path: tuple, scale: float):
    v = _get(system, path)
    return None if v is None else v * scale


def table(runs: list[dict]) -> str:
    """Markdown: one row per system, per metric the median over the runs and the range [min–max]."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["systems"] if k not in keys]
    names = list(TRANSPORTS)

    def rank(key: str):
        c = parse(key) or Candidate(key.split("-")[0], None, False)
        return (c.tls, c.kind != "bare", -1 if c.transport is None else names.index(c.transport), key)

    order = sorted(keys, key=rank)
    lines = [f"| system ({len(runs)} run{'s' if len(runs) > 1 else ''}: median [min–max]) | "
             + " | ".join(m[0] for m in METRICS) + " |", "|---" + "|---:" * len(METRICS) + "|"]
    for key in order:
        cells = []
        for _, path, scale in METRICS:
            values = [v for run in runs if key in run["systems"]
                      for v in [value(run["systems"][key], path, scale)] if v is not None]
            if not values:
                cells.append("–")
                continue
            digits = 0 if statistics.median(values) >= 100 else (1 if statistics.median(values) >= 10 else 2)
            cell = f"{statistics.median(values):.{digits}f}"
            if len(values) > 1:
                cell += f" [{min(values):.{digits}f}–{max(values):.{digits}f}]"
            cells.append(cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reference(key: str) -> str:
    """What a system is compared with in its own run: the plain system in the same place (the bare
    proxy's aiohttp session, or the gateway's default transport), over the same upstream."""
    c = parse(key) or Candidate(key, None, False)
    return c.kind + ("-tls" if c.tls else "")


def ratios(runs: list[dict]) -> str:
    """Markdown: each system's CPU per request and per event over its reference's in the same run."""
    names = list(TRANSPORTS)
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["systems"] if k not in keys]
    keys.sort(key=lambda k: (k.endswith("-tls"), not k.startswith("bare"),
                             -1 if (parse(k) or Candidate("", None, False)).transport is None
                             else names.index(parse(k).transport), k))
    picked = [m for m in METRICS if m[0].startswith("CPU")]
    lines = ["| system / its reference in the same run (median [min–max]) | "
             + " | ".join(m[0] for m in picked) + " |", "|---" + "|---:" * len(picked) + "|"]
    for key in keys:
        ref = reference(key)
        if ref == key:
            continue
        cells = []
        for _, path, scale in picked:
            values = []
            for run in runs:
                a, b = run["systems"].get(key), run["systems"].get(ref)
                va, vb = (value(a, path, scale) if a else None), (value(b, path, scale) if b else None)
                if va is not None and vb:
                    values.append(va / vb)
            cells.append("–" if not values else f"{statistics.median(values):.2f}"
                         + (f" [{min(values):.2f}–{max(values):.2f}]" if len(values) > 1 else ""))
        lines.append(f"| {key} / {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wide(runs: list[dict]) -> str:
    """Markdown: candidates × {plain, TLS}, each cell the median over the runs (range in brackets)."""
    picked = [METRICS[0], METRICS[1], METRICS[2], METRICS[3]]
    heads = ["CPU µs/req", "CPU µs/event", "p99 ms c=32", "rps c=32"]
    lines = ["| candidate | where | " + " | ".join(f"{h} plain" for h in heads) + " | "
             + " | ".join(f"{h} TLS" for h in heads) + " |", "|---|---" + "|---:" * (2 * len(heads)) + "|"]
    for transport in [None, *TRANSPORTS]:
        for kind in ("bare", "gateway"):
            if transport == "h1" and kind == "gateway":
                continue  # the gateway's default: the "gateway" row
            key = kind if transport is None else f"{kind}-{transport}"
            cells = []
            for tls in (False, True):
                name = key + ("-tls" if tls else "")
                for _, path, scale in picked:
                    values = [v for run in runs if name in run["systems"]
                              for v in [value(run["systems"][name], path, scale)] if v is not None]
                    if not values:
                        cells.append("–")
                        continue
                    m = statistics.median(values)
                    digits = 0 if m >= 100 else 1
                    cells.append(f"{m:.{digits}f}" + (f" [{min(values):.{digits}f}–{max(values):.{digits}f}]"
                                                       if len(values) > 1 else ""))
            label = transport
            if transport is None:
                label = "aiohttp (ClientSession directly)" if kind == "bare" else "the gateway's default (h1; aiohttp in runs before it won)"
            elif transport == "aiohttp":
                label = "aiohttp (AiohttpTransport, through the seam)"
            lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bakeoff", description="The bake-off table of bench runs.")
    p.add_argument("runs", nargs="+", type=Path, help="bench result JSON files")
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    print(wide(runs))
    print(table(runs))
    print(ratios(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
