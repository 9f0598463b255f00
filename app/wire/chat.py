"""The Chat Completions API: its request validated in one pydantic-core pass over the raw body
bytes, and ``CHAT_COMPLETIONS``, the API as the chat pipeline takes it (gateway/pipeline.py).

``parse_chat_request(body)`` returns the validated request as a plain dict with what was learned of
it on the way, or raises ``InvalidRequest`` naming the offending field as OpenAI does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import orjson

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from ..core.config import RequestLimits
from ..core.errors import GatewayError, InvalidRequest
from .rewrite import Dialect, StreamRewriter, rewrite_completion
from .sse import format_event
from .usage import Usage
from .validation import (
    ANY_OBJECT,
    BOOLEAN,
    INT64,
    STRING,
    array,
    check_free_form,
    integer,
    invalid,
    literal,
    number,
    obj,
    opt,
    req,
)

ROLES = ("system", "developer", "user", "assistant", "tool")



_text_part = obj({"type": req(literal("text")), "text": req(STRING)})
_image_part = obj({
    "type": req(literal("image_url")),
    "image_url": req(obj({"url": req(cs.str_schema(strict=True, min_length=1)), "detail": opt(literal("auto", "low", "high"))})),
})
_refusal_part = obj({"type": req(literal("refusal")), "refusal": req(STRING)})
_part = cs.tagged_union_schema(
    {"text": _text_part, "image_url": _image_part, "refusal": _refusal_part}, discriminator="type"
)
_content = cs.union_schema([(STRING, "@text"), (array(_part), "@parts")])

# ``parsed_arguments``, ``index`` and a message's ``parsed`` are what the SDKs' own message objects
# carry when a caller sends one back; they are accepted and never sent upstream.
_function_call = obj({"name": req(STRING), "arguments": req(STRING), "parsed_arguments": opt(cs.any_schema())})
# Vendor fields a provider's answer carries and the next request must send back (Gemini's
# ``extra_content.google.thought_signature``): any JSON object, bounded in size.
_tool_call = obj({
    "index": opt(integer(0, 1024)),
    "id": req(STRING),
    "type": req(literal("function")),
    "function": req(_function_call),
    "extra_content": opt(ANY_OBJECT),
})

_message = obj({
    "role": req(literal(*ROLES)),
    "content": opt(_content),
    "name": opt(STRING),
    "tool_calls": opt(array(_tool_call)),
    "tool_call_id": opt(STRING),
    "refusal": opt(STRING),
    # Fields the SDKs echo back when a previous response message is sent again.
    "annotations": opt(array(cs.any_schema())),
    "audio": opt(cs.any_schema()),
    "function_call": opt(cs.any_schema()),
    "extra_content": opt(ANY_OBJECT),
    "thought_signature": opt(STRING),
    "parsed": opt(cs.any_schema()),
})

_function = obj({
    "name": req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": opt(STRING),
    "parameters": opt(ANY_OBJECT),
    "strict": opt(BOOLEAN),
})
_tool = obj({"type": req(literal("function")), "function": req(_function)})
_named_tool = obj({"type": req(literal("function")), "function": req(obj({"name": req(STRING)}))})
_tool_choice = cs.union_schema([(literal("auto", "none", "required"), "@mode"), (_named_tool, "@function")])

_json_schema = obj({
    "name": req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": opt(STRING),
    "schema": opt(ANY_OBJECT),
    "strict": opt(BOOLEAN),
})
_response_format = cs.tagged_union_schema(
    {
        "text": obj({"type": req(literal("text"))}),
        "json_object": obj({"type": req(literal("json_object"))}),
        "json_schema": obj({"type": req(literal("json_schema")), "json_schema": req(_json_schema)}),
    },
    discriminator="type",
)

CHAT_REQUEST_SCHEMA = obj({
    "model": req(cs.str_schema(strict=True, min_length=1)),
    "messages": req(array(_message, min_length=1)),
    "stream": opt(BOOLEAN),
    "stream_options": opt(obj({"include_usage": opt(BOOLEAN), "include_obfuscation": opt(BOOLEAN)})),
    "temperature": opt(number(0, 2)),
    "top_p": opt(number(0, 1)),
    "max_tokens": opt(integer(1)),
    "max_completion_tokens": opt(integer(1)),
    "n": opt(integer(1, 128)),
    "stop": opt(cs.union_schema([
        (STRING, "@text"),
        (array(STRING, max_length=4), "@list"),
    ])),
    "presence_penalty": opt(number(-2, 2)),
    "frequency_penalty": opt(number(-2, 2)),
    "logit_bias": opt(cs.dict_schema(cs.str_schema(strict=True, pattern=r"^\d+$"), number(-100, 100), strict=True, fail_fast=True)),
    "logprobs": opt(BOOLEAN),
    "top_logprobs": opt(integer(0, 20)),
    "seed": opt(integer(-INT64 - 1)),
    "user": opt(cs.str_schema(strict=True, max_length=256)),
    "tools": opt(array(_tool)),
    "tool_choice": opt(_tool_choice),
    "parallel_tool_calls": opt(BOOLEAN),
    "response_format": opt(_response_format),
    "metadata": opt(cs.dict_schema(cs.str_schema(strict=True, max_length=64), cs.str_schema(strict=True, max_length=512), max_length=16, strict=True, fail_fast=True)),
    "store": opt(BOOLEAN),
    "service_tier": opt(literal("auto", "default", "flex", "priority")),
    "reasoning_effort": opt(literal("none", "minimal", "low", "medium", "high")),
    "verbosity": opt(literal("low", "medium", "high")),
    "modalities": opt(array(literal("text"))),
    "prompt_cache_key": opt(STRING),
    "safety_identifier": opt(cs.str_schema(strict=True, max_length=256)),
})

_chat_validator = SchemaValidator(CHAT_REQUEST_SCHEMA)

_CONTENT_REQUIRED = frozenset(("system", "developer", "user", "tool"))




@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What validation learned of a request on its way: its images (where the first one is, and
    how many bytes of the body they take), how many characters of text it holds, and how many
    bytes its prompt holds beyond the body (a conversation it continues, read from the store)."""

    first_image: str | None = None
    images: int = 0
    image_bytes: int = 0
    text_chars: int = 0
    history_bytes: int = 0


