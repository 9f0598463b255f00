"""Calls to upstream providers: one pooled client per worker, timeouts, retries and fallback.

The only module that imports aiohttp; its exceptions become ``errors.*`` in ``_failure`` alone.
Retries and fallback happen only before the first byte reaches the caller.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
from aiohttp.payload import BytesPayload

from ..config import PublicModel, Settings, Target
from ..errors import GatewayError, InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from ..identity import MalformedUpstream, StreamRewriter, scrub
from ..metrics import BREAKER_STATES, Metrics
from .breaker import Breaker
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .provider import Provider

log = logging.getLogger("zowy.upstream")

PROVIDERS: dict[str, Provider] = {"openai": OpenAIProvider(), "gemini": GeminiProvider()}
_RETRYABLE_STATUS = frozenset((408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529))


class _Retryable(Exception):
    """An attempt failed before any byte reached the caller; another attempt may succeed."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        self.error = error
        self.kind = kind


@dataclass(slots=True)
class Attempts:
    """What the dispatcher did for one request: for metering and logs.

    ``count`` is every attempt begun; ``sent`` those whose body went out to an upstream, which is
    what makes a request billable.
    """

    count: int = 0
    sent: int = 0
    target: Target | None = None
    failures: list[str] = field(default_factory=list)


class _Body(BytesPayload):
    """The request body, noting in ``attempts`` the moment it is written to the upstream."""

    def __init__(self, value: bytes, attempts: Attempts) -> None:
        super().__init__(value, content_type="application/json")
        self._attempts = attempts

    async def write(self, writer) -> None:
        self._attempts.sent += 1
        await super().write(writer)

    async def write_with_length(self, writer, content_length: int | None) -> None:
        self._attempts.sent += 1
        await super().write_with_length(writer, content_length)


class UpstreamStream:
    """An open upstream stream whose first event has been read and rewritten."""

    __slots__ = ("_response", "_timeouts", "_deadline", "rewriter", "first", "target")

    def __init__(self, response: aiohttp.ClientResponse, target: Target, rewriter: StreamRewriter, first: bytes, deadline: float) -> None:
        self._response = response
        self._timeouts = target.timeouts
        self._deadline = deadline
        self.rewriter = rewriter
        self.first = first
        self.target = target

    async def read(self) -> bytes:
        """The next raw bytes of the stream; b"" at its end. Raises on idle timeout or a broken stream."""
        loop = asyncio.get_running_loop()
        deadline = min(loop.time() + self._timeouts.idle, self._deadline)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._response.content.readany()
        except TimeoutError:
            raise UpstreamTimeout("The model backend stopped sending the response.") from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamError("The model backend connection failed mid-response.") from None

    def close(self) -> None:
        """Drop the upstream connection (it cannot be reused mid-stream)."""
        self._response.close()

    def release(self) -> None:
        self._response.release()


