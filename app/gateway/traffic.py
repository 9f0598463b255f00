"""Live traffic of one instance for the console: its metric counters summed over workers, and each
upstream target's breaker state (the worst any worker holds). Rates come from successive samples."""
from __future__ import annotations

import time

from ..core.metrics import BREAKER_STATES
from .services import Services

_STATE_NAMES = {v: k for k, v in BREAKER_STATES.items()}


def summary(services: Services) -> dict:
    """Counters since the instance started, at ``at`` (epoch seconds)."""
    requests_by_status: dict[str, float] = {}
    requests_by_model: dict[str, float] = {}
    tokens_by_kind: dict[str, float] = {}
    rejections: dict[str, float] = {}
    upstream_errors: dict[str, float] = {}
    latency = {"count": 0.0, "sum": 0.0}
    ledger = {"queued": 0.0, "spool_bytes": 0.0}
    worst: dict[str, int] = {}
    for family in services.metrics.summed().collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "zowy_requests_total":
                _add(requests_by_status, labels["status"], value)
                _add(requests_by_model, labels["model"], value)
            elif name == "zowy_tokens_total":
                _add(tokens_by_kind, labels["kind"], value)
            elif name == "zowy_rejections_total":
                _add(rejections, labels["reason"], value)
            elif name == "zowy_upstream_errors_total":
                _add(upstream_errors, f"{labels['target']}:{labels['kind']}", value)
            elif name == "zowy_request_duration_seconds_count":
                latency["count"] += value
            elif name == "zowy_request_duration_seconds_sum":
                latency["sum"] += value
            elif name == "zowy_ledger_queue_depth":
                ledger["queued"] += value
            elif name == "zowy_ledger_spool_bytes":
                ledger["spool_bytes"] = max(ledger["spool_bytes"], value)
            elif name == "zowy_breaker_state":
                target = labels["target"]
                worst[target] = max(worst.get(target, 0), int(value))
    upstream = services.upstream
    here = upstream.breaker.snapshot(upstream.targets())
    breakers = []
    for target, local in here.items():
        state = max(worst.get(target, 0), BREAKER_STATES.get(local["state"], 0))
        breakers.append({"target": target, "state": _STATE_NAMES.get(state, "closed")})
    return {
        "at": time.time(),
        "requests": int(sum(requests_by_status.values())),
        "tokens": int(sum(tokens_by_kind.values())),
        "requests_by_status": _ints(requests_by_status),
        "requests_by_model": _ints(requests_by_model),
        "tokens_by_kind": _ints(tokens_by_kind),
        "rejections": _ints(rejections),
        "upstream_errors": _ints(upstream_errors),
        "latency_seconds": {"count": int(latency["count"]), "sum": latency["sum"]},
        "breakers": breakers,
        "ledger": _ints(ledger),
    }


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def _ints(values: dict[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(values.items())}