def parse_chat_request(body: bytes, limits: RequestLimits = RequestLimits()) -> tuple[dict[str, Any], RequestFacts]:
    """Validate a chat completions body; return it as a dict with its facts, or raise InvalidRequest."""
    try:
        request = _chat_validator.validate_json(body)
    except ValidationError as exc:
        raise invalid(CHAT_REQUEST_SCHEMA, exc) from None
    facts = _check_messages(request["messages"], limits)
    if request.get("top_logprobs") is not None and not request.get("logprobs"):
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    tools = request.get("tools")
    if tools:
        if len(tools) > limits.tools:
            raise InvalidRequest(f"Too many tools: at most {limits.tools} are allowed.", param="tools", code="array_above_max_length")
        for i, tool in enumerate(tools):
            check_free_form(tool["function"].get("parameters"), f"tools[{i}].function.parameters")
    response_format = request.get("response_format")
    if response_format and response_format["type"] == "json_schema":
        check_free_form(response_format["json_schema"].get("schema"), "response_format.json_schema.schema")
    return request, facts


def check_vendor_field(value: dict | str, param: str, limits: RequestLimits) -> None:
    check_free_form(value, param)
    if len(orjson.dumps(value)) > limits.vendor_field_bytes:
        raise InvalidRequest(
            f"Invalid '{param}': larger than {limits.vendor_field_bytes} bytes.", param=param, code="vendor_field_too_large"
        )


def _check_messages(messages: list[dict], limits: RequestLimits) -> RequestFacts:
    """Role rules a schema cannot say (who needs content, which parts each role may send), and
    the configured size limits."""
    if len(messages) > limits.messages:
        raise InvalidRequest(
            f"Too many messages: at most {limits.messages} are allowed.", param="messages", code="array_above_max_length"
        )
    chars = images = image_bytes = 0
    first_image = None
    for i, message in enumerate(messages):
        role = message["role"]
        content = message.get("content")
        if role in _CONTENT_REQUIRED and content is None:
            raise InvalidRequest(f"Missing required parameter: 'messages[{i}].content'.", param=f"messages[{i}].content", code="missing_required_parameter")
        if role == "assistant" and content is None and not message.get("tool_calls") and not message.get("refusal"):
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].content' (an assistant message needs 'content' or 'tool_calls').",
                param=f"messages[{i}].content",
                code="missing_required_parameter",
            )
        if role == "tool" and not message.get("tool_call_id"):
            raise InvalidRequest(f"Missing required parameter: 'messages[{i}].tool_call_id'.", param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
        for echoed in ("audio", "function_call", "annotations"):
            if message.get(echoed) is not None:
                check_free_form(message[echoed], f"messages[{i}].{echoed}")
        if message.get("tool_calls") and role != "assistant":
            raise InvalidRequest(f"'messages[{i}].tool_calls' is only allowed on assistant messages.", param=f"messages[{i}].tool_calls")
        for vendor in ("extra_content", "thought_signature"):
            if message.get(vendor) is not None:
                if role != "assistant":
                    raise InvalidRequest(
                        f"Unrecognized parameter: 'messages[{i}].{vendor}' (only assistant messages carry it).",
                        param=f"messages[{i}].{vendor}", code="unknown_parameter",
                    )
                check_vendor_field(message[vendor], f"messages[{i}].{vendor}", limits)
        for k, call in enumerate(message.get("tool_calls") or ()):
            if call.get("extra_content") is not None:
                check_vendor_field(call["extra_content"], f"messages[{i}].tool_calls[{k}].extra_content", limits)
        if type(content) is str:
            chars += len(content)
        elif type(content) is list:
            allowed = _PARTS_BY_ROLE[role]
            for j, part in enumerate(content):
                kind = part["type"]
                if kind not in allowed:
                    raise InvalidRequest(
                        f"Invalid 'messages[{i}].content[{j}].type': '{kind}' parts are not allowed in {role} messages.",
                        param=f"messages[{i}].content[{j}].type",
                    )
                if kind == "text":
                    chars += len(part["text"])
                elif kind == "image_url":
                    url = part["image_url"]["url"]
                    check_image_url(url, f"messages[{i}].content[{j}].image_url.url", limits)
                    if first_image is None:
                        first_image = f"messages[{i}].content[{j}].type"
                    images += 1
                    image_bytes += len(url)
        if chars > limits.text_chars:
            raise InvalidRequest(
                f"The messages hold too much text: at most {limits.text_chars} characters are allowed.",
                param="messages",
                code="context_length_exceeded",
            )
    return RequestFacts(first_image, images, image_bytes, chars)


_PARTS_BY_ROLE = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}


