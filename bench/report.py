"""Turn a bench run into ratios, the issue-6 targets as met / not met, and the JSON, markdown and
PNG files under the output directory."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

ORDER = ("direct", "bare", "nginx", "gateway", "litellm")
NAMES = {"direct": "direct (fake upstream)", "bare": "bare Sanic proxy", "nginx": "nginx",
         "gateway": "Zowy gateway", "litellm": "LiteLLM proxy"}


def _get(d, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _sub(a, b):
    return round(a - b, 4) if a is not None and b is not None else None


def _div(a, b):
    return round(a / b, 3) if a is not None and b else None


def rps(system: dict | None, kind: str):
    return _get(system, "throughput", kind, "rps")


def analyse(out: dict) -> None:
    """Add ``added`` latency per system, ``ratios`` and ``targets`` to a run's results."""
    systems = out["systems"]
    direct = systems.get("direct")
    for key, s in systems.items():
        # The reference is the direct run measured right before this system's (paired), if any.
        ref = s.get("latency_c1_direct_paired") or _get(direct, "latency_c1")
        ref_wrk = s.get("latency_c1_wrk_direct_paired") or _get(direct, "latency_c1_wrk")
        s["added"] = {
            "reference": "paired direct run" if s.get("latency_c1_direct_paired") else "direct system run",
            "p50_ms": _sub(_get(s, "latency_c1", "non_stream", "latency", "p50_ms"),
                           _get(ref, "non_stream", "latency", "p50_ms")),
            "p99_ms": _sub(_get(s, "latency_c1", "non_stream", "latency", "p99_ms"),
                           _get(ref, "non_stream", "latency", "p99_ms")),
            "stream_ttfb_p50_ms": _sub(_get(s, "latency_c1", "stream", "ttfb", "p50_ms"),
                                       _get(ref, "stream", "ttfb", "p50_ms")),
            "stream_ttfb_p99_ms": _sub(_get(s, "latency_c1", "stream", "ttfb", "p99_ms"),
                                       _get(ref, "stream", "ttfb", "p99_ms")),
            "stream_total_p50_ms": _sub(_get(s, "latency_c1", "stream", "latency", "p50_ms"),
                                        _get(ref, "stream", "latency", "p50_ms")),
            "wrk_p50_ms": _sub(_get(s, "latency_c1_wrk", "latency", "p50_ms"), _get(ref_wrk, "latency", "p50_ms")),
            "wrk_p99_ms": _sub(_get(s, "latency_c1_wrk", "latency", "p99_ms"), _get(ref_wrk, "latency", "p99_ms")),
        }
    g, b, l = systems.get("gateway"), systems.get("bare"), systems.get("litellm")
    ratios: dict = {}
    for kind in ("non_stream", "stream"):
        ratios.setdefault("gateway_over_bare", {})[kind] = _div(rps(g, kind), rps(b, kind))
        ratios.setdefault("gateway_over_litellm", {})[kind] = _div(rps(g, kind), rps(l, kind))
        for key in systems:
            if key != "direct":
                ratios.setdefault(f"{key}_over_direct", {})[kind] = _div(rps(systems[key], kind), rps(direct, kind))
        for client, s in out.get("client_comparison", {}).items():
            ratios.setdefault(f"bare_{client}_over_bare_aiohttp", {})[kind] = _div(rps(s, kind), rps(b, kind))
    ratios["gateway_added_minus_bare_added_p50_ms"] = _sub(_get(g, "added", "p50_ms"), _get(b, "added", "p50_ms"))
    out["ratios"] = ratios
    out["targets"] = targets(out)


def _target(name: str, value, threshold: float, above: bool, unit: str = "", note: str = "") -> dict:
    met = None if value is None else (value >= threshold if above else value <= threshold)
    return {"target": name, "value": value, "threshold": f"{'>=' if above else '<='} {threshold}{unit}",
            "met": met, "note": note}


