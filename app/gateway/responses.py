"""The Responses API on the chat pipeline (gateway/pipeline.py): a request resolved against the
account's stored responses, its answer and events translated (wire/responses/), the response stored
when ``store`` is set; and stored responses read back and deleted.

A response is stored once its answer is complete and before the caller is told so (before the
terminal event, or the non-stream body), so the next request of a chain always finds it; a store
failure then is logged and the answer still served. The ledger entry does not wait for it, and a
crash may lose a stored response, never the entry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

import orjson

from ..core.config import RequestLimits
from ..core.errors import GatewayError, InvalidRequest, ModelNotFound, NotFound
from ..store import Store
from ..store.contracts.responses import StoredResponse
from ..wire.chat import RequestFacts
from ..wire.responses import items
from ..wire.responses.output import Frame, completion_output, usage_object
from ..wire.responses.request import parse_responses_request
from ..wire.responses.stream import ResponsesStream
from ..wire.responses.translate import ChatRequest, to_chat
from ..wire.rewrite import Dialect, read_completion
from ..wire.usage import Usage, estimate_tokens
from .exchange import Exchange

log = logging.getLogger("zowy.responses")


class ResponsesApi:
    """One Responses API request through the pipeline: a ``ClientApi`` with the request's own state
    (its echo, tools, the reader of its stream), made per request."""

    name = "responses"

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        settings = exchange.services.settings
        self._ttl = settings.responses_ttl
        self._timeout = settings.store_timeout
        self._request: dict[str, Any] = {}
        self._limits = RequestLimits()
        self._chat: ChatRequest | None = None
        self._frame: Frame | None = None
        self._reader: ResponsesStream | None = None
        self._chain: tuple[str, ...] = ()
        self._resolved: dict[str, dict] = {}
        self._account_id = ""
        self._store: Store | None = None
        self.response: dict | None = None  # the non-stream response object, once answered

    # the request

    def parse(self, body: bytes, limits: RequestLimits) -> tuple[dict[str, Any], RequestFacts]:
        request = self._request = parse_responses_request(body, limits)
        self._limits = limits
        self._frame = Frame(request, request["model"], self.exchange.request_id)
        if self._refers():
            return {"model": request["model"], "stream": bool(request.get("stream"))}, RequestFacts()
        self._chat = to_chat(request, limits=limits)
        return self._chat.body, self._chat.facts

    def _refers(self) -> bool:
        request = self._request
        if request.get("previous_response_id") is not None:
            return True
        inputs = request.get("input")
        return type(inputs) is list and any(items.kind(item) == "item_reference" for item in inputs)

    async def resolve(self, request: dict[str, Any], facts: RequestFacts, account_id: str,
                      store: Store) -> tuple[dict[str, Any], RequestFacts]:
        """Read the previous response's chain and the referenced items, then translate."""
        self._account_id, self._store = account_id, store
        if self._chat is not None:
            return request, facts
        now = time.time()
        previous_id = self._request.get("previous_response_id")
        references = [i["id"] for i in self._request.get("input") or () if type(i) is dict and items.kind(i) == "item_reference"]
        wanted = {items.response_of(r) for r in references} - {None}
        if previous_id is not None:
            wanted.add(previous_id)
        found = {s.id: s for s in await store.stored_responses(account_id, sorted(wanted), now)} if wanted else {}
        history: list[dict] = []
        history_bytes = 0
        if previous_id is not None:
            previous = found.get(previous_id)
            if previous is None:
                raise InvalidRequest(
                    f"Previous response with id '{previous_id}' not found.",
                    param="previous_response_id", code="previous_response_not_found",
                )
            chain = [*previous.chain, previous.id]
            older = {s.id: s for s in await store.stored_responses(account_id, previous.chain, now)} if previous.chain else {}
            older[previous.id] = previous
            stored = [older[i] for i in chain if i in older]  # a deleted or expired link is left out
            history = items.conversation((orjson.loads(s.input), orjson.loads(s.response)["output"]) for s in stored)
            history_bytes = sum(len(s.input) + len(s.response) for s in stored)
            self._chain = tuple(chain)
        for reference in references:
            holder = found.get(items.response_of(reference) or "")
            if holder is not None:
                item = items.find(reference, orjson.loads(holder.input), orjson.loads(holder.response)["output"])
                if item is not None:
                    self._resolved[reference] = item
        self._chat = to_chat(self._request, history, self._resolved.get, self._limits)
        base = self._chat.facts
        return self._chat.body, RequestFacts(base.first_image, base.images, base.image_bytes, base.text_chars, history_bytes)

    @staticmethod
    def completion(request: dict[str, Any], default: int) -> tuple[int, int]:
        return request.get("max_completion_tokens") or default, 1

    @staticmethod
    def limit(request: dict[str, Any], tokens: int) -> None:
        request["max_completion_tokens"] = tokens

    # the answer

    def rewriter(self, request: dict[str, Any], model: str, request_id: str,
                 estimate: Callable[[int], Usage]) -> Callable[[Dialect], ResponsesStream]:
        """The upstream stream read straight into Responses events (one parse per upstream event)."""
        logprobs = "message.output_text.logprobs" in (self._request.get("include") or ())

        def reader(dialect: Dialect) -> ResponsesStream:
            self._reader = ResponsesStream(self._frame, self._chat.tools, dialect, estimate, logprobs, hold=self._frame.store)
            return self._reader

        return reader

    def events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The translated chunks themselves, relayed as chat's are, unless the response is stored:
        then its terminal event follows its storing."""
        return self._terminal_after_store(chunks) if self._frame.store else chunks

    async def _terminal_after_store(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk
        reader = self._reader
        if reader is not None and reader.terminal:
            await self._save(reader.response)
            yield reader.terminal

    def answer(self, model: str, request_id: str, estimate: Callable[[int], Usage]) -> Callable[[bytes, Dialect], tuple[bytes, Usage | None]]:
        """The response object of a non-stream upstream answer, read once; without upstream usage it
        shows the estimate that is billed."""

        def read(raw: bytes, dialect: Dialect) -> tuple[bytes, Usage | None]:
            doc = read_completion(raw, self._frame.id, dialect)
            output, incomplete = completion_output(doc, self._frame.ids, self._chat.tools)
            usage = Usage.from_upstream(doc.get("usage")) or estimate(estimate_tokens(len(raw)))
            self.response = self._frame.response("incomplete" if incomplete else "completed", output,
                                                 usage_object(usage), incomplete=incomplete)
            return orjson.dumps(self.response), usage

        return read

    @staticmethod
    def refusal(error: GatewayError) -> GatewayError:
        """An unknown model is a 400 on the Responses API (recorded), not chat's 404."""
        if isinstance(error, ModelNotFound):
            return InvalidRequest(error.message, param="model", code="model_not_found")
        return error

    async def store_answer(self) -> None:
        """Store the non-stream response (when ``store``), before the caller gets it."""
        if self.response is not None and self._frame.store:
            await self._save(self.response)

    def error_event(self, error: GatewayError) -> bytes:
        reader = self._reader
        if reader is None:
            return b""
        return reader.failed("server_error", error.message)

    async def _save(self, response: dict) -> None:
        store = self._store
        if store is None:
            return
        now = time.time()
        stored = StoredResponse(
            self._frame.id, self._account_id, now, now + self._ttl, self._chain, orjson.dumps(response),
            orjson.dumps(items.input_items(self._request, self.exchange.request_id, self._resolved.get)),
        )
        try:
            async with asyncio.timeout(self._timeout):
                await store.save_response(stored)
        except (GatewayError, TimeoutError) as exc:
            log.warning("response %s not stored: %s", stored.id, exc)


# stored responses, read back


async def _stored(store: Store, account_id: str, response_id: str) -> StoredResponse:
    found = await store.stored_responses(account_id, [response_id], time.time())
    if not found:
        raise NotFound(f"Response with id '{response_id}' not found.")
    return found[0]


async def retrieve(store: Store, account_id: str, response_id: str) -> bytes:
    """The stored response object; 404 for an id the account does not hold (another's included)."""
    return (await _stored(store, account_id, response_id)).response


async def input_items(store: Store, account_id: str, response_id: str, args: dict[str, Any]) -> bytes:
    """A page of the stored response's input items."""
    stored = await _stored(store, account_id, response_id)
    return orjson.dumps(items.page(orjson.loads(stored.input), args.get("limit"), args.get("order"), args.get("after")))


async def delete(store: Store, account_id: str, response_id: str) -> bytes:
    if not await store.delete_response(account_id, response_id, time.time()):
        raise NotFound(f"Response with id '{response_id}' not found.")
    return orjson.dumps(items.deleted(response_id))
