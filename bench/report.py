"""Turn a bench run into ratios, the targets as met / not met, before/after ratios between gateway
variants, and the JSON, markdown and PNG files under the output directory."""
from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

TWO_WORKERS = "gateway-2w"
BARE_TWO_WORKERS = "bare-2w"
ORDER = ("direct", "bare", "bare-2w", "nginx", "gateway", "gateway-2w", "litellm")
NAMES = {"direct": "direct (fake upstream)", "bare": "bare Sanic proxy", "bare-2w": "bare Sanic proxy, 2 workers", "nginx": "nginx",
         "gateway": "Zowy gateway", "gateway-2w": "Zowy gateway, 2 workers", "litellm": "LiteLLM proxy"}


def keys(out: dict) -> list[str]:
    """Systems in report order, gateway variants (``gateway@<rev>``) right after the gateway."""
    present = list(out["systems"]) + list(out.get("skipped", {}))
    extra = [k for k in dict.fromkeys(present) if k not in ORDER and k.startswith("gateway@")]
    order = []
    for key in ORDER:
        order.append(key)
        if key == "gateway":
            order += extra
    return order


def label_of(key: str) -> str:
    return NAMES.get(key) or f"Zowy {key}"


def gateway_keys(out: dict) -> list[str]:
    return [k for k in keys(out) if (k == "gateway" or k.startswith("gateway@")) and k in out["systems"]]


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
    out["variants"] = variant_ratios(out)


def _target(name: str, value, threshold: float, above: bool, unit: str = "", note: str = "") -> dict:
    met = None if value is None else (value >= threshold if above else value <= threshold)
    return {"target": name, "value": value, "threshold": f"{'>=' if above else '<='} {threshold}{unit}",
            "met": met, "note": note}


def cpu_per_event(s: dict | None, phase: str = "long_streams"):
    return _get(s, phase, "cpu_per_event_us")


def cpu_per_request_us(s: dict | None, kind: str = "non_stream"):
    v = _get(s, "throughput", kind, "cpu", "per_1000_requests_s")
    return round(v * 1000, 1) if v is not None else None


def p50_c1(s: dict | None):
    return _get(s, "latency_c1", "non_stream", "latency", "p50_ms")


def capacity_of(s: dict | None):
    return _get(s, "capacity", "streams")


def targets(out: dict) -> list[dict]:
    """The targets, for the gateway and each gateway variant of the run, against the bare proxy of
    the same run; then what holds for the run as a whole (conformance)."""
    rows = []
    for key in gateway_keys(out):
        rows += gateway_targets(out, key)
    conformance = out.get("conformance")
    if conformance is not None:
        passed, failed = conformance.get("passed"), conformance.get("failed")
        rows.append({"target": "every conformance recording passes (tests/conformance/test_recordings.py)",
                     "value": f"{passed} passed, {failed} failed" if passed is not None else "error",
                     "threshold": "0 failed", "met": failed == 0 and bool(passed) if passed is not None else False,
                     "note": conformance.get("summary") or conformance.get("error", "")[:200]})
    return rows


def interleaved(out: dict, phase: str, key: str, field: str = "cpu_us"):
    """``key``'s median of the run's interleaved rounds (bench/ab.py) in ``phase``, or None."""
    return _get(out, "interleaved", "phases", phase, key, field)


def per_round(series: list, combine) -> float | None:
    """The median over rounds of ``combine`` of each round's figures, one list of figures per
    series in round order: the systems of a round compared with each other (measured minutes apart
    at most), not with another round's. None when a series is missing or they do not line up."""
    if not series or not all(series) or len({len(one) for one in series}) != 1:
        return None
    values = [combine(*figures) for figures in zip(*series) if all(figures)]
    return round(statistics.median(values), 3) if values else None


def ratio(a: float, b: float) -> float:
    return a / b


