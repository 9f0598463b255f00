"""Calls to upstream providers: timeouts, retries and fallback over a transport, one per worker.

Retries and fallback happen only before the first byte reaches the caller. Transport exceptions
become the gateway's errors in ``_upstream_failures``; what each attempt failed of is kept in
``Attempts.failures`` for the access log.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..catalog.models import PublicModel, Target
from ..core.config import Settings
from ..core.deadlines import Deadlines
from ..core.errors import GatewayError, InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from ..core.metrics import BREAKER_STATES, Metrics
from ..wire.persona import guard_message, scrub
from ..wire.rewrite import Dialect, MalformedUpstream, StreamRewriter, rewrite_completion
from ..wire.usage import Usage
from .breaker import Breaker
from .stream import UpstreamStream
from .providers import PROVIDERS
from .providers.base import Provider
from .transport import make_transport
from .transport_base import Response, Transport

log = logging.getLogger("zowy.upstream")

_RETRYABLE_STATUS = frozenset((408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529))


class _Retryable(Exception):
    """An attempt failed before any byte reached the caller; another attempt may succeed."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        self.error = error
        self.kind = kind


@dataclass(slots=True)
class Attempts:
    """What the dispatcher did for one request, for metering and the access log.

    ``count`` is every attempt begun; ``sent`` those whose body went out to an upstream, which is
    what makes a request billable; ``failures`` the ``target:kind`` of each failed attempt;
    ``account`` whose request it is, for the breaker.
    """

    count: int = 0
    sent: int = 0
    target: Target | None = None
    failures: list[str] = field(default_factory=list)
    account: str | None = None

    def mark_sent(self) -> None:
        self.sent += 1


@contextmanager
def _upstream_failures(classify: Callable[[BaseException], str | None]) -> Iterator[None]:
    """Transport exceptions (and deadlines) of an attempt become a retryable failure of ours."""
    try:
        yield
    except (_Retryable, GatewayError):
        raise
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        raise _Retryable(UpstreamTimeout() if kind == "timeout" else UpstreamError(), kind) from None


