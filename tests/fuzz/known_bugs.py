"""Bugs in app/ the fuzzer has found and that are not fixed yet.

Each has a strict xfail test in ``test_found_bugs.py``. While a bug is open, the fuzz properties let a
response it explains pass (counted, and shown in the fuzz summary) so the fuzzer keeps hunting for
new ones. When app/ is fixed: flip the xfail and delete the entry here.
"""
from __future__ import annotations

import json
from typing import Any

# bug id -> text in the gateway's "unhandled error" log line that this bug produces
SIGNATURES: dict[str, str] = {
    "int-beyond-64-bit-in-free-form-json": "Integer exceeds 64-bit range",
}
# Bugs seen in the log (the caller gets no wrong answer, or none at all): bug id -> texts that all
# appear in the log line the bug writes. Tolerated wherever they appear.
LOG_ONLY: dict[str, tuple[str, ...]] = {
    "client-disconnect-logged-as-unhandled-error": ('"msg":"unhandled error"', '"error":"sanic.exceptions.RequestCancelled"'),
    "sanic-bad-url-drops-connection-with-traceback": ("protocol.connection_task uncaught", "sanic.exceptions.BadRequest: Bad URL"),
}


def explain(method: str, path: str, body: bytes | None, status: int) -> str | None:
    """The known bug that explains a 5xx for this request, if one does."""
    if status != 500 or method != "POST" or body is None or not path.split("?")[0].endswith("/chat/completions"):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if _has_wide_int(doc):
        return "int-beyond-64-bit-in-free-form-json"
    return None


def _has_wide_int(node: Any) -> bool:
    if isinstance(node, bool):
        return False
    if isinstance(node, int):
        return not -(2**63) <= node <= 2**64 - 1
    if isinstance(node, dict):
        return any(_has_wide_int(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_wide_int(v) for v in node)
    return False