def by_round(out: dict, refs: list[tuple[str, str]], combine, field: str = "cpu_us") -> float | None:
    """``per_round`` over the run's interleaved rounds of ``refs``, (phase, system) each; None when
    the run lacks any of them."""
    return per_round([_get(out, "interleaved", "phases", phase, key, "cpu_rounds_us" if field == "cpu_us" else "rps_rounds")
                      for phase, key in refs], combine)


def _rounds_note(out: dict, medians: tuple, single: tuple, unit: str, digits: int = 1) -> str:
    """A target's note: the medians of the rounds it reads, and what the systems' own phases measured."""
    n = _get(out, "interleaved", "rounds")
    return (f"{_f(medians[0], digits)} / {_f(medians[1], digits)} {unit}, medians of {n} interleaved rounds "
            f"(the value: the median of each round's ratio); in each system's own phase "
            f"{_f(single[0], digits)} / {_f(single[1], digits)}")


def _between(out: dict, a: tuple[str, str], b: tuple[str, str], single: tuple, unit: str, digits: int = 1,
             field: str = "cpu_us") -> tuple:
    """(value, note) of a ratio between two figures: from the interleaved rounds when the run has
    them, else from the systems' own phases."""
    value = by_round(out, [a, b], ratio, field)
    if value is None:
        return _div(*single), f"{_f(single[0], digits)} / {_f(single[1], digits)} {unit}"
    medians = interleaved(out, *a, field), interleaved(out, *b, field)
    return value, _rounds_note(out, medians, single, unit, digits)


# Chat Completions against the bare proxy; the Responses API's rows against chat on the same gateway.
# The gateway's ratios to the bare proxy read from the interleaved rounds when the run has them.
def gateway_targets(out: dict, key: str) -> list[dict]:
    s = out["systems"]
    g, b, lite = s[key], s.get("bare"), s.get("litellm")
    tag = "" if key == "gateway" else f" [{key}]"
    ev_g, ev_b = cpu_per_event(g), cpu_per_event(b)
    ns_g, ns_b = cpu_per_request_us(g), cpu_per_request_us(b)
    refused = _get(g, "refusal", "cpu_per_refused_us")
    rounds = out if key == "gateway" else {}  # the interleaved rounds measure the gateway of the working tree
    per_event = _between(rounds, ("long", key), ("long", "bare"), (ev_g, ev_b), "µs per event")
    non_stream = _between(rounds, ("plain", key), ("plain", "bare"), (ns_g, ns_b), "µs per request (c=32)", 0)
    stream = _between(rounds, ("stream", key), ("stream", "bare"), (rps(g, "stream"), rps(b, "stream")), "rps", 0,
                      field="rps")
    refusal = _between(rounds, ("refused", key), ("plain", key), (refused, ns_g), "µs per request", 0)
    os_ = g.get("open_streams") or {}
    rss_note = (f"largest process grew {_f(os_.get('rss_largest_growth_mb'), 1)} MB with {os_.get('open')} streams open "
                f"(absolute {_f(os_.get('rss_largest_process_mb'), 1)} MB)")
    if os_.get("open") is not None and os_.get("open") != os_.get("requested"):
        rss_note += f"; only {os_.get('open')} of {os_.get('requested')} opened"
    cap_g, cap_b = capacity_of(g), capacity_of(b)
    paired = _sub(_get(g, "added", "p50_ms"), _get(b, "added", "p50_ms"))
    fid = g.get("fidelity") or {}
    pv_g, pv_b = cpu_per_event(g, "paced_streams"), cpu_per_event(b, "paced_streams")
    paced = out.get("config", {}).get("paced_streams") or {}
    rows = [
        _target(f"CPU per relayed event (long streams) <= 0.9x bare{tag}", per_event[0], 0.9, False, "x", per_event[1]),
        _target(f"CPU per relayed event, paced ({paced.get('streams')} long streams, events on time) <= 0.9x bare{tag}",
                _div(pv_g, pv_b), 0.9, False, "x", f"{_f(pv_g, 1)} / {_f(pv_b, 1)} µs per event"),
        _target(f"CPU per non-stream request <= 1.6x bare{tag}", non_stream[0], 1.6, False, "x", non_stream[1]),
        _target(f"10-event stream throughput >= 0.8x bare (c=32){tag}", stream[0], 0.8, True, "x", stream[1]),
        _target(f"added p50 at c=1 over bare <= 0.1 ms{tag}", _sub(p50_c1(g), p50_c1(b)), 0.1, False, " ms",
                "gateway p50 - bare p50" + (f"; each minus its direct reference: {_f(paired, 3)} ms" if paired is not None else "")),
    ]
    for kind, name in (("non_stream", "non-stream"), ("stream", "stream")):
        rows.append(_target(f"throughput >= 40x LiteLLM, {name} (c=32){tag}", _div(rps(g, kind), rps(lite, kind)), 40, True,
                            "x", f"{_f(rps(g, kind), 0)} / {_f(rps(lite, kind), 1)} rps" if lite else "LiteLLM not in this run"))
    rows += [
        _target(f"refused (429) request CPU <= 0.4x admitted non-stream request{tag}", refusal[0], 0.4, False, "x",
                refusal[1] + "; refused from memory (no store operation)"),
        _target(f"RSS <= 60 MB per 1,000 open streams in a worker{tag}", os_.get("rss_per_1000_streams_mb"), 60, False,
                " MB", rss_note),
        {"target": f"stream bytes out == bytes in except id, model, system_fingerprint{tag}",
         "value": "equal" if fid.get("met") else ("differ" if fid else None), "threshold": "equal",
         "met": fid.get("met") if fid else None,
         "note": "" if fid.get("met") or not fid else str(fid.get("first_difference") or fid.get("error"))[:200]},
    ]
    if key == "gateway" and s.get(TWO_WORKERS):
        rows += two_worker_targets(out, g, s[TWO_WORKERS], b, s.get(BARE_TWO_WORKERS))
    rows.append({"target": f"capacity (streams held at added gap p99 <= 50 ms): gateway / bare{tag}", "value": _div(cap_g, cap_b),
                 "threshold": "reported", "met": "reported", "note": f"{_f(cap_g)} / {_f(cap_b)} streams"})
    rss_row = next(r for r in rows if r["target"].startswith("RSS"))
    if os_.get("open") is not None and os_.get("open") != os_.get("requested") and rss_row["met"]:
        rss_row["met"] = False
    rows += api_targets(g, tag)
    return rows