def _first_byte_deadline(target: Target, deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    """The response headers must come within connect + first-byte time of the attempt's start."""
    return min(deadline, loop.time() + target.timeouts.connect + target.timeouts.first_byte)


class UpstreamClient:
    def __init__(self, settings: Settings, transport: Transport | None = None, breaker: Breaker | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        per_host = max((t.max_connections for m in settings.models.values() for t in m.targets), default=256)
        self.transport: Transport = (
            transport if transport is not None else make_transport(settings.upstream_transport, per_host)
        )
        self.breaker = breaker or Breaker(
            settings.breaker_min_requests, settings.breaker_failure_ratio, settings.breaker_window,
            settings.breaker_cooldown, settings.breaker_min_accounts,
        )
        self.metrics = metrics or Metrics()
        self._guard = guard_message(settings.persona_prompt)
        self._body_cap = settings.max_upstream_body_bytes
        self._deadlines: Deadlines | None = None

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    def targets(self) -> list[str]:
        return sorted({t.name for m in self.settings.models.values() for t in m.targets})

    async def complete(self, model: PublicModel, request: dict, request_id: str, attempts: Attempts,
                       completion_id: str, answer: Callable[[bytes, Dialect], tuple[bytes, Usage | None]] | None = None,
                       ) -> tuple[bytes, Usage | None, int]:
        """A non-stream completion rewritten for the caller; its usage, and the upstream body's size.
        ``answer`` makes another client API's answer of the upstream body and its provider's dialect
        (raising MalformedUpstream on a body it cannot read); the chat completion is the default."""

        async def attempt(target: Target, deadline: float, deadlines: Deadlines) -> bytes:
            with _upstream_failures(self.transport.failure):
                # One deadline for the whole attempt: first the headers', then the total one.
                async with deadlines.at(_first_byte_deadline(target, deadline, deadlines.loop)) as window:
                    response = await self._send(target, request, request_id, False, attempts)
                    window.reschedule(deadline)
                    return await self._body(response)

        raw = await self._dispatch(model, attempt, attempts)
        dialect = PROVIDERS[attempts.target.provider].dialect
        try:
            if answer is None:
                out, usage = rewrite_completion(raw, model.id, completion_id, dialect)
            else:
                out, usage = answer(raw, dialect)
        except MalformedUpstream:
            raise UpstreamError("The model backend sent an unreadable response.") from None
        return out, usage, len(raw)

    async def _body(self, response: Response) -> bytes:
        """The whole body of a non-stream answer, up to the configured cap (502 beyond it)."""
        parts, size = [], 0
        try:
            while True:
                piece = await response.content.readany()
                if not piece:
                    break
                size += len(piece)
                if size > self._body_cap:
                    response.close()
                    raise UpstreamError("The model backend sent a response larger than the gateway accepts.")
                parts.append(piece)
        except BaseException:
            response.close()
            raise
        response.release()
        return b"".join(parts)

    async def stream(self, model: PublicModel, request: dict, request_id: str, attempts: Attempts,
                     new_rewriter: Callable[[Dialect], StreamRewriter]) -> UpstreamStream:
        """An upstream stream, opened and peeked: its first event is already rewritten."""

        async def attempt(target: Target, deadline: float, deadlines: Deadlines) -> UpstreamStream:
            response = None
            opened = None
            try:
                with _upstream_failures(self.transport.failure):
                    async with deadlines.at(_first_byte_deadline(target, deadline, deadlines.loop)):
                        response = await self._send(target, request, request_id, True, attempts)
                        rewriter = new_rewriter(PROVIDERS[target.provider].dialect)
                        while True:
                            chunk = await response.content.readany()
                            if not chunk:
                                raise _Retryable(UpstreamError(), "empty_stream")
                            first = rewriter.feed(chunk)
                            if rewriter.error is not None:
                                raise self._event_failure(target, rewriter.error)
                            if first or rewriter.done:
                                opened = UpstreamStream(
                                    response, rewriter, first, target.timeouts.idle, deadline, self.transport.failure,
                                    deadlines.loop,
                                )
                                return opened
            except MalformedUpstream:
                raise _Retryable(UpstreamError(), "malformed") from None
            finally:
                if response is not None and opened is None:
                    response.close()

        return await self._dispatch(model, attempt, attempts)

    def _event_failure(self, target: Target, error: dict) -> Exception:
        """An error event before anything reached the caller: a refusal of this request is final,
        anything else may be retried."""
        code = error.get("code")
        status = code if type(code) is int else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if status in (400, 422) and message:
            return InvalidRequest(scrub(message, (target.model, target.base_url)), code="invalid_request")
        return _Retryable(UpstreamError(), "error_event")

    async def _dispatch(self, model: PublicModel, attempt, attempts: Attempts):
        """Try the model's targets in order, then again with jittered backoff, within the deadline."""
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = Deadlines(loop)
        targets = [t for t in model.targets if t.enabled]
        if not targets:
            raise Overloaded("This model has no backend available right now.")
        deadline = loop.time() + targets[0].timeouts.total
        last: _Retryable | None = None
        budget = self.settings.upstream_attempts
        round_ = 0
        while budget > 0:
            tried = False
            for target in targets:
                if budget <= 0 or loop.time() >= deadline:
                    break
                if not self.breaker.allow(target.name):
                    continue
                tried = True
                budget -= 1
                try:
                    result = await attempt(target, deadline, deadlines)
                except _Retryable as failure:
                    self._outcome(target.name, failure.kind, attempts.account)
                    attempts.failures.append(f"{target.name}:{failure.kind}")
                    last = failure
                    continue
                except GatewayError as error:
                    self._outcome(target.name, None, attempts.account)  # it answered, so it is reachable
                    attempts.failures.append(f"{target.name}:{error.code}")
                    raise
                except BaseException:
                    self.breaker.abandon(target.name)  # cancelled: a probe in flight proved nothing
                    raise
                self._outcome(target.name, None, attempts.account)
                return result
            if not tried or loop.time() >= deadline:
                break
            round_ += 1
            delay = self.settings.retry_backoff * round_ * (0.5 + random.random())
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        if last is None:
            raise Overloaded("The model is temporarily unavailable. Please retry shortly.", headers={"retry-after": "1"})
        error = last.error
        if last.kind == "status_429":
            raise Overloaded(headers=error.headers or {"retry-after": "1"})
        raise error

    def _outcome(self, target: str, failure: str | None, account: str | None) -> None:
        """Tell the breaker (and the metrics, when its state moves) how an attempt on ``target`` ended."""
        before = self.breaker.state(target)
        if failure is not None:
            self.metrics.count("upstream_errors", (target, failure))
        self.breaker.record(target, failure, account)
        after = self.breaker.state(target)
        if after != before:
            self.metrics.breaker.labels(target).set(BREAKER_STATES[after])

    async def _send(self, target: Target, request: dict, request_id: str, stream: bool, attempts: Attempts) -> Response:
        """POST to ``target``; a 200's response, or a failure mapped to ours. The caller bounds it in time."""
        provider = PROVIDERS[target.provider]
        body = provider.body(request, target, self._guard, stream)
        headers = {
            "Authorization": f"Bearer {target.api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "X-Request-Id": request_id,
        }
        attempts.count += 1
        attempts.target = target
        started = time.perf_counter()
        response = await self.transport.send(target, body, headers, attempts.mark_sent)
        self.metrics.observe("ttfb", (target.name,), time.perf_counter() - started)
        if response.status == 200:
            return response
        try:
            raw = await self._body(response)
        except GatewayError:
            raw = b""
        raise self._failure(target, provider, response.status, raw, response.headers.get("retry-after"))

    def _failure(self, target: Target, provider: Provider, status: int, raw: bytes, retry_after: str | None) -> Exception:
        status = provider.error_status(status, raw)
        if status in (400, 401, 403, 404, 422):
            self.metrics.count("upstream_errors", (target.name, f"status_{status}"))
        reason = provider.error_reason(raw)
        if status == 400 or status == 422:
            message = scrub(reason or "The model rejected the request.", (target.model, target.base_url))
            return InvalidRequest(message, code="invalid_request")
        if status in (401, 403, 404):
            log.error(
                "upstream %s refused our request with %s: check its key and model in the models file",
                target.name, status,
            )
            return UpstreamError("The model backend is misconfigured. The operators have been alerted.")
        if status == 429:
            seconds = retry_after if retry_after and retry_after.isdigit() else "1"
            return _Retryable(Overloaded(headers={"retry-after": seconds}), "status_429")
        if status >= 500 or status in _RETRYABLE_STATUS:
            return _Retryable(UpstreamError(), f"status_{status}")
        return UpstreamError()
