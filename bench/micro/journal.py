"""``python -m bench.micro.journal``: what the started-record journal adds to a request.

Per request the worker appends one started line when the body goes upstream, and settles it in the
ledger writer's next batch (one line for the batch); both are timed here against a journal in a
temporary directory, settled in batches as the meter writes them. ``off_loop`` weighs the other
way to write a started line: handed to a writer thread that appends what it is given in one write.
"""
from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import orjson

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


def off_loop(requests: int = 50_000, repeat: int = 3) -> dict:
    """CPU per started line appended inline against handed to a writer thread (which joins what it
    was given into one write): the whole process's, and the calling (event loop's) thread's alone.
    Best of ``repeat``."""
    line = b"S " + orjson.dumps((new_request_id(), "acct_0123456789abcdef", "key_0123456789abcdef", "zowy-1",
                                  "gemini-flash", True, 1800, None, time.time(), "chat")) + b"\n"
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(Path(tmp) / "lines", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def inline() -> None:
            for _ in range(requests):
                os.write(fd, line)

        def threaded() -> None:
            lines: queue.SimpleQueue = queue.SimpleQueue()

            def writer() -> None:
                done = False
                while not done:
                    batch = [lines.get()]
                    while not lines.empty():
                        batch.append(lines.get())
                    done = batch[-1] is None
                    os.write(fd, b"".join(batch[:-1] if done else batch))

            thread = threading.Thread(target=writer)
            thread.start()
            for i in range(requests):
                lines.put(line)
                if i % 32 == 0:
                    time.sleep(0)  # the loop yields between requests, as its select would
            lines.put(None)
            thread.join()

        for name, fn in (("inline", inline), ("thread", threaded)):
            for _ in range(repeat):
                p0, t0 = time.process_time(), time.thread_time()
                fn()
                process, loop = (time.process_time() - p0) / requests * 1e6, (time.thread_time() - t0) / requests * 1e6
                if process < best.get(f"{name}_process_us", float("inf")):
                    best[f"{name}_process_us"], best[f"{name}_loop_us"] = round(process, 2), round(loop, 2)
        os.close(fd)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.journal")
    p.add_argument("--batch", type=int, default=64, help="requests settled per ledger batch")
    args = p.parse_args(argv)
    for batch in sorted({1, args.batch, 512}):
        r = run(batch)
        print(f"journal: started + settled in batches of {batch:3d}: {r['journal_ns_per_request'] / 1000:6.2f} us per request")
    r = off_loop()
    print(f"journal: a started line appended inline: {r['inline_process_us']:.2f} us of CPU, all on the loop; "
          f"handed to a writer thread: {r['thread_process_us']:.2f} us, {r['thread_loop_us']:.2f} us of it on the loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
