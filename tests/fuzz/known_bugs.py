"""Bugs in app/ the fuzzer has found and that are not fixed yet.

Each has a strict xfail test in ``test_found_bugs.py``. While a bug is open, the fuzz properties let a
response it explains pass (counted, and shown in the fuzz summary) so the fuzzer keeps hunting for
new ones. When app/ is fixed: flip the xfail and delete the entry here.
"""
from __future__ import annotations

# bug id -> text in the gateway's "unhandled error" log line that this bug produces
SIGNATURES: dict[str, str] = {}
# Bugs seen in the log (the caller gets no wrong answer, or none at all): bug id -> texts that all
# appear in the log line the bug writes. Tolerated wherever they appear.
LOG_ONLY: dict[str, tuple[str, ...]] = {
    "sanic-bad-url-drops-connection-with-traceback": ("protocol.connection_task uncaught", "sanic.exceptions.BadRequest: Bad URL"),
}


def explain(method: str, path: str, body: bytes | None, status: int) -> str | None:
    """The known bug that explains a 5xx for this request, if one does (none is open now)."""
    return None
