"""What the bench sends: the request bodies of every load, and the load generator run as a process
on the generators' CPUs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import procs, systems
from .procs import ROOT

PROMPT = "You are a helpful assistant. Answer briefly."
STREAM_CHUNKS = 10  # tokens of the stream throughput phase's answers
CAPACITY_CHUNKS, CAPACITY_DELAY = 500, 0.02  # 50 events/s per stream
MESSAGES_MAX_TOKENS = 1024


def loadgen(mode: str, url: str, body: Path, headers: dict[str, str], opts, cpus, timeout: float = 600) -> dict:
    """``python -m bench.loadgen MODE`` on the generators' CPUs: what it measured (its RESULT line)."""
    args = [sys.executable, "-m", "bench.loadgen", mode, "--url", url, "--body-file", str(body)]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    out = subprocess.run([*args, *opts], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         preexec_fn=procs.preexec(cpus))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr[-2000:]}")


def bodies(work: Path, hold_chunks: int, hold_delay: float, long_chunks: int, long_delay: float) -> dict[str, Path]:
    def body(stream: bool, text: str) -> bytes:
        doc = {"model": systems.PUBLIC_MODEL,
               "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": text}]}
        if stream:
            doc["stream"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    def responses(stream: bool, text: str, store: bool = False) -> bytes:
        doc = {"model": systems.PUBLIC_MODEL, "instructions": PROMPT, "input": text, "store": store}
        if stream:
            doc["stream"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    def messages(stream: bool, text: str) -> bytes:
        doc = {"model": systems.PUBLIC_MODEL, "max_tokens": MESSAGES_MAX_TOKENS, "system": PROMPT,
               "messages": [{"role": "user", "content": text}]}
        if stream:
            doc["stream"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    files = {
        "plain": body(False, "Say hello to the benchmark, please."),
        "stream": body(True, f"Say hello to the benchmark, please. [[fake:chunks={STREAM_CHUNKS}]]"),
        "hold": body(True, f"Keep this stream open. [[fake:chunks={hold_chunks},delay={hold_delay}]]"),
        "long": body(True, f"Write a long answer. [[fake:chunks={long_chunks},delay={long_delay}]]"),
        "capacity": body(True, f"Write a long answer. [[fake:chunks={CAPACITY_CHUNKS},delay={CAPACITY_DELAY}]]"),
        # The same conversations through the Responses API (store: false, as Codex sends it; and the
        # default, stored, for the non-stream request).
        "responses_plain": responses(False, "Say hello to the benchmark, please."),
        "responses_plain_stored": responses(False, "Say hello to the benchmark, please.", store=True),
        "responses_stream": responses(True, f"Say hello to the benchmark, please. [[fake:chunks={STREAM_CHUNKS}]]"),
        "responses_long": responses(True, f"Write a long answer. [[fake:chunks={long_chunks},delay={long_delay}]]"),
        # And through the Messages API (max_tokens is required there).
        "messages_plain": messages(False, "Say hello to the benchmark, please."),
        "messages_stream": messages(True, f"Say hello to the benchmark, please. [[fake:chunks={STREAM_CHUNKS}]]"),
        "messages_long": messages(True, f"Write a long answer. [[fake:chunks={long_chunks},delay={long_delay}]]"),
    }
    out = {}
    for name, data in files.items():
        path = work / f"body-{name}.json"
        path.write_bytes(data)
        out[name] = path
    return out
