"""POST /api/v1/chat/completions: admit, validate, relay, meter."""
from __future__ import annotations

import asyncio
import re
import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ..config import PublicModel
from ..errors import GatewayError, InvalidRequest, ModelNotFound, RequestTimeout, UpstreamError, UpstreamTimeout
from ..identity import MalformedUpstream, StreamRewriter, rewrite_completion
from ..keys import request_id
from ..metering import LedgerEntry, Usage, estimate_tokens, estimate_usage
from ..schemas import parse_chat_request
from ..services import Services
from ..sse import format_event
from ..upstream.client import Attempts, UpstreamStream

bp = Blueprint("chat")

_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Why a request never reached an upstream, by the status it got.
_REJECTIONS = {400: "invalid_request", 401: "invalid_api_key", 402: "insufficient_quota", 404: "model_not_found",
               413: "too_large", 429: "rate_limited", 503: "unavailable"}


def client_request_id(request: Request) -> str | None:
    """The caller's own X-Request-Id, when it is a sane token: logged and echoed, never trusted as a key."""
    value = request.headers.get("x-request-id")
    return value if value and _CLIENT_ID.fullmatch(value) else None


async def chat_completions(request: Request) -> HTTPResponse | None:
    services: Services = request.app.ctx.services
    # A streaming route lifts Sanic's size limit; the body is read here under both limits.
    http = request.stream
    http.request_max_size = services.settings.max_body_bytes
    try:
        if http.request_body == "chunked" or (http.request_body and http.request_bytes_left > len(http.recv_buffer)):
            async with asyncio.timeout(services.settings.body_timeout):
                await request.receive_body()
        else:
            await request.receive_body()  # already here in full: no timer needed
    except TimeoutError:
        # Answer, then drop the connection: the rest of a stalled body must not be waited for.
        error = RequestTimeout()
        request.stream.keep_alive = False
        response = await request.respond(HTTPResponse(error.body(), status=error.status, content_type="application/json"))
        await response.send(end_stream=True)
        request.transport.close()
        return None
    exchange = Exchange(services, request)
    request.ctx.headers = exchange.headers
    services.inflight += 1
    try:
        return await _serve(request, services, exchange)
    except asyncio.CancelledError:
        exchange.fail("client_disconnected", 499)
        raise
    except GatewayError as exc:
        exchange.fail(exchange.outcome_of(exc), exc.status)
        raise
    except Exception:
        exchange.fail("server_error", 500)
        raise
    finally:
        services.inflight -= 1
        exchange.finish()


# stream=True: the body is read by the handler, so a stalled upload meets the body timeout.
bp.add_route(chat_completions, "/api/v1/chat/completions", methods=["POST"], name="chat_completions", stream=True)
bp.add_route(chat_completions, "/v1/chat/completions", methods=["POST"], name="chat_completions_v1", stream=True)


async def _serve(request: Request, services: Services, exchange: "Exchange") -> HTTPResponse | None:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        raise InvalidRequest(
            "Send the request body as JSON with 'Content-Type: application/json'.",
            param="content-type",
            code="invalid_content_type",
        )
    admission = services.admission
    key = await admission.key(request.headers.get("authorization"))
    exchange.key_id, exchange.account_id = key.id, key.account_id
    body = parse_chat_request(request.body, services.settings.request_limits)
    model = services.settings.models.get(body["model"])
    if model is None:
        raise ModelNotFound(
            f"The model '{body['model']}' does not exist or you do not have access to it.", param="model"
        )
    exchange.admitted(model.id, body)
    decision = await admission.limit(key)
    exchange.headers.update(decision.headers())
    await admission.require_balance(key.account_id)
    if exchange.stream:
        return await _stream(request, services, model, body, exchange)
    return await _complete(services, model, body, exchange)


async def _complete(services: Services, model: PublicModel, body: dict, exchange: "Exchange") -> HTTPResponse:
    raw = await services.upstream.complete(model, body, exchange.request_id, exchange.attempts)
    exchange.response_bytes = len(raw)
    try:
        out, exchange.usage = rewrite_completion(raw, model.id, exchange.completion_id)
    except MalformedUpstream:
        raise UpstreamError("The model backend sent an unreadable response.") from None
    return HTTPResponse(out, status=200, headers=exchange.headers, content_type="application/json")


