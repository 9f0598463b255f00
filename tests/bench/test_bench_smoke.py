"""A seconds-long smoke of the bench harness: it starts the fake upstream, the bare proxy, the
gateway (through Chat Completions, the Responses API and the Messages API) and the gateway of HEAD
(a git worktree), runs every phase with tiny numbers (long streams, refusals, one capacity probe),
and writes its JSON and markdown files. The targets are for the bench report, not for CI: nothing
here asserts them."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from bench import capacity, fidelity, procs, report, streams, variants, wrk

from tests.support import ROOT


def test_harness_runs_and_writes_its_files(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--duration", "0.5", "--generator", "aiohttp",
         "--systems", "direct,bare,gateway,gateway@HEAD",
         "--streams", "10", "--long-streams", "4", "--paced-streams", "2", "--long-chunks", "20", "--capacity-start", "4", "--capacity-max", "4",
         "--capacity-window", "0.5", "--capacity-budget", "10", "--rounds", "1", "--round-seconds", "1",
         "--no-install", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result_file] = list(out.glob("*.json"))
    [md_file] = list(out.glob("*.md"))
    result = json.loads(result_file.read_text())
    assert set(result["systems"]) == {"direct", "bare", "gateway", "gateway@HEAD"}, result.get("skipped")
    for key, system in result["systems"].items():
        for kind in ("non_stream", "stream"):
            assert system["throughput"][kind]["rps"] > 0, (key, kind, system["throughput"][kind])
        assert system["latency_c1"]["non_stream"]["latency"]["n"] > 0
        assert system["latency_c1"]["stream"]["ttfb"]["p50_ms"] > 0
        assert system["open_streams"]["open"] == 10, system["open_streams"]
        assert system["open_streams"]["rss_total_mb"] > 0
        assert system["open_streams"]["rss_per_1000_streams_mb"] is not None
        # A few streams for half a second may use less CPU than /proc's clock tick (10 ms) shows.
        long = system["long_streams"]
        assert long["events"] >= 4 * 20 and long["failed"] == 0, (key, long)
        assert long["cpu_per_event_us"] >= 0 and long["gaps"]["p50_ms"] >= 10, (key, long)
        paced = system["paced_streams"]
        assert paced["events"] >= 2 * 20 and paced["failed"] == 0 and paced["cpu_per_event_us"] >= 0, (key, paced)
        assert system["capacity"]["probes"][0]["streams"] == 4, (key, system["capacity"])
    assert result["systems"]["gateway"]["throughput"]["non_stream"]["cpu"]["per_1000_requests_s"] > 0
    assert result["systems"]["gateway"]["fidelity"]["met"] is True, result["systems"]["gateway"]["fidelity"]
    for api, kinds in (("responses", ("non_stream", "non_stream_stored", "stream")), ("messages", ("non_stream", "stream"))):
        phase = result["systems"]["gateway"][api]
        for kind in kinds:
            assert phase["throughput"][kind]["rps"] > 0, (api, kind, phase["throughput"][kind])
        assert phase["long_streams"]["events"] >= 4 * 20 and phase["long_streams"]["failed"] == 0, (api, phase["long_streams"])
        assert {kind: phase["chat_paired"][kind]["rps"] > 0 for kind in ("non_stream", "stream")} == {
            "non_stream": True, "stream": True}, phase["chat_paired"]
        assert phase["chat_paired"]["long_streams"]["events"] >= 4 * 20, phase["chat_paired"]
    for name, rows in (("Responses API", 8), ("Messages API", 6)):  # gateway and gateway@HEAD
        measured = {t["target"]: t["value"] for t in result["targets"] if t["target"].startswith(name)}
        # Chat's 80 paired long-stream events may read 0 CPU (below /proc's clock tick): no ratio then.
        assert len(measured) == rows and all(v is not None for k, v in measured.items() if "relayed event" not in k), measured
        assert all(v is None or v >= 0 for v in measured.values()), measured
    for key in ("gateway", "gateway@HEAD"):
        refusal = result["systems"][key]["refusal"]
        assert refusal["status_after"] == 429 and refusal["refused"] > 0 and refusal["cpu_per_refused_us"] > 0, refusal
    rounds = result["interleaved"]
    per_event = next(t for t in result["targets"] if t["target"] == "CPU per relayed event (long streams) <= 0.9x bare")
    if wrk.find() is None:  # the rounds run wrk; --no-install leaves it out
        assert "wrk" in rounds["error"] and "interleaved" not in per_event["note"], (rounds, per_event)
    else:
        assert {phase: sorted(by) for phase, by in rounds["phases"].items()} == {
            "plain": ["bare", "gateway"], "stream": ["bare", "gateway"], "refused": ["gateway"],
            "long": ["bare", "gateway"]}, rounds
        assert all(m["rps"] > 0 and len(m["cpu_rounds_us"]) == 1 for by in rounds["phases"].values() for m in by.values())
        if all(m["cpu_rounds_us"][0] > 0 for m in rounds["phases"]["long"].values()):  # else below a clock tick
            assert "medians of 1 interleaved rounds" in per_event["note"], per_event
    assert result["systems"]["gateway@HEAD"]["info"]["commit"], result["systems"]["gateway@HEAD"]["info"]
    assert {t["target"] for t in result["targets"]} and result["ratios"]["gateway_over_bare"]["non_stream"] > 0
    assert result["variants"]["base"] == "gateway" and result["variants"]["others"] == ["gateway@HEAD"]
    text = md_file.read_text()
    for heading in ("## Targets", "## Long streams", "## Capacity", "## Refused requests", "## Gateway variants",
                    "## Interleaved rounds"):  # with what the rounds measured, or why they were skipped
        assert heading in text, heading
    assert "| Zowy gateway |" in text and "| Zowy gateway@HEAD |" in text
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "zowy-bench-" not in worktrees, worktrees


def test_wrk_summary_is_parsed():
    line = ('WRKJSON {"requests":1000,"duration_us":2000000,"bytes":5,"connect":0,"read":0,"write":0,'
            '"status":10,"timeout":0,"p50_us":400,"p90_us":800,"p99_us":1500,"mean_us":450.5,"max_us":9000}')
    parsed = wrk.parse("Running 2s test\n" + line + "\n")
    assert parsed["ok"] == 990 and parsed["rps"] == 495.0 and parsed["errors"] == 10
    assert parsed["latency"]["p99_ms"] == 1.5


def test_fidelity_compares_bytes_modulo_identity_tokens():
    upstream = (b'data: {"id":"up-1","model":"gpt-x","system_fingerprint":"fp_1","choices":[{"delta":{"content":"a"}}]}\n\n'
                b'data: {"id":"up-1","model":"gpt-x","system_fingerprint":"fp_1","choices":[{"delta":{"content":"b"}}]}\n\n'
                b"data: [DONE]\n\n")
    ours = upstream.replace(b'"up-1"', b'"chatcmpl-9"').replace(b'"gpt-x"', b'"zowy-1"').replace(b'"fp_1"', b"null")
    assert fidelity.compare(upstream, ours, ("gpt-x",))["met"] is True
    changed = ours.replace(b'"b"', b'"B"')
    result = fidelity.compare(upstream, changed, ("gpt-x",))
    assert result["met"] is False and result["first_difference"]["event"] == 1
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert fidelity.dechunk(chunked)[1] == b"hello world"


def test_markdown_renders_without_optional_systems():
    out = {
        "started_at": "now", "machine": {"cpu_model": "cpu", "cores": 2, "os": "linux", "python": "3", "git": "x",
                                         "packages": {}, "tools": {}},
        "config": {"throughput_generator": "wrk", "pinning": {"generators": [0], "systems_and_upstream": [1]},
                   "concurrency": 32, "duration_s": 1, "warmup_s": 1, "latency_duration_s": 1, "open_streams": 10},
        "systems": {"direct": {"throughput": {"non_stream": {"rps": 100.0}, "stream": {"rps": 50.0}}},
                    "gateway": {"throughput": {"non_stream": {"rps": 40.0}}},
                    "gateway@HEAD~1": {"throughput": {"non_stream": {"rps": 20.0}}}},
        "skipped": {"litellm": "not installed"},
    }
    report.analyse(out)
    text = report.markdown(out)
    assert "skipped: not installed" in text and "not measured" in text
    assert out["variants"]["rows"][0]["ratios"]["gateway@HEAD~1"] == 0.5 and "## Gateway variants" in text
    assert "system under test + fake upstream on CPUs [1]" in text
    out["config"]["pinning"]["upstream"] = "generators"
    assert "load generators + fake upstream on CPUs [0], system under test on CPUs [1]" in report.markdown(out)


def test_event_counter_counts_data_events_across_reads():
    counter = streams.EventCounter()
    assert counter.feed(b'data: {"a":1}\n\ndata: {"b"') == 1
    assert counter.feed(b':2}\n') == 0
    assert counter.feed(b"\n: comment\n\ndata: [DONE]\r\n\r\n") == 2


def test_gaps_percentiles_and_added():
    gaps = streams.Gaps()
    for ms in range(1, 101):
        gaps.add(0.020 + ms / 1000 / 10)
    summary = gaps.summary(0.020)
    assert summary["n"] == 100 and abs(summary["p99_ms"] - 29.9) < 0.06 and abs(summary["added_p99_ms"] - 9.9) < 0.06


def test_capacity_search_doubles_then_bisects_within_the_budget():
    held = 300

    def probe(n):
        return {"ready": n, "failed": 0, "gaps": {"added_p99_ms": 10.0 if n <= held else 80.0}}

    result = capacity.search(probe, start=50, maximum=4000, budget_s=60, bound_ms=50)
    assert [p["streams"] for p in result["probes"]][:4] == [50, 100, 200, 400]
    assert result["stopped"] == "converged" and held - held // 10 <= result["streams"] <= held
    assert result["first_failed"] - result["streams"] <= max(1, result["streams"] // 10)
    ticks = iter(range(0, 1000, 7))
    short = capacity.search(probe, start=50, maximum=4000, budget_s=20, bound_ms=50, clock=lambda: next(ticks))
    assert short["stopped"] == "budget" and len(short["probes"]) < 4
    assert capacity.search(probe, start=1, maximum=4, budget_s=60, bound_ms=50)["stopped"] == "maximum"
    stalls = iter([True])

    def stalled_once(n):
        return {"ready": n, "failed": 0, "gaps": {"added_p99_ms": 300.0 if next(stalls, False) else 10.0}}

    retried = capacity.search(stalled_once, start=4, maximum=8, budget_s=60, bound_ms=50)
    assert [(p["streams"], p["passed"]) for p in retried["probes"]] == [(4, False), (4, True), (8, True)]
    assert retried["streams"] == 8


def test_gateway_variants_are_named_by_revision():
    assert variants.revision_of("gateway@HEAD~3") == "HEAD~3" and variants.revision_of("gateway") is None
    assert variants.is_gateway("gateway@abc") and not variants.is_gateway("bare")


def test_targets_compare_with_bare_litellm_and_one_worker_and_name_what_was_not_met():
    def system(cpu_us: float, rps_ns: float, rps_s: float, cpu_stream_us: float | None = None) -> dict:
        return {"throughput": {"non_stream": {"rps": rps_ns, "cpu": {"per_1000_requests_s": cpu_us / 1000}},
                               "stream": {"rps": rps_s, "cpu": {"per_1000_requests_s": (cpu_stream_us or 2 * cpu_us) / 1000}}}}

    bare = {**system(200, 4000, 2000), "long_streams": {"cpu_per_event_us": 20.0},
            "paced_streams": {"cpu_per_event_us": 22.0},
            "latency_c1": {"non_stream": {"latency": {"p50_ms": 0.50}}}}
    gateway = {**system(300, 2000, 1800), "long_streams": {"cpu_per_event_us": 19.0},
               "paced_streams": {"cpu_per_event_us": 17.6},
               "latency_c1": {"non_stream": {"latency": {"p50_ms": 0.65}}},
               "refusal": {"cpu_per_refused_us": 60.0}, "fidelity": {"met": True},
               "open_streams": {"rss_per_1000_streams_mb": 30.0, "open": 10, "requested": 10}}
    out = {"systems": {"bare": bare, "gateway": gateway, "gateway-2w": system(345, 2100, 1900, 560),
                       "litellm": system(15000, 40, 50)}, "config": {"paced_streams": {"streams": 200}},
           "conformance": {"passed": 90, "failed": 1, "summary": "1 failed, 90 passed"}}
    out["targets"] = report.targets(out)
    rows = {t["target"]: t for t in out["targets"]}
    assert rows["CPU per relayed event (long streams) <= 0.9x bare"]["met"] is False  # 0.95
    assert rows["CPU per relayed event, paced (200 long streams, events on time) <= 0.9x bare"]["met"] is True  # 0.8
    assert rows["CPU per non-stream request <= 1.6x bare"]["met"] is True  # 1.5
    assert rows["10-event stream throughput >= 0.8x bare (c=32)"]["met"] is True  # 0.9
    assert rows["added p50 at c=1 over bare <= 0.1 ms"]["met"] is False  # 0.15 ms
    assert rows["throughput >= 40x LiteLLM, non-stream (c=32)"]["met"] is True  # 50x
    assert rows["throughput >= 40x LiteLLM, stream (c=32)"]["met"] is False  # 36x
    assert rows["refused (429) request CPU <= 0.4x admitted non-stream request"]["met"] is True  # 0.2
    assert rows["stream bytes out == bytes in except id, model, system_fingerprint"]["met"] is True
    two = {k: v for k, v in rows.items() if k.startswith("2 workers")}
    assert [t["met"] for t in two.values()] == [False, True]  # 1.15x non-stream, 0.93x stream
    assert rows["every conformance recording passes (tests/conformance/test_recordings.py)"]["met"] is False
    table = "\n".join(report.targets_markdown(out))
    assert table.count("**not met**") == 5 and "| 2 workers: CPU per non-stream request" in table


def test_a_client_api_is_divided_by_chat_measured_right_before_it():
    def load(cpu_us: float) -> dict:
        return {"rps": 1000, "cpu": {"per_1000_requests_s": cpu_us / 1000}}

    gateway = {"throughput": {"non_stream": load(100), "stream": load(150)}, "long_streams": {"cpu_per_event_us": 12.0},
               "responses": {"throughput": {"non_stream": load(140), "stream": load(210)},
                             "long_streams": {"cpu_per_event_us": 17.0},
                             "chat_paired": {"non_stream": load(120), "stream": load(170),
                                             "long_streams": {"cpu_per_event_us": 15.0}}},
               "messages": {"throughput": {"non_stream": load(125), "stream": load(180)},
                            "long_streams": {"cpu_per_event_us": 13.0}}}
    rows = {t["target"]: t for t in report.api_targets(gateway)}
    responses = rows["Responses API CPU per 10-event stream request <= 1.3x chat"]
    assert round(responses["value"], 3) == round(210 / 170, 3) and responses["met"] is True
    assert "chat measured right before" in responses["note"]
    assert round(rows["Responses API CPU per non-stream request <= 1.3x chat"]["value"], 3) == round(140 / 120, 3)
    messages = rows["Messages API CPU per non-stream request <= 1.3x chat"]  # a run without the pairing
    assert messages["value"] == 1.25 and "chat its own phase" in messages["note"]
    per_event = rows["Responses API CPU per relayed event (long streams) <= 1.3x chat"]
    assert per_event["value"] == round(17 / 15, 3) and per_event["met"] is True  # 17 / 12 = 1.42 against chat's own phase
    assert rows["Messages API CPU per relayed event (long streams) <= 1.3x chat"]["value"] == round(13 / 12, 3)


def test_a_second_worker_is_also_measured_against_the_bare_proxys_second_worker():
    def system(cpu_us: float, cpu_stream_us: float) -> dict:
        return {"throughput": {"non_stream": {"rps": 1000, "cpu": {"per_1000_requests_s": cpu_us / 1000}},
                               "stream": {"rps": 800, "cpu": {"per_1000_requests_s": cpu_stream_us / 1000}}}}

    out = {"systems": {"bare": system(200, 300), "bare-2w": system(230, 300),
                       "gateway": system(300, 500), "gateway-2w": system(360, 600)}}
    rows = {t["target"]: t for t in report.targets(out) if t["target"].startswith("2 workers")}
    raw = [t for name, t in rows.items() if "of the bare proxy's" not in name]
    against_bare = [t for name, t in rows.items() if "of the bare proxy's" in name]
    assert [(round(t["value"], 3), t["met"]) for t in raw] == [(1.2, False), (1.2, False)]
    # 1.2 / 1.15 non-stream, 1.2 / 1.0 stream
    assert [(round(t["value"], 3), t["met"]) for t in against_bare] == [(1.043, True), (1.2, False)]
    assert "bare proxy 1.150" in against_bare[0]["note"]


def test_the_ratios_between_systems_read_from_the_interleaved_rounds_when_the_run_has_them():
    def system(cpu_us: float, cpu_stream_us: float, event_us: float | None = None) -> dict:
        out = {"throughput": {"non_stream": {"rps": 1000, "cpu": {"per_1000_requests_s": cpu_us / 1000}},
                              "stream": {"rps": 800, "cpu": {"per_1000_requests_s": cpu_stream_us / 1000}}}}
        if event_us is not None:
            out["long_streams"] = {"cpu_per_event_us": event_us}
        return out

    def rounds(cpu: list[float], rps: list[float] | None = None) -> dict:
        rps = rps or [1000.0] * len(cpu)
        return {"cpu_us": statistics.median(cpu), "rps": statistics.median(rps), "cpu_rounds_us": cpu, "rps_rounds": rps}

    gateway = {**system(120, 200, 19.0), "refusal": {"cpu_per_refused_us": 50.0}}
    out = {"systems": {"bare": system(100, 150, 18.0), "bare-2w": system(150, 180), "gateway": gateway,
                       "gateway-2w": system(190, 260)},
           "interleaved": {"rounds": 3, "seconds": 6, "phases": {
               "plain": {"gateway": rounds([110, 130, 160]), "bare": rounds([100, 125, 150]),
                         "gateway-2w": rounds([130, 140, 170]), "bare-2w": rounds([120, 130, 160])},
               "stream": {"gateway": rounds([170, 170, 170], [3000, 2900, 3100]),
                          "bare": rounds([150, 150, 150], [3400, 3500, 3300])},
               "refused": {"gateway": rounds([42, 44, 46])},
               # each median from another round: their ratio (16.3 / 17.8) pairs figures of two rounds
               "long": {"gateway": rounds([16.8, 16.3, 14.7]), "bare": rounds([20.2, 17.8, 17.5])}}}}
    rows = {t["target"]: t for t in report.targets(out)}
    per_event = rows["CPU per relayed event (long streams) <= 0.9x bare"]
    assert per_event["value"] == round(statistics.median([16.8 / 20.2, 16.3 / 17.8, 14.7 / 17.5]), 3) == 0.84
    assert per_event["met"] is True  # the medians' ratio would read 0.916, the systems' own phases 1.056
    assert "19.0 / 18.0" in per_event["note"] and "16.3 / 17.8" in per_event["note"], per_event["note"]
    assert rows["CPU per non-stream request <= 1.6x bare"]["value"] == round(statistics.median([1.1, 1.04, 160 / 150]), 3)
    assert rows["10-event stream throughput >= 0.8x bare (c=32)"]["value"] == round(
        statistics.median([3000 / 3400, 2900 / 3500, 3100 / 3300]), 3)
    assert rows["refused (429) request CPU <= 0.4x admitted non-stream request"]["value"] == round(
        statistics.median([42 / 110, 44 / 130, 46 / 160]), 3)
    two = {t["target"]: t["value"] for t in rows.values() if t["target"].startswith("2 workers")}
    relative = [g2 / g1 / (b2 / b1) for g2, g1, b2, b1 in zip([130, 140, 170], [110, 130, 160], [120, 130, 160],
                                                               [100, 125, 150])]
    # the stream phase's rounds lack the 2-worker systems: those rows read the systems' own phases
    assert list(two.values()) == [round(statistics.median([130 / 110, 140 / 130, 170 / 160]), 3), round(260 / 200, 3),
                                  round(statistics.median(relative), 3), round(1.3 / 1.2, 3)]


@pytest.mark.processes
def test_the_bare_proxy_runs_with_two_workers_and_ends_on_sigterm(tmp_path):
    port = procs.free_port()
    proc = procs.spawn("bare-2w", [sys.executable, "-m", "bench.baselines.bare_proxy", "--port", str(port),
                                   "--upstream", "http://127.0.0.1:9/v1", "--workers", "2"], tmp_path)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        workers = procs.tree(proc.pid)
        assert len(workers) >= 3, proc.log()  # Sanic's manager and its two workers
    finally:
        proc.stop()
    assert proc.popen.returncode is not None
    deadline = time.monotonic() + 10
    while (left := [pid for pid in workers if pid != proc.pid and _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