class UpstreamClient:
    def __init__(self, settings: Settings, breaker: Breaker | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.breaker = breaker or Breaker(settings.breaker_threshold, settings.breaker_cooldown)
        self.metrics = metrics or Metrics()
        self._session: aiohttp.ClientSession | None = None
        self._guard = {"role": "system", "content": settings.identity_prompt}
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        per_host = max((t.max_connections for m in self.settings.models.values() for t in m.targets), default=256)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_host, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def targets(self) -> list[str]:
        return sorted({t.name for m in self.settings.models.values() for t in m.targets})

    async def complete(self, model: PublicModel, request: dict, request_id: str, attempts: Attempts) -> bytes:
        """A non-stream completion's raw upstream body."""

        async def attempt(target: Target, deadline: float) -> bytes:
            # One timer for the whole attempt: first the headers' deadline, then the total one.
            try:
                async with asyncio.timeout_at(self._first_byte_deadline(target, deadline)) as window:
                    response = await self._send(target, request, request_id, False, attempts)
                    try:
                        window.reschedule(deadline)
                        return await response.read()
                    finally:
                        response.release()
            except TimeoutError:
                raise _Retryable(UpstreamTimeout(), "timeout") from None
            except (aiohttp.ClientError, OSError):
                raise _Retryable(UpstreamError(), "connection") from None

        return await self._dispatch(model, attempt, attempts)

    async def stream(
        self,
        model: PublicModel,
        request: dict,
        request_id: str,
        attempts: Attempts,
        new_rewriter: Callable[[], StreamRewriter],
    ) -> UpstreamStream:
        """An upstream stream, opened and peeked: its first event is already rewritten."""

        async def attempt(target: Target, deadline: float) -> UpstreamStream:
            response = None
            ok = False
            try:
                async with asyncio.timeout_at(self._first_byte_deadline(target, deadline)):
                    response = await self._send(target, request, request_id, True, attempts)
                    rewriter = new_rewriter()
                    while True:
                        chunk = await response.content.readany()
                        if not chunk:
                            raise _Retryable(UpstreamError(), "empty_stream")
                        first = rewriter.feed(chunk)
                        if rewriter.error is not None:
                            raise _Retryable(UpstreamError(), "error_event")
                        if first or rewriter.done:
                            ok = True
                            return UpstreamStream(response, target, rewriter, first, deadline)
            except TimeoutError:
                raise _Retryable(UpstreamTimeout(), "timeout") from None
            except MalformedUpstream:
                raise _Retryable(UpstreamError(), "malformed") from None
            except (aiohttp.ClientError, OSError):
                raise _Retryable(UpstreamError(), "connection") from None
            finally:
                if response is not None and not ok:
                    response.close()

        return await self._dispatch(model, attempt, attempts)

    async def _dispatch(self, model: PublicModel, attempt, attempts: Attempts):
        """Try the model's targets in order, then again with jittered backoff, within the deadline."""
        loop = asyncio.get_running_loop()
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
                    result = await attempt(target, deadline)
                except _Retryable as failure:
                    self._outcome(target.name, failure.kind)
                    attempts.failures.append(f"{target.name}:{failure.kind}")
                    last = failure
                    continue
                except GatewayError:
                    self._outcome(target.name, None)  # it answered, so it is reachable
                    raise
                except BaseException:
                    self.breaker.abandon(target.name)  # cancelled: a probe in flight proved nothing
                    raise
                self._outcome(target.name, None)
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

    def _outcome(self, target: str, failure: str | None) -> None:
        """Tell the breaker (and the metrics, when its state moves) how an attempt on ``target`` ended."""
        before = self.breaker.state(target)
        if failure is None:
            self.breaker.success(target)
        else:
            self.metrics.count("upstream_errors", (target, failure))
            self.breaker.failure(target)
        after = self.breaker.state(target)
        if after != before:
            self.metrics.breaker.labels(target).set(BREAKER_STATES[after])

    async def _send(
        self, target: Target, request: dict, request_id: str, stream: bool, attempts: Attempts
    ) -> aiohttp.ClientResponse:
        """POST to ``target``; a 200's response, or a failure mapped to ours. The caller bounds it in time."""
        assert self._session is not None, "client not started"
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            response = await self._session.post(
                target.base_url + "/chat/completions",
                data=_Body(body, attempts),
                headers=headers,
                timeout=self._connect_timeout(target),
            )
        except aiohttp.ClientConnectorError:
            raise _Retryable(UpstreamError(), "connect") from None
        except (aiohttp.ClientError, OSError):
            raise _Retryable(UpstreamError(), "connection") from None
        self.metrics.observe("ttfb", (target.name,), loop.time() - started)
        if response.status == 200:
            return response
        try:
            raw = await response.read()
        except (aiohttp.ClientError, OSError):
            raw = b""
        finally:
            response.release()
        raise self._failure(target, provider, response.status, raw, response.headers.get("retry-after"))

    def _connect_timeout(self, target: Target) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(target.name)
        if timeout is None:
            timeout = self._timeouts[target.name] = aiohttp.ClientTimeout(total=None, sock_connect=target.timeouts.connect)
        return timeout

    @staticmethod
    def _first_byte_deadline(target: Target, deadline: float) -> float:
        """The response headers must come within connect + first-byte time of the attempt's start."""
        loop = asyncio.get_running_loop()
        return min(deadline, loop.time() + target.timeouts.connect + target.timeouts.first_byte)

    def _failure(self, target: Target, provider: Provider, status: int, raw: bytes, retry_after: str | None) -> Exception:
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

