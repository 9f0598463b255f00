"""One chat request from arrival to its end, whatever the end: the journal's started record (the
moment its body goes upstream), the ledger entry, the metrics and the one access-log line all come
from its record here."""
from __future__ import annotations

import asyncio
import re
import time

from ..billing.reservations import Reservation
from ..core.errors import GatewayError, StreamCut, UpstreamTimeout
from ..core.ids import new_request_id
from ..store.contracts.ledger import LedgerEntry
from ..upstream.client import Attempts
from ..upstream.stream import UpstreamStream
from ..wire.usage import Usage, estimate_tokens, estimate_usage
from .services import Services

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(value: str | None) -> str | None:
    """The caller's own X-Request-Id, when it is a sane token: logged and echoed, never trusted as a key."""
    return value if value and _CLIENT_ID.fullmatch(value) else None


class _JournaledAttempts(Attempts):
    """Attempts that journal their request the moment its body first goes to an upstream."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: "Exchange") -> None:
        super().__init__()
        self.exchange: Exchange | None = exchange

    def mark_sent(self) -> None:
        if not self.sent and self.exchange is not None:
            self.exchange.journal_started()
        self.sent += 1


class Exchange:
    """Use as ``with Exchange(...) as exchange:``; leaving the block records how it ended."""

    __slots__ = (
        "services", "request_id", "client_id", "completion_id", "headers", "started", "prompt_bytes",
        "account_id", "key_id", "model", "user", "stream", "attempts", "usage", "upstream",
        "response_bytes", "outcome", "status", "code", "reservation", "task", "api",
    )

    def __init__(self, services: Services, prompt_bytes: int, client_id: str | None, api: str = "chat",
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``loop``: the running loop, when the caller has it (looking it up is a system call)."""
        self.services = services
        self.api = api
        self.started = time.perf_counter()
        self.request_id = new_request_id()
        self.completion_id = "chatcmpl-" + self.request_id
        self.client_id = client_request_id(client_id)
        self.headers = {"x-request-id": self.request_id}
        if self.client_id:
            self.headers["x-client-request-id"] = self.client_id
        self.prompt_bytes = prompt_bytes
        self.account_id = self.key_id = None
        self.model = "-"
        self.user = None
        self.stream = False
        self.attempts = _JournaledAttempts(self)
        self.usage: Usage | None = None
        self.upstream: UpstreamStream | None = None
        self.response_bytes = 0
        self.outcome = "ok"
        self.status = 200
        self.code: str | None = None
        self.reservation: Reservation | None = None
        self.task = asyncio.current_task(loop)

    def __enter__(self) -> "Exchange":
        self.services.exchanges.add(self)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        cut = None
        if isinstance(exc, asyncio.CancelledError):
            if self.was_cut and self.upstream is None:
                # The drain deadline, not the caller, ended it before any answer began: a 503.
                self.task.uncancel()
                cut = StreamCut()
            else:
                self.fail("client_disconnected", 499)
        elif isinstance(exc, GatewayError):
            self.failed(exc)
        elif exc is not None:
            self.fail("server_error", 500, "server_error")
        self.services.exchanges.discard(self)
        self.finish()
        if cut is not None:
            raise cut from None
        return False

    def admitted(self, model: str, body: dict) -> None:
        self.model = model
        self.attempts.account = self.account_id
        self.user = body.get("user")
        self.stream = bool(body.get("stream"))

    def failed(self, error: GatewayError) -> None:
        """The request ended with ``error`` (before or after its answer began)."""
        if not self.attempts.count:
            outcome = "rejected"
        elif isinstance(error, StreamCut):
            outcome = "cut_by_gateway"
        elif isinstance(error, UpstreamTimeout):
            outcome = "upstream_timeout"
        else:
            outcome = "upstream_error"
        self.fail(outcome, error.status, error.code)

    def fail(self, outcome: str, status: int, code: str | None = None) -> None:
        if self.outcome == "ok":
            self.outcome = outcome
            self.status = status
            self.code = code

    def cut(self) -> None:
        """The drain deadline passed: end the request now, as the gateway's doing: a stream ends
        with an error event, anything else gets a 503 (see ``was_cut``)."""
        self.fail("cut_by_gateway", StreamCut.status, StreamCut.code)
        if self.upstream is not None:
            self.upstream.cut()
        elif self.task is not None:
            self.task.cancel()

    @property
    def was_cut(self) -> bool:
        return self.outcome == "cut_by_gateway"

    def journal_started(self) -> None:
        target = self.attempts.target
        self.services.journal.started(
            self.request_id, self.account_id, self.key_id, self.model, target.name if target else "",
            self.stream, self.prompt_bytes, self.user, self.api,
        )

    # the end

    def finish(self) -> None:
        self.attempts.exchange = None
        latency = time.perf_counter() - self.started
        usage = self._usage() if self.attempts.sent else None
        settles = 0
        if self.reservation is not None:
            spent = usage.total_tokens if usage is not None else 0
            settles = self.services.admission.reservations.finish(self.reservation, spent)
        if usage is not None:
            self._meter(usage, latency, settles)
        self._count(usage, latency)
        if self.services.access_log.enabled:
            self._log(usage, latency)
        # The stream's rewriter holds ``estimate``, a method of this exchange: let go of it, so that
        # the request's objects are freed by their counts rather than by the cycle collector.
        self.upstream = None

    def _usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        if self.upstream is not None:
            rewriter = self.upstream.rewriter
            if rewriter.usage is not None:
                return rewriter.usage  # reported, or the estimate its usage chunk already showed
            return self.estimate(rewriter.estimated_completion_tokens())
        if self.outcome in ("ok", "client_disconnected", "cut_by_gateway"):
            return self.estimate(estimate_tokens(self.response_bytes))
        return Usage(0, 0, 0)

    def estimate(self, completion_tokens: int) -> Usage:
        """What is billed when the upstream reported no usage: the prompt by its size, the completion
        as counted (also what a stream's usage chunk shows then)."""
        return estimate_usage(self.prompt_bytes, completion_tokens)

    def _meter(self, usage: Usage, latency: float, settles: int) -> None:
        target = self.attempts.target
        self.services.ledger_writer.record(LedgerEntry(
            request_id=self.request_id,
            account_id=self.account_id,
            key_id=self.key_id,
            model=self.model,
            target=target.name if target else "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            estimated=usage.estimated,
            stream=self.stream,
            outcome=self.outcome,
            status=self.status,
            latency_ms=round(latency * 1000.0, 3),
            user=self.user,
            created_at=time.time(),
            attempts=self.attempts.count,
            reasoning_tokens=usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            lease_id=self.reservation.lease_id if self.reservation else None,
            reserved=settles,
            key_lease_id=self.reservation.key_lease_id if self.reservation else None,
            api=self.api,
        ))

    def _count(self, usage: Usage | None, latency: float) -> None:
        metrics = self.services.metrics
        stream = "true" if self.stream else "false"
        metrics.count("requests", (self.model, str(self.status), stream))
        if usage is None:
            if self.code is not None and self.status != 499:
                metrics.count("rejections", (self.code,))
            return
        metrics.observe("latency", (self.model, stream), latency)
        if usage.prompt_tokens:
            metrics.count("tokens", (self.model, "prompt"), usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.count("tokens", (self.model, "completion"), usage.completion_tokens)

    def _log(self, usage: Usage | None, latency: float) -> None:
        target = self.attempts.target
        self.services.access_log.write({
            "request_id": self.request_id,
            "client_request_id": self.client_id,
            "key_id": self.key_id,
            "account_id": self.account_id,
            "model": self.model,
            "target": target.name if target and usage is not None else "",
            "api": self.api,
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome,
            "code": self.code,
            "latency_ms": round(latency * 1000.0, 3),
            "attempts": self.attempts.count,
            "failures": self.attempts.failures,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "estimated": usage.estimated if usage else False,
        })