def two_worker_targets(out: dict, g: dict, two: dict, b: dict, bare_two: dict | None) -> list[dict]:
    """A second worker's cost per request under the same load: as measured, and beside the bare
    proxy's own second worker (two event loops time-sliced on the one core the bench gives the
    system) when the run has it, so what is left is what the gateway's workers add by sharing. From
    the interleaved rounds when the run has them: one phase's ratio swings with how the load's
    connections happen to split between the two workers."""
    rows = []
    phase = {"non_stream": "plain", "stream": "stream"}
    for kind, name in (("non_stream", "non-stream"), ("stream", "stream")):
        single = cpu_per_request_us(two, kind), cpu_per_request_us(g, kind)
        value, note = _between(out, (phase[kind], TWO_WORKERS), (phase[kind], "gateway"), single, "µs per request", 0)
        rows.append(_target(f"2 workers: CPU per {name} request within 10 % of 1 worker's (same load, c=32)",
                            value, 1.1, False, "x", note))
    if not bare_two:
        return rows
    for kind, name in (("non_stream", "non-stream"), ("stream", "stream")):
        gateway = _div(cpu_per_request_us(two, kind), cpu_per_request_us(g, kind))
        bare = _div(cpu_per_request_us(bare_two, kind), cpu_per_request_us(b, kind))
        value, note = _div(gateway, bare), f"gateway {_f(gateway, 3)}, bare proxy {_f(bare, 3)}"
        refs = [(phase[kind], TWO_WORKERS), (phase[kind], "gateway"), (phase[kind], BARE_TWO_WORKERS), (phase[kind], "bare")]
        rounds = by_round(out, refs, lambda g2, g1, b2, b1: g2 / g1 / (b2 / b1))
        if rounds is not None:
            note = (f"the median of each round's (gateway 2 / 1 workers) / (bare proxy 2 / 1 workers) over "
                    f"{_get(out, 'interleaved', 'rounds')} interleaved rounds; in each system's own phase {note}")
            value = rounds
        rows.append(_target(f"2 workers: the gateway's 2-worker / 1-worker CPU per {name} request within 10 % of "
                            "the bare proxy's (same load, c=32)", value, 1.1, False, "x", note))
    return rows