def check_image_url(url: str, param: str, limits: RequestLimits) -> None:
    head = url[:11].lower()
    if head.startswith(("https://", "http://")):
        if len(url) > 8192:
            raise InvalidRequest(f"Invalid '{param}': the URL is longer than 8192 characters.", param=param)
        return
    if head.startswith("data:image/") and ";base64," in url[:100]:
        if len(url) > limits.image_url_bytes:
            raise InvalidRequest(
                f"Invalid '{param}': the image is larger than {limits.image_url_bytes} bytes.", param=param, code="image_too_large"
            )
        return
    raise InvalidRequest(
        f"Invalid '{param}': expected an http(s) URL or a base64 'data:image/...' URL.", param=param
    )


async def nothing_stored(request: dict[str, Any], facts: RequestFacts, account_id: str,
                         store: Any) -> tuple[dict[str, Any], RequestFacts]:
    """The request as it came: it refers to nothing the account has stored (the whole conversation
    comes with it)."""
    return request, facts


class ChatCompletions:
    """The Chat Completions API at the edges of the chat pipeline (gateway/pipeline.py): its request
    is already the chat request upstreams take, its answer and its stream are the rewritten upstream
    ones as they come, and its errors are OpenAI's envelope."""

    __slots__ = ()

    name = "chat"
    parse = staticmethod(parse_chat_request)

    @staticmethod
    def completion(request: dict[str, Any], default: int) -> tuple[int, int]:
        """The tokens each choice of the answer may use (its max_tokens, or the model's default), and
        how many choices are asked."""
        return request.get("max_completion_tokens") or request.get("max_tokens") or default, request.get("n") or 1

    @staticmethod
    def limit(request: dict[str, Any], tokens: int) -> None:
        """Limit each choice of the answer to ``tokens``, as a max_tokens of the caller's would (the
        target's own field is sent)."""
        request.pop("max_completion_tokens", None)
        request["max_tokens"] = tokens

    resolve = staticmethod(nothing_stored)

    @staticmethod
    def answer(model: str, request_id: str, estimate: Callable[[int], Usage]) -> Callable[[bytes, Dialect], tuple[bytes, Usage | None]]:
        """The upstream's completion with our identity (its usage as reported)."""
        completion_id = "chatcmpl-" + request_id
        return lambda raw, dialect: rewrite_completion(raw, model, completion_id, dialect)

    @staticmethod
    def rewriter(request: dict[str, Any], model: str, request_id: str,
                 estimate: Callable[[int], Usage]) -> Callable[[Dialect], StreamRewriter]:
        """The upstream's chunks with our identity; a usage chunk last when the caller asked for it."""
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        completion_id = "chatcmpl-" + request_id
        return lambda dialect: StreamRewriter(model, completion_id, include_usage, dialect, estimate)

    @staticmethod
    def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream's bytes for the caller: the rewritten chunks themselves."""
        return chunks

    @staticmethod
    def error_event(error: GatewayError) -> bytes:
        """The event that ends a stream that failed after it began."""
        return format_event(error.body())


CHAT_COMPLETIONS = ChatCompletions()