def targets(out: dict) -> list[dict]:
    s = out["systems"]
    g = s.get("gateway")
    r = out["ratios"]
    lit = "" if "litellm" in s else "LiteLLM not measured (run with --with-litellm)"
    opened = _get(g, "open_streams", "open_at_release")
    wanted = _get(g, "open_streams", "requested")
    rss_note = "largest gateway process (the worker)"
    if opened is not None and wanted and opened < wanted:
        rss_note += f"; only {opened} of {wanted} streams were open"
    rss_value = _get(g, "open_streams", "rss_largest_process_mb")
    fid = _get(g, "fidelity")
    out_t = [
        _target("gateway throughput >= 0.8x bare proxy, non-stream (c=32)", r["gateway_over_bare"]["non_stream"], 0.8, True, "x"),
        _target("gateway throughput >= 0.8x bare proxy, stream (c=32)", r["gateway_over_bare"]["stream"], 0.8, True, "x"),
        _target("gateway throughput >= 40x LiteLLM, non-stream (c=32)", r["gateway_over_litellm"]["non_stream"], 40, True, "x", lit),
        _target("gateway throughput >= 40x LiteLLM, stream (c=32)", r["gateway_over_litellm"]["stream"], 40, True, "x", lit),
        _target("added latency p50 at c=1 <= 0.7 ms", _get(g, "added", "p50_ms"), 0.7, False, " ms", "aiohttp-loadgen, gateway p50 - direct p50"),
        _target("added latency p99 at c=1 <= 1.5 ms", _get(g, "added", "p99_ms"), 1.5, False, " ms", "aiohttp-loadgen, gateway p99 - direct p99"),
        _target("stream TTFB added p50 <= 1 ms", _get(g, "added", "stream_ttfb_p50_ms"), 1.0, False, " ms", "aiohttp-loadgen, c=1"),
        {"target": "stream bytes out == bytes in except the rewritten identity tokens",
         "value": None if fid is None else ("equal" if fid.get("met") else "different"),
         "threshold": "equal", "met": None if fid is None else bool(fid.get("met")),
         "note": "" if fid is None else "tokens rewritten: " + ", ".join(fid.get("rewritten", []))},
        _target(f"RSS <= 150 MB per worker with {wanted or 1000} open streams", rss_value, 150, False, " MB", rss_note),
    ]
    if opened is not None and wanted and opened < wanted and out_t[-1]["met"]:
        out_t[-1]["met"] = False
    return out_t


# ---------------------------------------------------------------- markdown


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _met(flag) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[flag]


