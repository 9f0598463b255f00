"""The chat path, free of any HTTP framework: admit the key, validate the body, count the request in
its windows, reserve what it may cost, call the upstream, and hand back the answer's bytes or its
stream; the exchange records all of it.

A client API is a parameter (``ClientApi``): Chat Completions (wire/chat.py), the Responses API
(gateway/responses.py) and the Messages API (wire/messages/api.py) each bring their request parsing,
answer and stream translation and error events, and reuse admission, reservations, the upstream
client and metering as they are.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Protocol

from ..billing.need import prompt_need
from ..catalog.models import PublicModel
from ..core.config import RequestLimits
from ..core.errors import GatewayError, InvalidRequest, ModelNotFound
from ..upstream.stream import UpstreamStream
from ..store import Store
from ..wire.chat import RequestFacts
from ..wire.rewrite import Dialect, StreamRewriter
from ..wire.usage import Usage
from .exchange import Exchange
from .services import Services

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientApi(Protocol):
    """What differs between client APIs; everything else of the pipeline is theirs alike."""

    name: str  # recorded on the request's ledger entry and access line: "chat", "responses", "messages"

    def parse(self, body: bytes, limits: RequestLimits) -> tuple[dict[str, Any], RequestFacts]:
        """The body as the chat request upstreams take, and what was learned of it; InvalidRequest."""

    def completion(self, request: dict[str, Any], default: int) -> tuple[int, int]:
        """The tokens each choice of the answer may use, and how many choices are asked."""

    async def resolve(self, request: dict[str, Any], facts: RequestFacts, account_id: str,
                      store: Store) -> tuple[dict[str, Any], RequestFacts]:
        """The request with what it refers to that the account has stored (a Responses request's
        previous response and item references), read once the caller is known; what it read counts
        in the reservation as ``facts.history_bytes``."""

    def limit(self, request: dict[str, Any], tokens: int) -> None:
        """Limit each choice of the answer to ``tokens`` (what the balance can pay for)."""

    def answer(self, model: str, request_id: str, estimate: Callable[[int], Usage]) -> Callable[[bytes, Dialect], tuple[bytes, Usage | None]]:
        """How a non-stream upstream body (and its provider's dialect) becomes this API's answer and
        the usage it shows; MalformedUpstream on a body it cannot read."""

    def rewriter(self, request: dict[str, Any], model: str, request_id: str,
                 estimate: Callable[[int], Usage]) -> Callable[[Dialect], StreamRewriter]:
        """What reads the upstream's stream (with its provider's dialect): an object with the chat
        ``StreamRewriter``'s interface whose output is this API's events."""

    def events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream's bytes for the caller: the rewritten chat chunks themselves, unchanged, then
        any of its own (the chunks may be relayed under it, straight from the upstream)."""

    def error_event(self, error: GatewayError) -> bytes:
        """The event that ends a stream that failed after it began."""


class Call:
    """What the HTTP layer hands the pipeline of one request: its body, the headers the pipeline
    reads, the caller's address, and whether the caller has hung up."""

    __slots__ = ("body", "content_type", "authorization", "peer", "forwarded_for", "gone")

    def __init__(self, body: bytes, content_type: str, authorization: str | None, peer: str | None,
                 forwarded_for: str | None, gone: Callable[[], bool] = lambda: False) -> None:
        self.body = body
        self.content_type = content_type
        self.authorization = authorization
        self.peer = peer
        self.forwarded_for = forwarded_for
        self.gone = gone


class Events:
    """A streamed answer: send ``headers``, then every piece of ``chunks``. A GatewayError that
    ``chunks`` raises after the stream began is sent as ``fail(error)``'s event, which ends it;
    ``close()`` lets go of the upstream however the stream ended."""

    __slots__ = ("chunks", "headers", "_exchange", "_api", "_upstream", "_services")
    content_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], exchange: Exchange, api: ClientApi, upstream: UpstreamStream,
                 services: Services) -> None:
        self.chunks = chunks
        self.headers = {**exchange.headers, **STREAM_HEADERS}
        self._exchange = exchange
        self._api = api
        self._upstream = upstream
        self._services = services

    def fail(self, error: GatewayError) -> bytes:
        self._exchange.failed(error)
        return self._api.error_event(error)

    @property
    def upstream(self) -> UpstreamStream:
        """The upstream stream, whose pieces ``chunks`` gives first and unchanged."""
        return self._upstream

    @property
    def relayed(self) -> StreamRewriter | None:
        """The rewriter of the upstream's pieces when ``chunks`` are those pieces themselves: once its
        ``done`` is set, the piece just given was the last."""
        return self._upstream.rewriter if self.chunks is self._upstream else None

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this stream (not while draining)."""
        return not self._services.draining

    def close(self) -> None:
        self._upstream.close()


async def serve(services: Services, api: ClientApi, exchange: Exchange, call: Call) -> bytes | Events:
    """One chat request through the gateway: the answer's bytes, or its ``Events``."""
    if not call.content_type.lower().startswith("application/json"):
        raise InvalidRequest(
            "Send the request body as JSON with 'Content-Type: application/json'.",
            param="content-type",
            code="invalid_content_type",
        )
    admission = services.admission
    key = await admission.key(call.authorization, call.peer, call.forwarded_for)
    exchange.key_id, exchange.account_id = key.id, key.account_id
    admission.refuse_if_full(key)  # a retry loop against a full window costs no parsing, no store
    body, facts = api.parse(call.body, services.settings.request_limits)
    body, facts = await api.resolve(body, facts, key.account_id, services.store)
    model = services.settings.models.get(body["model"])
    if model is None or not key.allows(model.id):
        raise ModelNotFound(f"The model '{body['model']}' does not exist or you do not have access to it.", param="model")
    if facts.first_image is not None and not model.vision:
        raise InvalidRequest(
            "Invalid content type. image_url is only supported by certain models.",
            param=facts.first_image,
            code="invalid_content_type",
        )
    exchange.admitted(model.id, body)
    decision = await admission.limit(key)
    exchange.headers.update(decision.headers())
    completion, choices = api.completion(body, model.default_completion_tokens)
    exchange.prompt_bytes += facts.history_bytes
    prompt = prompt_need(len(call.body) + facts.history_bytes, facts.image_bytes, facts.images, services.guard_bytes)
    reservation = exchange.reservation = await admission.reserve(key, prompt, completion, choices)
    if reservation.tokens < prompt + completion * choices:
        # The balance (or the key's cap) holds less than the answer allowed: the answer is limited
        # to what it holds.
        api.limit(body, (reservation.tokens - prompt) // choices)
    _still_wanted(call, exchange.task)  # a reservation taken for a caller who left goes back with the exchange
    if exchange.stream:
        return await _stream(services, api, model, body, exchange)
    out, exchange.usage, exchange.response_bytes = await services.upstream.complete(
        model, body, exchange.request_id, exchange.attempts, exchange.completion_id,
        api.answer(model.id, exchange.request_id, exchange.estimate),
    )
    return out


def _still_wanted(call: Call, task: asyncio.Task | None) -> None:
    """A caller who hung up during admission gets no upstream call, even where a store driver
    swallowed the cancellation of its ``task``."""
    if call.gone() or (task is not None and task.cancelling()):
        raise asyncio.CancelledError()


async def _stream(services: Services, api: ClientApi, model: PublicModel, body: dict, exchange: Exchange) -> Events:
    upstream = exchange.upstream = await services.upstream.stream(
        model, body, exchange.request_id, exchange.attempts,
        api.rewriter(body, model.id, exchange.request_id, exchange.estimate),
    )
    return Events(api.events(upstream), exchange, api, upstream, services)
