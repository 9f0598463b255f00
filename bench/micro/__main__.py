"""``python -m bench.micro [--quick] [--json FILE]``: parse/validate and SSE relay micro-benchmarks."""
from __future__ import annotations

import argparse
import json
import sys

from . import parse, relay


def choice(results: dict) -> str:
    p, r = results["parse"], results["relay"]
    gw = "parse_chat_request (gateway: validate_json + role checks)"
    vj, ov = "pydantic-core validate_json", "orjson.loads + validate_python"
    lines = [parse.choice(p)]
    faster = [s for s in p[vj] if p[vj][s]["ns_per_op"] <= p[ov][s]["ns_per_op"]]
    lines.append(
        f"validate_json beats orjson.loads + validate_python at {', '.join(faster) or 'no size'}"
        f" (of {', '.join(p[vj])}); the gateway's role checks add "
        + ", ".join(f"{s} {p[gw][s]['ns_per_op'] - p[vj][s]['ns_per_op']:,.0f} ns" for s in p[vj]) + ".")
    ours = {k.split(" — ")[1]: v["ns_per_event"] for k, v in r.items() if k.startswith("StreamRewriter")}
    naive = {k.split(" — ")[1]: v["ns_per_event"] for k, v in r.items() if k.startswith("naive")}
    lines.append("SSE relay: StreamRewriter vs naive orjson per event — "
                 + "; ".join(f"{c}: {ours[c]:,.0f} vs {naive[c]:,.0f} ns ({naive[c] / ours[c]:.1f}x)" for c in ours)
                 + f". Rewriter output equals the naive rewrite as JSON: {results['relay_equivalent']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro")
    p.add_argument("--quick", action="store_true", help="tiny time budgets (a smoke run)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    results = {"parse": parse.run(args.quick), "relay": relay.run(args.quick),
               "relay_equivalent": relay.check_fidelity()}
    results["choice"] = choice(results)
    from ..report import micro_markdown

    print(micro_markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