def markdown(out: dict) -> str:
    cfg = out["config"]
    m = out["machine"]
    gen = cfg["throughput_generator"]
    lines = [f"# Bench run {out['started_at']}", ""]
    lines += [
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m.get('memory_gib')} GiB, {m['os']}; "
        f"Python {m['python']}; git {m['git']}; load average at start {m.get('loadavg_at_start')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + "; " + ", ".join(f"{k} {v}" for k, v in m.get("tools", {}).items() if v) + ".",
        f"Pinning: load generators on CPUs {cfg['pinning']['generators']}, system under test + fake upstream "
        f"on CPUs {cfg['pinning']['systems_and_upstream']}, niceness {cfg.get('nice', 0)}. Throughput: {gen}, c={cfg['concurrency']}, "
        f"{cfg['duration_s']} s per phase after {cfg['warmup_s']} s warm-up; latency and TTFB: aiohttp-loadgen, "
        f"c=1, {cfg['latency_duration_s']} s; open streams: aiohttp-loadgen.",
        "",
        "Added latency = the system's percentile minus the same percentile of the direct upstream measured "
        "just before it (paired runs, shown in brackets).",
        "",
        f"| system | rps non-stream ({gen}) | rps stream ({gen}) | p50 / p99 c=1 ms [direct] | added p50 / p99 ms "
        "| stream TTFB p50 ms | TTFB added p50 ms | CPU s / 1k req (non-stream / stream) "
        f"| RSS idle MB | RSS {cfg['open_streams']} open streams MB (all procs / largest) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ORDER:
        s = out["systems"].get(key)
        if s is None:
            reason = out.get("skipped", {}).get(key)
            if reason:
                lines.append(f"| {NAMES[key]} | skipped: {reason.splitlines()[0][:160]} |||||||||")
            continue
        lat = _get(s, "latency_c1", "non_stream", "latency") or {}
        os_ = s.get("open_streams") or {}
        opened = os_.get("open_at_release")
        rss_cell = (f"{_f(os_.get('rss_total_mb'), 1)} / {_f(os_.get('rss_largest_process_mb'), 1)}"
                    + (f" ({opened} open)" if opened is not None and opened != os_.get("requested") else ""))
        if "error" in os_:
            rss_cell = "error"
        lines.append(
            f"| {NAMES[key]} | {_f(rps(s, 'non_stream'), 0)} | {_f(rps(s, 'stream'), 0)} "
            f"| {_f(lat.get('p50_ms'), 3)} / {_f(lat.get('p99_ms'), 3)}{_paired(s)} "
            f"| {_f(_get(s, 'added', 'p50_ms'), 3)} / {_f(_get(s, 'added', 'p99_ms'), 3)} "
            f"| {_f(_get(s, 'latency_c1', 'stream', 'ttfb', 'p50_ms'), 3)} "
            f"| {_f(_get(s, 'added', 'stream_ttfb_p50_ms'), 3)} "
            f"| {_f(_get(s, 'throughput', 'non_stream', 'cpu', 'per_1000_requests_s'), 3)} / "
            f"{_f(_get(s, 'throughput', 'stream', 'cpu', 'per_1000_requests_s'), 3)} "
            f"| {_f(_get(s, 'rss_idle', 'total_mb'), 1)} | {rss_cell} |"
        )
    if any(_get(s, "latency_c1_wrk") for s in out["systems"].values()):
        lines += ["", "Latency at c=1 measured by wrk as well (less client overhead; secondary figure):", "",
                  "| system | wrk p50 / p99 ms | added p50 / p99 ms |", "|---|---:|---:|"]
        for key in ORDER:
            s = out["systems"].get(key)
            if s and s.get("latency_c1_wrk"):
                w = s["latency_c1_wrk"]["latency"]
                lines.append(f"| {NAMES[key]} | {_f(w['p50_ms'], 3)} / {_f(w['p99_ms'], 3)} "
                             f"| {_f(s['added']['wrk_p50_ms'], 3)} / {_f(s['added']['wrk_p99_ms'], 3)} |")
    errors = [(key, kind, _get(s, "throughput", kind)) for key, s in out["systems"].items()
              for kind in ("non_stream", "stream") if (_get(s, "throughput", kind, "errors") or 0) > 0]
    if errors:
        lines += ["", "Load phases with errors: " + "; ".join(
            f"{k} {kind}: {t['errors']} errors ({t.get('error_detail') or t.get('statuses')})" for k, kind, t in errors)]
    lines += ["", f"CPU seconds used during each {cfg['duration_s']} s throughput phase (non-stream / stream): the system, "
              "the fake upstream (same CPU as the system), the load generator, and other processes on the "
              "machine (not part of this bench; when high, they compete with the generator and the numbers "
              "may be low):", "",
              "| system | system s | upstream s | generator s | other processes s |", "|---|---:|---:|---:|---:|"]
    for key in ORDER:
        s = out["systems"].get(key)
        if not s:
            continue
        cells = []
        for field in ("system_s", "upstream_s", "generator_s", "other_processes_s"):
            a = _get(s, "throughput", "non_stream", "cpu", field)
            b = _get(s, "throughput", "stream", "cpu", field)
            cells.append(f"{_f(a, 2)} / {_f(b, 2)}")
        lines.append(f"| {NAMES[key]} | " + " | ".join(cells) + " |")
    r = out["ratios"]
    lines += ["", "## Ratios", "",
              "| ratio | non-stream | stream |", "|---|---:|---:|"]
    for name, value in r.items():
        if isinstance(value, dict):
            lines.append(f"| {name.replace('_', ' ')} | {_f(value.get('non_stream'), 3)} | {_f(value.get('stream'), 3)} |")
    lines += ["", "## Targets (issue 6)", "", "| target | value | threshold | result | note |", "|---|---:|---:|---|---|"]
    for t in out["targets"]:
        lines.append(f"| {t['target']} | {_f(t['value'], 3) if not isinstance(t['value'], str) else t['value']} "
                     f"| {t['threshold']} | {_met(t['met'])} | {t['note']} |")
    cc = out.get("client_comparison") or {}
    if cc:
        b = out["systems"].get("bare")
        lines += ["", "## Upstream client of the bare proxy (same Sanic server, c=32)", "",
                  f"| client | rps non-stream ({gen}) | rps stream ({gen}) | CPU s / 1k req non-stream |", "|---|---:|---:|---:|"]
        rows = [("aiohttp", b)] + list(cc.items()) if b else list(cc.items())
        for client, s in rows:
            lines.append(f"| {client} | {_f(rps(s, 'non_stream'), 0)} | {_f(rps(s, 'stream'), 0)} "
                         f"| {_f(_get(s, 'throughput', 'non_stream', 'cpu', 'per_1000_requests_s'), 3)} |")
    fid = _get(out["systems"].get("gateway"), "fidelity")
    if fid:
        lines += ["", "## Stream fidelity", "", "```", json.dumps(fid, indent=1)[:3000], "```"]
    micro = out.get("micro")
    if micro and "error" not in micro:
        lines += ["", micro_markdown(micro)]
    prof = _get(out["systems"].get("gateway"), "profile")
    if prof:
        lines += ["", "## Gateway profile (py-spy, worker process, under c=32 load)", ""]
        for kind, p in prof.items():
            if "error" in p:
                lines.append(f"{kind}: {p['error']}")
                continue
            lines += [f"**{kind}** ({p['samples']} samples) — top self time by function:", "",
                      "| % self | function |", "|---:|---|"]
            lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p["self"][:15]]
            lines += ["", "inclusive by function (app code and its direct calls):", "", "| % incl | function |", "|---:|---|"]
            lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p["inclusive_app"][:15]]
            lines.append("")
    if out.get("skipped"):
        lines += ["", "Skipped / failed: " + "; ".join(f"{k}: {v.splitlines()[0][:300]}" for k, v in out["skipped"].items())]
    return "\n".join(lines) + "\n"


