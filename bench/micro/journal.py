"""``python -m bench.micro.journal``: what the started-record journal adds to a request.

Per request the worker appends one started line when the body goes upstream, and settles it in the
ledger writer's next batch (one line for the batch); both are timed here against a journal in a
temporary directory, settled in batches as the meter writes them.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from app.billing.journal import Journal
from app.core.ids import new_request_id

from .timing import measure


def run(batch: int = 64, budget: float = 0.3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp), "bench-0")
        ids: list[str] = []

        def one_request() -> None:
            request_id = new_request_id()
            journal.started(request_id, "acct_0123456789abcdef", "key_0123456789abcdef", "zowy-1",
                            "gemini-flash", True, 1800, None)
            ids.append(request_id)
            if len(ids) >= batch:
                journal.settle(ids)
                ids.clear()

        plain: list[str] = []

        def id_only() -> None:
            plain.append(new_request_id())
            if len(plain) >= batch:
                plain.clear()

        with_journal = measure(one_request, budget)
        baseline = measure(id_only, budget)
        journal.settle(ids)
        journal.close()
    return {
        "batch": batch,
        "journal_ns_per_request": round(with_journal["ns_per_op"] - baseline["ns_per_op"], 1),
        "with_journal_ns": with_journal["ns_per_op"],
        "baseline_ns": baseline["ns_per_op"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.journal")
    p.add_argument("--batch", type=int, default=64, help="requests settled per ledger batch")
    args = p.parse_args(argv)
    for batch in sorted({1, args.batch, 512}):
        r = run(batch)
        print(f"journal: started + settled in batches of {batch:3d}: {r['journal_ns_per_request'] / 1000:6.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