# The gateway's other client APIs, held to chat's costs on the same gateway in the same run.
APIS = {"responses": "Responses API", "messages": "Messages API"}


def _chat_of(paired, own) -> tuple:
    """Chat's figure measured right before a client API's load, or its own phase's in a run from
    before that pairing; and which it is."""
    return (paired, "measured right before") if paired is not None else (own, "its own phase")


def api_targets(g: dict, tag: str = "") -> list[dict]:
    """Each other client API against chat completions on the same gateway in the same run."""
    rows = []
    for api, name in APIS.items():
        r = g.get(api)
        if not r:
            continue
        paired = {"throughput": r.get("chat_paired") or {}}
        for kind, label in (("non_stream", "non-stream request"), ("stream", "10-event stream request")):
            ours = cpu_per_request_us(r, kind)
            chat, when = _chat_of(cpu_per_request_us(paired, kind), cpu_per_request_us(g, kind))
            rows.append(_target(f"{name} CPU per {label} <= 1.3x chat{tag}", _div(ours, chat), 1.3, False, "x",
                                f"{_f(ours, 0)} / {_f(chat, 0)} µs per request (c=32; chat {when})"))
        if "non_stream_stored" in r["throughput"]:
            stored = cpu_per_request_us(r, "non_stream_stored")
            rows.append({"target": f"{name} CPU per stored non-stream request / chat{tag}",
                         "value": _div(stored, cpu_per_request_us(g, "non_stream")), "threshold": "reported", "met": "reported",
                         "note": f"{_f(stored, 0)} µs per request with store: true (one store write each)"})
        ev = cpu_per_event(r)
        ev_chat, when = _chat_of(cpu_per_event(paired["throughput"]), cpu_per_event(g))
        rows.append(_target(f"{name} CPU per relayed event (long streams) <= 1.3x chat{tag}", _div(ev, ev_chat), 1.3,
                            False, "x", f"{_f(ev, 1)} / {_f(ev_chat, 1)} µs per event (chat {when})"))
    return rows


def targets_markdown(out: dict) -> list[str]:
    """The targets of a run as a met / not-met table."""
    lines = ["| target | value | threshold | result | note |", "|---|---:|---:|---|---|"]
    for t in out.get("targets") or []:
        value = t["value"] if isinstance(t["value"], str) else _f(t["value"], 3)
        lines.append(f"| {t['target']} | {value} | {t['threshold']} | {_met(t['met'])} | {t['note']} |")
    return lines


