"""The Messages API at the edges of the chat pipeline (gateway/pipeline.py): its body becomes the
chat request, the upstream's answer becomes its message, the upstream's stream its events, and
every failure its error envelope."""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from ...core.errors import GatewayError, InvalidApiKey
from ..chat import nothing_stored
from ..rewrite import Dialect, read_completion
from ..usage import Usage
from .answer import message_from_completion
from .errors import envelope, error_event
from .request import parse_messages_request
from .stream import MessagesStream

# How a key is passed here: Anthropic's header, or a bearer token.
_BEARER = "'Authorization: Bearer <key>'"
_EITHER = "'x-api-key: <key>' or 'Authorization: Bearer <key>'"


class MessagesApi:
    __slots__ = ()

    name = "messages"
    parse = staticmethod(parse_messages_request)

    @staticmethod
    def completion(request: dict[str, Any], default: int) -> tuple[int, int]:
        """max_tokens is required: the answer may use that many tokens, in one choice."""
        return request.get("max_tokens") or default, 1

    @staticmethod
    def limit(request: dict[str, Any], tokens: int) -> None:
        request["max_tokens"] = tokens

    resolve = staticmethod(nothing_stored)

    @staticmethod
    def answer(model: str, request_id: str, estimate: Callable[[int], Usage]) -> Callable[[bytes, Dialect], tuple[bytes, Usage | None]]:
        """The message object of the upstream's completion, and the usage it shows (the estimate that
        is billed when the upstream reported none)."""

        def answer(raw: bytes, dialect: Dialect) -> tuple[bytes, Usage | None]:
            doc = read_completion(raw, "chatcmpl-" + request_id, dialect)
            return message_from_completion(doc, model, request_id, estimate)

        return answer

    @staticmethod
    def rewriter(request: dict[str, Any], model: str, request_id: str,
                 estimate: Callable[[int], Usage]) -> Callable[[Dialect], MessagesStream]:
        prompt = estimate(0).prompt_tokens  # what message_start shows until the upstream reports
        return lambda dialect: MessagesStream(model, request_id, dialect, estimate, prompt)

    @staticmethod
    def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return chunks

    @staticmethod
    def error_event(error: GatewayError) -> bytes:
        return error_event(error.status, error.message)

    @staticmethod
    def error_body(error: GatewayError, request_id: str | None) -> bytes:
        """A failure answered before any event, in Anthropic's envelope."""
        message = error.message.replace(_BEARER, _EITHER) if isinstance(error, InvalidApiKey) else error.message
        return envelope(error.status, message, request_id, error.param)


MESSAGES = MessagesApi()