def _paired(s: dict) -> str:
    ref = _get(s, "latency_c1_direct_paired", "non_stream", "latency")
    return f" [{_f(ref.get('p50_ms'), 3)} / {_f(ref.get('p99_ms'), 3)}]" if ref else ""


def micro_markdown(micro: dict) -> str:
    lines = ["## Micro-benchmarks (ns/op, one core)", ""]
    parse = micro.get("parse") or {}
    if parse:
        sizes = list(next(iter(parse.values())).keys())
        lines += ["| parse + validate | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for name, row in parse.items():
            lines.append(f"| {name} | " + " | ".join(_f(row[s].get("ns_per_op"), 0) for s in sizes) + " |")
    relay = micro.get("relay") or {}
    if relay:
        lines += ["", "| SSE relay (per event) | ns/event | MB/s |", "|---|---:|---:|"]
        for name, row in relay.items():
            lines.append(f"| {name} | {_f(row.get('ns_per_event'), 0)} | {_f(row.get('mb_per_s'), 1)} |")
    if micro.get("choice"):
        lines += ["", micro["choice"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- py-spy


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def top_frames(path: Path) -> dict:
    """Summarise py-spy ``--format raw`` (collapsed stacks): self and inclusive time per function."""
    self_t: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    pct = lambda c: [(k, 100.0 * v / total) for k, v in c.most_common(40)] if total else []  # noqa: E731
    app_incl = Counter({k: v for k, v in incl.items() if "(app/" in k})
    return {"samples": total, "self": pct(self_t), "inclusive": pct(incl), "inclusive_app": pct(app_incl)}


def _short(frame: str) -> str:
    frame = frame.strip()
    if frame.startswith(("process ", "thread ")):
        return ""
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif re.search(r"/lib/python3\.\d+/", file):
        file = re.split(r"/lib/python3\.\d+/", file, maxsplit=1)[1]
    elif "/app/" in file:
        file = "app/" + file.split("/app/", 1)[1]
    return f"{m.group('func')} ({file})"


# ---------------------------------------------------------------- files


def chart(out: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in ORDER if k in out["systems"]]
    if not keys:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.38
    xs = range(len(keys))
    for offset, kind, label in ((-width / 2, "non_stream", "non-stream"), (width / 2, "stream", "stream")):
        values = [rps(out["systems"][k], kind) or 0 for k in keys]
        bars = ax1.bar([x + offset for x in xs], values, width, label=label)
        ax1.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax1.set_xticks(list(xs), [NAMES[k].replace(" ", "\n", 1) for k in keys], fontsize=8)
    ax1.set_ylabel("requests / s")
    ax1.set_title(f"Throughput at c={out['config']['concurrency']} ({out['config']['throughput_generator']})")
    ax1.legend()
    lkeys = [k for k in keys if k != "direct"]
    metrics = (("p50_ms", "added p50 (c=1)"), ("p99_ms", "added p99 (c=1)"), ("stream_ttfb_p50_ms", "stream TTFB added p50"))
    w2 = 0.8 / len(metrics)
    raw_all = [[_get(out["systems"][k], "added", m) for k in lkeys] for m, _ in metrics]
    positive = [v for row in raw_all for v in row if v and v > 0]
    log_scale = bool(positive) and max(positive) / max(min(positive), 1e-2) > 30
    floor = 0.01 if log_scale else 0.0
    for i, ((metric, label), raw) in enumerate(zip(metrics, raw_all)):
        values = [max(v or 0.0, floor) for v in raw]
        bars = ax2.bar([x + (i - 1) * w2 for x in range(len(lkeys))], values, w2, label=label)
        ax2.bar_label(bars, labels=["–" if v is None else f"{v:.2f}" for v in raw], fontsize=7)
    if log_scale:
        ax2.set_yscale("log")
    ax2.set_xticks(list(range(len(lkeys))), [NAMES[k].replace(" ", "\n", 1) for k in lkeys], fontsize=8)
    ax2.set_ylabel("ms added vs direct")
    ax2.set_title("Added latency (aiohttp-loadgen)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Zowy bench {out['started_at']} — {out['machine']['cpu_model']}, {out['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out: dict, directory: Path, stamp: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stamp}.json", "md": directory / f"{stamp}.md"}
    paths["json"].write_text(json.dumps(out, indent=1, default=str))
    paths["md"].write_text(markdown(out))
    png = chart(out, directory / f"{stamp}.png")
    if png:
        paths["png"] = png
    return paths