VARIANT_METRICS = (  # (metric, value of a system, decimals shown)
    ("rps non-stream (c=32)", lambda s: rps(s, "non_stream"), 0),
    ("rps stream, 10 tokens (c=32)", lambda s: rps(s, "stream"), 0),
    ("CPU µs / non-stream request", lambda s: cpu_per_request_us(s, "non_stream"), 0),
    ("CPU µs / stream request", lambda s: cpu_per_request_us(s, "stream"), 0),
    ("CPU µs / relayed event (long streams)", cpu_per_event, 1),
    ("CPU µs / relayed event (paced long streams)", lambda s: cpu_per_event(s, "paced_streams"), 1),
    ("long-stream gap p99 ms", lambda s: _get(s, "long_streams", "gaps", "p99_ms"), 2),
    ("latency p50 c=1 ms", p50_c1, 3),
    ("latency p99 c=1 ms", lambda s: _get(s, "latency_c1", "non_stream", "latency", "p99_ms"), 3),
    ("stream TTFB p50 c=1 ms", lambda s: _get(s, "latency_c1", "stream", "ttfb", "p50_ms"), 3),
    ("RSS idle MB (all processes)", lambda s: _get(s, "rss_idle", "total_mb"), 1),
    ("RSS MB per 1,000 open streams", lambda s: _get(s, "open_streams", "rss_per_1000_streams_mb"), 1),
    ("capacity, streams", capacity_of, 0),
    ("CPU µs / refused request", lambda s: _get(s, "refusal", "cpu_per_refused_us"), 0),
)


def variant_ratios(out: dict) -> dict | None:
    """Each metric of each gateway variant, and its ratio to the first gateway of the run."""
    gws = gateway_keys(out)
    if len(gws) < 2:
        return None
    base = gws[0]
    rows = []
    for metric, get, digits in VARIANT_METRICS:
        values = {k: get(out["systems"][k]) for k in gws}
        rows.append({"metric": metric, "values": values, "digits": digits,
                     "ratios": {k: _div(values[k], values[base]) for k in gws[1:]}})
    return {"base": base, "others": gws[1:], "rows": rows}


# ---------------------------------------------------------------- markdown


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _met(flag) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured", "reported": "reported"}[flag]


