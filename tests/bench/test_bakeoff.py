"""The transport bake-off's system keys and its tables over several runs."""
from __future__ import annotations

from bench import bakeoff
from bench.bakeoff import Candidate


def test_system_keys_name_a_place_a_transport_and_an_upstream():
    assert bakeoff.parse("bare-h1") == Candidate("bare", "h1", False)
    assert bakeoff.parse("gateway-aiohttp-tuned-tls") == Candidate("gateway", "aiohttp-tuned", True)
    assert bakeoff.parse("bare-tls") == Candidate("bare", None, True)
    assert bakeoff.parse("gateway-tls") == Candidate("gateway", None, True)
    for other in ("bare", "gateway", "gateway@HEAD~1", "bare-httpx", "nginx", "gateway-nope"):
        assert bakeoff.parse(other) is None
    assert bakeoff.reference("gateway-h1-tls") == "gateway-tls" and bakeoff.reference("bare-pyreqwest") == "bare"


def system(cpu_ms_per_1000: float, event_us: float, rps: float) -> dict:
    return {"throughput": {"non_stream": {"cpu": {"per_1000_requests_s": cpu_ms_per_1000}, "rps": rps,
                                          "latency": {"p99_ms": 10.0}},
                           "stream": {"cpu": {"per_1000_requests_s": cpu_ms_per_1000 * 2}, "rps": rps / 2}},
            "long_streams": {"cpu_per_event_us": event_us}}


def test_ratios_compare_with_the_reference_of_the_same_run():
    runs = [{"systems": {"bare": system(0.2, 20, 3000), "bare-h1": system(0.1, 18, 4000)}},
            {"systems": {"bare": system(0.4, 40, 1500), "bare-h1": system(0.22, 30, 2000)}}]
    ratios = bakeoff.ratios(runs)
    assert "| bare-h1 / bare | 0.53 [0.50–0.55] | 0.82 [0.75–0.90] |" in ratios
    table = bakeoff.table(runs)
    assert "| bare-h1 | 160 [100–220] |" in table
    assert "| h1 | bare | 160 [100–220] |" in bakeoff.wide(runs)


def test_interleaved_comparison_reports_medians_and_ratios_to_the_first_system():
    from bench.ab import report

    results = {
        ("gateway", "stream"): [(400.0, 1500.0), (390.0, 1520.0), (900.0, 700.0)],
        ("gateway@HEAD", "stream"): [(420.0, 1480.0), (440.0, 1450.0), (430.0, 1470.0)],
    }
    lines = report(results, ["gateway", "gateway@HEAD"], ["stream"]).splitlines()
    assert lines[2] == "| stream | gateway | 400.0 | 1,500 | 1.000 | 1.000 |"  # the median drops the outlier round
    # 430 / 400; each round's: 1.05, 1.128, 0.478
    assert lines[3] == "| stream | gateway@HEAD | 430.0 | 1,470 | 1.075 | 1.050 |"
