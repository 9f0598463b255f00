"""A seconds-long smoke of the bench harness: it starts the fake upstream, the bare proxy and the
gateway, measures non-zero throughput, and writes its JSON and markdown files. The issue-6 targets
are for the bench report, not for CI: nothing here asserts them."""
from __future__ import annotations

import json
import subprocess
import sys

from bench import fidelity, report, wrk

from tests.support import ROOT


def test_harness_runs_and_writes_its_files(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--duration", "1", "--systems", "direct,bare,gateway",
         "--streams", "10", "--no-install", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result_file] = list(out.glob("*.json"))
    [md_file] = list(out.glob("*.md"))
    result = json.loads(result_file.read_text())
    assert set(result["systems"]) == {"direct", "bare", "gateway"}, result.get("skipped")
    for key, system in result["systems"].items():
        for kind in ("non_stream", "stream"):
            assert system["throughput"][kind]["rps"] > 0, (key, kind, system["throughput"][kind])
        assert system["latency_c1"]["non_stream"]["latency"]["n"] > 0
        assert system["latency_c1"]["stream"]["ttfb"]["p50_ms"] > 0
        assert system["open_streams"]["open"] == 10, system["open_streams"]
        assert system["open_streams"]["rss_total_mb"] > 0
    assert result["systems"]["gateway"]["throughput"]["non_stream"]["cpu"]["per_1000_requests_s"] > 0
    assert result["systems"]["gateway"]["fidelity"]["met"] is True, result["systems"]["gateway"]["fidelity"]
    assert {t["target"] for t in result["targets"]} and result["ratios"]["gateway_over_bare"]["non_stream"] > 0
    text = md_file.read_text()
    assert "| Zowy gateway |" in text and "## Targets (issue 6)" in text


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
        "systems": {"direct": {"throughput": {"non_stream": {"rps": 100.0}, "stream": {"rps": 50.0}}}},
        "skipped": {"litellm": "not installed"},
    }
    report.analyse(out)
    text = report.markdown(out)
    assert "skipped: not installed" in text and "not measured" in text