def _pinning(pinning: dict) -> str:
    if pinning.get("upstream") == "generators":
        return (f"Pinning: load generators + fake upstream on CPUs {pinning['generators']}, system under test on "
                f"CPUs {pinning['systems_and_upstream']}")
    return (f"Pinning: load generators on CPUs {pinning['generators']}, system under test + fake upstream on "
            f"CPUs {pinning['systems_and_upstream']}")


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
        _pinning(cfg['pinning']) + f", niceness {cfg.get('nice', 0)}. Throughput: {gen}, c={cfg['concurrency']}, "
        f"{cfg['duration_s']} s per phase after {cfg['warmup_s']} s warm-up; latency and TTFB: aiohttp-loadgen, "
        f"c=1, {cfg['latency_duration_s']} s; open streams: aiohttp-loadgen.",
        "",
        "Added latency = the system's percentile minus the same percentile of the direct upstream measured "
        "just before it (paired runs, shown in brackets).",
        "",
        f"| system | rps non-stream ({gen}) | rps stream, {cfg.get('stream_chunks', 8)} tokens ({gen}) "
        "| p50 / p99 c=1 ms [direct] | added p50 / p99 ms "
        "| stream TTFB p50 ms | TTFB added p50 ms | CPU s / 1k req (non-stream / stream) "
        f"| RSS idle MB | RSS {cfg['open_streams']} open streams MB (all procs / largest) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in keys(out):
        s = out["systems"].get(key)
        if s is None:
            reason = out.get("skipped", {}).get(key)
            if reason:
                lines.append(f"| {label_of(key)} | skipped: {reason.splitlines()[0][:160]} |||||||||")
            continue
        lat = _get(s, "latency_c1", "non_stream", "latency") or {}
        os_ = s.get("open_streams") or {}
        opened = os_.get("open_at_release")
        rss_cell = (f"{_f(os_.get('rss_total_mb'), 1)} / {_f(os_.get('rss_largest_process_mb'), 1)}"
                    + (f" ({opened} open)" if opened is not None and opened != os_.get("requested") else ""))
        if "error" in os_:
            rss_cell = "error"
        lines.append(
            f"| {label_of(key)} | {_f(rps(s, 'non_stream'), 0)} | {_f(rps(s, 'stream'), 0)} "
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
        for key in keys(out):
            s = out["systems"].get(key)
            if s and s.get("latency_c1_wrk"):
                w = s["latency_c1_wrk"]["latency"]
                lines.append(f"| {label_of(key)} | {_f(w['p50_ms'], 3)} / {_f(w['p99_ms'], 3)} "
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
    for key in keys(out):
        s = out["systems"].get(key)
        if not s:
            continue
        cells = []
        for field in ("system_s", "upstream_s", "generator_s", "other_processes_s"):
            a = _get(s, "throughput", "non_stream", "cpu", field)
            b = _get(s, "throughput", "stream", "cpu", field)
            cells.append(f"{_f(a, 2)} / {_f(b, 2)}")
        lines.append(f"| {label_of(key)} | " + " | ".join(cells) + " |")
    r = out["ratios"]
    lines += ["", "## Ratios", "",
              "| ratio | non-stream | stream |", "|---|---:|---:|"]
    for name, value in r.items():
        if isinstance(value, dict):
            lines.append(f"| {name.replace('_', ' ')} | {_f(value.get('non_stream'), 3)} | {_f(value.get('stream'), 3)} |")
    lines += streams_markdown(out)
    if out.get("variants"):
        lines += variants_markdown(out["variants"])
    lines += interleaved_markdown(out.get("interleaved"))
    lines += ["", "## Targets", "", *targets_markdown(out)]
    cc = out.get("client_comparison") or {}
    if cc:
        b = out["systems"].get("bare")
        lines += ["", "## Upstream client of the bare proxy (same Sanic server, c=32)", "",
                  f"| client | rps non-stream ({gen}) | rps stream ({gen}) | CPU s / 1k req non-stream |", "|---|---:|---:|---:|"]
        rows = [("aiohttp", b)] + list(cc.items()) if b else list(cc.items())
        for client, s in rows:
            lines.append(f"| {client} | {_f(rps(s, 'non_stream'), 0)} | {_f(rps(s, 'stream'), 0)} "
                         f"| {_f(_get(s, 'throughput', 'non_stream', 'cpu', 'per_1000_requests_s'), 3)} |")
    for key in gateway_keys(out):
        fid = _get(out["systems"][key], "fidelity")
        if fid:
            lines += ["", f"## Stream fidelity ({key})", "", "```", json.dumps(fid, indent=1)[:3000], "```"]
    micro = out.get("micro")
    if micro and "error" not in micro:
        lines += ["", micro_markdown(micro)]
    prof = _get(out["systems"].get("gateway"), "profile")
    if prof:
        lines += ["", "## Gateway profile (py-spy, worker process, under c=32 load)", "",
                  "Samples of the thread holding the GIL (`--gil`), the fake upstream moved off the worker's "
                  "CPU meanwhile, so that a sample is the worker's own work.", ""]
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


ROUND_PHASES = {"plain": "non-stream, c=32", "stream": "10-event stream, c=32", "refused": "refused (429), c=32",
                "long": "long streams, per relayed event"}


def interleaved_markdown(il: dict | None) -> list[str]:
    """The interleaved rounds: each system's median, and every round, per phase."""
    if not il:
        return []
    lines = ["", "## Interleaved rounds", ""]
    if il.get("error"):
        return lines + [il["error"][:300]]
    lines += [f"The systems started afresh and measured again, {il['rounds']} rounds of {il['seconds']} s a phase, "
              "each round in the order opposite the last (bench/ab.py); the targets between systems read from "
              "these medians.", "",
              "| phase | system | CPU µs (median) | rps (median) | CPU µs, each round |", "|---|---|---:|---:|---|"]
    for phase, by_system in il["phases"].items():
        for key, m in by_system.items():
            rounds = ", ".join(_f(c, 1) for c in m["cpu_rounds_us"])
            lines.append(f"| {ROUND_PHASES.get(phase, phase)} | {label_of(key)} | {_f(m['cpu_us'], 1)} "
                         f"| {_f(m['rps'], 0)} | {rounds} |")
    return lines


def streams_markdown(out: dict) -> list[str]:
    """Long streams, RSS per open stream, refusals and capacity: one table each."""
    cfg, systems = out["config"], out["systems"]
    present = [k for k in keys(out) if k in systems]
    lines = []
    for phase, title in (("long_streams", "Long streams"), ("paced_streams", "Paced long streams")):
        lines += _long_streams_table(cfg, systems, present, phase, title)
    if any(_get(systems[k], "open_streams", "rss_per_1000_streams_mb") is not None for k in present):
        lines += ["", f"## Memory per open stream ({cfg['open_streams']} streams held open)", "",
                  "The largest process of each system (the worker): its RSS just before the streams opened, with all "
                  "of them open, and the growth scaled to 1,000 streams.", "",
                  "| system | largest process before MB | with streams open MB | growth MB | MB per 1,000 open streams "
                  "| all processes with streams open MB |", "|---|---:|---:|---:|---:|---:|"]
        for key in present:
            o = systems[key].get("open_streams") or {}
            if o.get("rss_per_1000_streams_mb") is None:
                continue
            lines.append(f"| {label_of(key)} | {_f(_get(o, 'rss_before', 'largest_process_mb'), 1)} "
                         f"| {_f(o.get('rss_largest_process_mb'), 1)} | {_f(o.get('rss_largest_growth_mb'), 1)} "
                         f"| {_f(o.get('rss_per_1000_streams_mb'), 1)} | {_f(o.get('rss_total_mb'), 1)} |")
    refusing = [k for k in present if systems[k].get("refusal")]
    if refusing:
        lines += ["", "## Refused requests (a key whose per-minute limit is spent, c=32 non-stream)", "",
                  "| system | refused / s | CPU µs / refused | CPU µs / admitted non-stream | ratio | statuses before / after |",
                  "|---|---:|---:|---:|---:|---|"]
        for key in refusing:
            r = systems[key]["refusal"]
            admitted = cpu_per_request_us(systems[key])
            lines.append(f"| {label_of(key)} | {_f(r.get('refused_per_s'), 0)} | {_f(r.get('cpu_per_refused_us'), 0)} "
                         f"| {_f(admitted, 0)} | {_f(_div(r.get('cpu_per_refused_us'), admitted), 3)} "
                         f"| {r.get('first_statuses')} / {r.get('status_after')} |")
    if any(systems[k].get("capacity") for k in present):
        lines += capacity_markdown(out, present)
    return lines


def _long_streams_table(cfg: dict, systems: dict, present: list[str], phase: str, title: str) -> list[str]:
    """One long-stream phase's table: events, CPU per event, gaps, for each system that ran it."""
    lines: list[str] = []
    ls_cfg = cfg.get(phase) or {}
    if any(systems[k].get(phase) for k in present):
        lines += ["", f"## {title} ({ls_cfg.get('streams')} concurrent, {ls_cfg.get('chunks')} tokens "
                  f"{_f((ls_cfg.get('delay_s') or 0) * 1000, 0)} ms apart, started for {cfg['duration_s']} s)", "",
                  "CPU per relayed event = the system's CPU seconds during the phase / the SSE `data:` events "
                  "the clients received. Gaps: between consecutive events of a stream, as the client saw them; "
                  "added = gap - the upstream's spacing. Offered: "
                  f"{_f(_offered(ls_cfg), 0)} events/s; a system that delivers fewer is saturated (it shares its "
                  "CPU with the fake upstream), and its events arrive late, several per read.", "",
                  "| system | events received | events/s | CPU µs / event | gap p50 / p99 / max ms | added gap p99 ms "
                  "| failed / cut streams | load generator CPU share |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key in present:
            r = systems[key].get(phase)
            if not r:
                continue
            g = r.get("gaps") or {}
            lines.append(f"| {label_of(key)} | {_f(r.get('events'))} | {_f(r.get('events_per_s'), 0)} "
                         f"| {_f(r.get('cpu_per_event_us'), 1)} | {_f(g.get('p50_ms'), 2)} / {_f(g.get('p99_ms'), 2)} / "
                         f"{_f(g.get('max_ms'), 1)} | {_f(g.get('added_p99_ms'), 2)} | {_f(r.get('failed'))} / "
                         f"{_f(r.get('cut_streams'))} | {_f(r.get('client_cpu_share'), 2)} |")
    return lines


def _offered(ls_cfg: dict):
    streams, delay = ls_cfg.get("streams"), ls_cfg.get("delay_s")
    return streams / delay if streams and delay else None


def capacity_markdown(out: dict, present: list[str]) -> list[str]:
    c = out["config"].get("capacity") or {}
    lines = ["", f"## Capacity (streams of {c.get('chunks')} events at {_f(1 / c['delay_s'], 0) if c.get('delay_s') else '–'}"
             f"/s, added gap p99 <= {_f(c.get('bound_ms'), 0)} ms)", "",
             f"Doubling from {c.get('start')} then bisection to 10 %, at most {c.get('max')} streams and "
             f"{_f(c.get('budget_s'), 0)} s per system; each probe opens its streams, waits {_f(c.get('settle_s'), 1)} s, measures "
             f"{_f(c.get('window_s'), 1)} s. Stopped: converged, budget (the figure is a lower bound), maximum. "
             "A probe fails when a stream fails or does not open in time, or the added gap p99 exceeds the bound.", "",
             "A failed probe is run once more; it counts as failed only if both fail. Per probe: streams (added gap p99 ms, "
             "load generator CPU share, CPU s other processes on the machine used during it); ✗ = failed.", "",
             "| system | streams held | first failed | stopped | search s | probes |",
             "|---|---:|---:|---|---:|---|"]
    for key in present:
        r = out["systems"][key].get("capacity")
        if not r:
            continue
        probes = ", ".join(f"{p['streams']}{'' if p['passed'] else ' ✗'} ({_f(p.get('added_p99_ms'), 1)}, "
                           f"{_f(p.get('client_cpu_share'), 2)}, {_f(p.get('other_processes_s'), 1)})"
                           for p in r.get("probes", []))
        stopped = r.get("stopped", "") + (", load generator busy" if r.get("client_bound") else "")
        lines.append(f"| {label_of(key)} | {_f(r.get('streams'))} | {_f(r.get('first_failed'))} | {stopped} "
                     f"| {_f(r.get('seconds'), 0)} | {probes} |")
    return lines


def variants_markdown(v: dict) -> list[str]:
    others = v["others"]
    lines = ["", f"## Gateway variants (ratio = variant / {v['base']})", "",
             f"| metric | {v['base']} | " + " | ".join(f"{k} | ratio" for k in others) + " |",
             "|---|---:|" + "---:|---:|" * len(others)]
    for row in v["rows"]:
        d = row.get("digits", 3)
        cells = [_f(_num(row["values"][v["base"]]), d)] + [
            f"{_f(_num(row['values'][k]), d)} | {_f(row['ratios'][k], 3)}" for k in others]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return lines


def _num(value):
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


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
    present = [k for k in keys(out) if k in out["systems"]]
    if not present:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.38
    xs = range(len(present))
    for offset, kind, label in ((-width / 2, "non_stream", "non-stream"), (width / 2, "stream", "stream")):
        values = [rps(out["systems"][k], kind) or 0 for k in present]
        bars = ax1.bar([x + offset for x in xs], values, width, label=label)
        ax1.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax1.set_xticks(list(xs), [label_of(k).replace(" ", "\n", 1) for k in present], fontsize=8)
    ax1.set_ylabel("requests / s")
    ax1.set_title(f"Throughput at c={out['config']['concurrency']} ({out['config']['throughput_generator']})")
    ax1.legend()
    lkeys = [k for k in present if k != "direct"]
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
    ax2.set_xticks(list(range(len(lkeys))), [label_of(k).replace(" ", "\n", 1) for k in lkeys], fontsize=8)
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
