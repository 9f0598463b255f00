"""POST /api/v1/chat/completions: admit, validate, relay, meter."""
from __future__ import annotations

import asyncio
import secrets
import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ..errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamError, UpstreamTimeout
from ..identity import MalformedUpstream, StreamRewriter, rewrite_completion
from ..metering import LedgerEntry, Usage, estimate_tokens, estimate_usage
from ..schemas import parse_chat_request
from ..services import Services
from ..sse import format_event
from ..upstream.client import Attempts

bp = Blueprint("chat")

_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def request_id_for(request: Request) -> str:
    return secrets.token_hex(12)


async def chat_completions(request: Request) -> HTTPResponse | None:
    services: Services = request.app.ctx.services
    started = time.perf_counter()
    request_id = request_id_for(request)
    headers = request.ctx.headers = {"x-request-id": request_id}
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        raise InvalidRequest(
            "Send the request body as JSON with 'Content-Type: application/json'.",
            param="content-type",
            code="invalid_content_type",
        )
    admission = services.admission
    key = await admission.key(request.headers.get("authorization"))
    body = parse_chat_request(request.body)
    model = services.settings.models.get(body["model"])
    if model is None:
        raise ModelNotFound(
            f"The model '{body['model']}' does not exist or you do not have access to it.", param="model"
        )
    decision = await admission.limit(key)
    headers.update(decision.headers())
    await admission.require_balance(key.account_id)

    meter = Metering(services, request_id, key.account_id, key.id, model.id, body, started, len(request.body))
    services.inflight += 1
    try:
        if body.get("stream"):
            return await _stream(request, services, model, body, headers, meter)
        return await _complete(services, model, body, headers, meter)
    finally:
        services.inflight -= 1
        meter.close()


bp.add_route(chat_completions, "/api/v1/chat/completions", methods=["POST"], name="chat_completions")
bp.add_route(chat_completions, "/v1/chat/completions", methods=["POST"], name="chat_completions_v1")


async def _complete(services: Services, model, body: dict, headers: dict, meter: "Metering") -> HTTPResponse:
    raw = await meter.track(services.upstream.complete(model, body, meter.request_id, meter.attempts))
    try:
        out, usage = rewrite_completion(raw, model.id, meter.completion_id)
    except MalformedUpstream:
        meter.fail("upstream_error", 502)
        raise UpstreamError("The model backend sent an unreadable response.") from None
    meter.usage = usage
    meter.response_bytes = len(raw)
    return HTTPResponse(out, status=200, headers=headers, content_type="application/json")


async def _stream(request: Request, services: Services, model, body: dict, headers: dict, meter: "Metering") -> None:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream = await meter.track(
        services.upstream.stream(
            model, body, meter.request_id, meter.attempts,
            lambda: StreamRewriter(model.id, meter.completion_id, include_usage),
        )
    )
    rewriter = upstream.rewriter
    meter.rewriter = rewriter
    clean = False
    try:
        response = await request.respond(headers={**headers, **_STREAM_HEADERS}, content_type="text/event-stream")
        await response.send(upstream.first)
        failure: GatewayError | None = None
        try:
            while not rewriter.done:
                chunk = await upstream.read()
                if not chunk:
                    tail = rewriter.finish()
                    failure = UpstreamError("The model backend ended the stream early.")
                    if tail:
                        await response.send(tail)
                    break
                out = rewriter.feed(chunk)
                if out:
                    await response.send(out)
                if rewriter.error is not None:
                    failure = UpstreamError("The model backend failed while streaming the response.")
                    break
        except (UpstreamError, UpstreamTimeout) as exc:
            failure = exc
        except MalformedUpstream:
            failure = UpstreamError("The model backend sent an unreadable event.")
        except asyncio.CancelledError:
            meter.fail("client_disconnected", 499)
            raise
        if failure is not None:
            meter.fail("upstream_timeout" if isinstance(failure, UpstreamTimeout) else "upstream_error", failure.status)
            await response.send(format_event(failure.body()))
        else:
            clean = True
        meter.usage = rewriter.usage
        await response.eof()
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()


class Metering:
    """Everything needed to write the request's one ledger entry, whatever way it ends."""

    __slots__ = (
        "services", "request_id", "completion_id", "account_id", "key_id", "model", "user", "stream",
        "started", "prompt_bytes", "response_bytes", "attempts", "usage", "rewriter", "outcome", "status",
    )

    def __init__(self, services: Services, request_id: str, account_id: str, key_id: str, model: str, body: dict, started: float, prompt_bytes: int) -> None:
        self.services = services
        self.request_id = request_id
        self.completion_id = "chatcmpl-" + request_id
        self.account_id = account_id
        self.key_id = key_id
        self.model = model
        self.user = body.get("user")
        self.stream = bool(body.get("stream"))
        self.started = started
        self.prompt_bytes = prompt_bytes
        self.response_bytes = 0
        self.attempts = Attempts()
        self.usage: Usage | None = None
        self.rewriter: StreamRewriter | None = None
        self.outcome = "ok"
        self.status = 200

    async def track(self, call):
        """Await an upstream call, noting how it failed."""
        try:
            return await call
        except asyncio.CancelledError:
            self.fail("client_disconnected", 499)
            raise
        except UpstreamTimeout as exc:
            self.fail("upstream_timeout", exc.status)
            raise
        except GatewayError as exc:
            self.fail("upstream_error", exc.status)
            raise

    def fail(self, outcome: str, status: int) -> None:
        if self.outcome == "ok":
            self.outcome = outcome
            self.status = status

    def close(self) -> None:
        """Hand the ledger entry to the writer, if the request reached an upstream."""
        if not self.attempts.count:
            return
        usage = self.usage
        if usage is None:
            if self.rewriter is not None:
                usage = estimate_usage(self.prompt_bytes, self.rewriter.estimated_completion_tokens())
            elif self.outcome in ("ok", "client_disconnected"):
                usage = estimate_usage(self.prompt_bytes, estimate_tokens(self.response_bytes))
            else:
                usage = Usage(0, 0, 0)
        target = self.attempts.target
        self.services.meter.record(
            LedgerEntry(
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
                latency_ms=round((time.perf_counter() - self.started) * 1000.0, 3),
                user=self.user,
                created_at=time.time(),
                attempts=self.attempts.count,
            )
        )
