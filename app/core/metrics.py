"""Prometheus metrics of one worker, summed over all workers of an instance when scraped.

With several workers, prometheus-client's multiprocess mode keeps each worker's values in files
under a directory named by ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` before the workers
start); any worker's ``/metrics`` reads them all. A request only adds to plain dictionaries here;
``flush`` (a few times a second, and before a scrape) moves the sums into the shared values, so the
hot path pays no file writes.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from .config import exported

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class _Sums:
    """Counter increments and histogram observations waiting for the next flush."""

    __slots__ = ("counts", "observations")

    def __init__(self) -> None:
        self.counts: defaultdict[tuple, float] = defaultdict(float)
        # labels -> [bucket counts..., sum]
        self.observations: dict[tuple, list[float]] = {}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "zowy_requests_total", "Chat completion requests by public model and HTTP status",
            ["model", "status", "stream"], registry=r,
        )
        self._latency = Histogram(
            "zowy_request_duration_seconds", "Chat completion latency, to the last byte",
            ["model", "stream"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self._ttfb = Histogram(
            "zowy_upstream_ttfb_seconds", "Upstream time to response headers",
            ["target"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self._tokens = Counter("zowy_tokens_total", "Tokens metered", ["model", "kind"], registry=r)
        self._rejections = Counter(
            "zowy_rejections_total", "Requests refused before any upstream call", ["reason"], registry=r,
        )
        self._upstream_errors = Counter(
            "zowy_upstream_errors_total", "Failed upstream attempts", ["target", "kind"], registry=r,
        )
        self.breaker = Gauge(
            "zowy_breaker_state", "Circuit breaker per target and worker: 0 closed, 1 half open, 2 open",
            ["target"], registry=r, multiprocess_mode="liveall",
        )
        self.queue_depth = Gauge(
            "zowy_ledger_queue_depth", "Ledger entries waiting to be written",
            registry=r, multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "zowy_ledger_spool_bytes", "Ledger entries spooled locally while the store was unavailable",
            registry=r, multiprocess_mode="livemax",
        )
        self._counters = {
            "requests": self._requests, "tokens": self._tokens,
            "rejections": self._rejections, "upstream_errors": self._upstream_errors,
        }
        self._histograms = {"latency": self._latency, "ttfb": self._ttfb}
        self._sums = _Sums()

    def count(self, counter: str, labels: tuple, amount: float = 1) -> None:
        self._sums.counts[(counter, labels)] += amount

    def observe(self, histogram: str, labels: tuple, seconds: float) -> None:
        key = (histogram, labels)
        row = self._sums.observations.get(key)
        if row is None:
            row = self._sums.observations[key] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        # The last bucket is +Inf; the last cell holds the sum.
        row[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def flush(self) -> None:
        """Move what requests added into the (shared) metric values."""
        sums, self._sums = self._sums, _Sums()
        for (name, labels), amount in sums.counts.items():
            self._counters[name].labels(*labels).inc(amount)
        for (name, labels), row in sums.observations.items():
            child = self._histograms[name].labels(*labels)
            for bucket, n in zip(child._buckets, row[:-1]):
                if n:
                    bucket.inc(n)
            child._sum.inc(row[-1])

    def render(self) -> bytes:
        return generate_latest(self.summed())

    def summed(self) -> CollectorRegistry:
        """The values of every worker of this instance (this one's flushed first)."""
        self.flush()
        directory = exported(MULTIPROC_ENV)
        if directory:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return registry
        return self.registry

    @staticmethod
    def worker_stopped(pid: int) -> None:
        if exported(MULTIPROC_ENV):
            multiprocess.mark_process_dead(pid)