async def _stream(request: Request, services: Services, model: PublicModel, body: dict, exchange: "Exchange") -> None:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream = await services.upstream.stream(
        model, body, exchange.request_id, exchange.attempts,
        lambda: StreamRewriter(model.id, exchange.completion_id, include_usage),
    )
    exchange.rewriter = rewriter = upstream.rewriter
    clean = False
    try:
        response = await request.respond(headers={**exchange.headers, **_STREAM_HEADERS}, content_type="text/event-stream")
        await response.send(upstream.first)
        failure = await _relay(upstream, rewriter, response)
        exchange.usage = rewriter.usage
        if failure is None:
            clean = True
        else:
            exchange.fail(exchange.outcome_of(failure), failure.status)
            await response.send(format_event(failure.body()))
        if services.draining:
            request.stream.keep_alive = False  # a stream that began before SIGTERM: close after it
        await response.eof()
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()


async def _relay(upstream: UpstreamStream, rewriter: StreamRewriter, response) -> GatewayError | None:
    """Relay the rest of the stream; the failure to tell the caller about, if it broke."""
    try:
        while not rewriter.done:
            chunk = await upstream.read()
            if not chunk:
                tail = rewriter.finish()
                if tail:
                    await response.send(tail)
                return None if rewriter.done else UpstreamError("The model backend ended the stream early.")
            out = rewriter.feed(chunk)
            if out:
                await response.send(out)
            if rewriter.error is not None:
                return UpstreamError("The model backend failed while streaming the response.")
    except (UpstreamError, UpstreamTimeout) as exc:
        return exc
    except MalformedUpstream:
        return UpstreamError("The model backend sent an unreadable event.")
    return None


class Exchange:
    """One chat request from arrival to its end, whatever the end: the ledger entry (if an upstream
    was reached), the metrics and the one access log line all come from here."""

    __slots__ = (
        "services", "request_id", "client_id", "completion_id", "headers", "started", "prompt_bytes",
        "account_id", "key_id", "model", "user", "stream", "attempts", "usage", "rewriter",
        "response_bytes", "outcome", "status",
    )

    def __init__(self, services: Services, request: Request) -> None:
        self.services = services
        self.started = time.perf_counter()
        self.request_id = request_id()
        self.completion_id = "chatcmpl-" + self.request_id
        self.client_id = client_request_id(request)
        self.headers = {"x-request-id": self.request_id}
        if self.client_id:
            self.headers["x-client-request-id"] = self.client_id
        self.prompt_bytes = len(request.body)
        self.account_id = self.key_id = None
        self.model = "-"
        self.user = None
        self.stream = False
        self.attempts = Attempts()
        self.usage: Usage | None = None
        self.rewriter: StreamRewriter | None = None
        self.response_bytes = 0
        self.outcome = "ok"
        self.status = 200

    def admitted(self, model: str, body: dict) -> None:
        self.model = model
        self.user = body.get("user")
        self.stream = bool(body.get("stream"))

    def outcome_of(self, error: GatewayError) -> str:
        if not self.attempts.count:
            return "rejected"
        return "upstream_timeout" if isinstance(error, UpstreamTimeout) else "upstream_error"

    def fail(self, outcome: str, status: int) -> None:
        if self.outcome == "ok":
            self.outcome = outcome
            self.status = status

    def _usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        if self.rewriter is not None:
            return estimate_usage(self.prompt_bytes, self.rewriter.estimated_completion_tokens())
        if self.outcome in ("ok", "client_disconnected"):
            return estimate_usage(self.prompt_bytes, estimate_tokens(self.response_bytes))
        return Usage(0, 0, 0)

    def finish(self) -> None:
        latency = time.perf_counter() - self.started
        services = self.services
        metrics = services.metrics
        reached = self.attempts.sent > 0
        usage = self._usage() if reached else None
        stream = "true" if self.stream else "false"
        metrics.count("requests", (self.model, str(self.status), stream))
        if reached:
            target = self.attempts.target.name if self.attempts.target else ""
            metrics.observe("latency", (self.model, stream), latency)
            if usage.prompt_tokens:
                metrics.count("tokens", (self.model, "prompt"), usage.prompt_tokens)
            if usage.completion_tokens:
                metrics.count("tokens", (self.model, "completion"), usage.completion_tokens)
            services.meter.record(
                LedgerEntry(
                    request_id=self.request_id,
                    account_id=self.account_id,
                    key_id=self.key_id,
                    model=self.model,
                    target=target,
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
                )
            )
        else:
            target = ""
            reason = _REJECTIONS.get(self.status)
            if reason is not None:
                metrics.count("rejections", (reason,))
        if services.access_log.enabled:
            services.access_log.write({
                "request_id": self.request_id,
                "client_request_id": self.client_id,
                "key_id": self.key_id,
                "account_id": self.account_id,
                "model": self.model,
                "target": target,
                "stream": self.stream,
                "status": self.status,
                "outcome": self.outcome,
                "latency_ms": round(latency * 1000.0, 3),
                "attempts": self.attempts.count,
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0,
                "total_tokens": usage.total_tokens if usage else 0,
                "estimated": usage.estimated if usage else False,
            })
