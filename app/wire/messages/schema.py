"""The Messages request schema: one pydantic-core pass over the raw body, its failures phrased as
Anthropic phrases them: the dotted path of the field (union tags included, as in
``messages.2.content.0.text.foo``), a colon, and pydantic's own words."""
from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from ...core.errors import InvalidRequest
from ..validation import ANY_OBJECT, BOOLEAN, STRING, array, integer, literal, number, obj, opt, req

# Labels of the plain (untagged) unions: they appear in an error's location but not in the caller's
# document, so they are left out of the path; a tagged union's tag stays in it, as Anthropic writes.
_STR, _LIST = "\x00str", "\x00list"
_LABELS = frozenset((_STR, _LIST))


def _refused(message: str) -> cs.CoreSchema:
    """A field this gateway knows of and cannot serve: any value is refused with ``message``."""

    def refuse(value: Any) -> Any:
        raise PydanticCustomError("unsupported", message)

    return cs.no_info_plain_validator_function(refuse)


_text = cs.str_schema(strict=True, min_length=1)
_any = cs.any_schema()
# cache_control is accepted wherever Anthropic takes it (any keys: clients send new ones, such as a
# scope); the targets cache prompts on their own, so it is never sent on.
_cache = opt(ANY_OBJECT)


def _tagged(choices: dict[str, cs.CoreSchema]) -> cs.CoreSchema:
    return cs.tagged_union_schema(choices, discriminator="type")


TEXT = obj({"type": req(literal("text")), "text": req(STRING), "cache_control": _cache, "citations": opt(array(_any))})

_image_source = _tagged({
    "base64": obj({
        "type": req(literal("base64")),
        "media_type": req(literal("image/jpeg", "image/png", "image/gif", "image/webp")),
        "data": req(_text),
    }),
    "url": obj({"type": req(literal("url")), "url": req(_text)}),
    "file": obj({"type": req(literal("file")), "file_id": req(STRING)}),
})
IMAGE = obj({
    "type": req(literal("image")), "source": req(_image_source), "cache_control": _cache, "transformations": opt(_any),
})

_document_source = _tagged({
    "text": obj({"type": req(literal("text")), "media_type": req(literal("text/plain")), "data": req(STRING)}),
    "content": obj({"type": req(literal("content")), "content": req(cs.union_schema([
        (STRING, _STR), (array(_tagged({"text": TEXT, "image": IMAGE})), _LIST),
    ]))}),
    "base64": obj({"type": req(literal("base64")), "media_type": req(STRING), "data": req(STRING)}),
    "url": obj({"type": req(literal("url")), "url": req(STRING)}),
    "file": obj({"type": req(literal("file")), "file_id": req(STRING)}),
})
DOCUMENT = obj({
    "type": req(literal("document")), "source": req(_document_source), "cache_control": _cache,
    "citations": opt(_any), "context": opt(STRING), "title": opt(STRING),
})

TOOL_USE = obj({
    "type": req(literal("tool_use")),
    "id": req(_text),
    "name": req(_text),
    "input": req(ANY_OBJECT),
    "cache_control": _cache,
    "caller": opt(_any),
    "toolset_name": opt(STRING),
})
TOOL_RESULT = obj({
    "type": req(literal("tool_result")),
    "tool_use_id": req(_text),
    "content": opt(cs.union_schema([
        (STRING, _STR), (array(_tagged({"text": TEXT, "image": IMAGE, "document": DOCUMENT})), _LIST),
    ])),
    "is_error": opt(BOOLEAN),
    "cache_control": _cache,
    "toolset_name": opt(STRING),
})
THINKING = obj({"type": req(literal("thinking")), "thinking": req(STRING), "signature": req(STRING)})
REDACTED_THINKING = obj({"type": req(literal("redacted_thinking")), "data": req(STRING)})

_block = _tagged({
    "text": TEXT,
    "image": IMAGE,
    "document": DOCUMENT,
    "tool_use": TOOL_USE,
    "tool_result": TOOL_RESULT,
    "thinking": THINKING,
    "redacted_thinking": REDACTED_THINKING,
})
# Claude Code sends role "system" entries inside messages (for model names it does not know).
MESSAGE = obj({
    "role": req(literal("user", "assistant", "system")),
    "content": req(cs.union_schema([(STRING, _STR), (array(_block), _LIST)])),
})

_CUSTOM_TOOL = obj({
    "type": opt(literal("custom")),
    "name": req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": opt(STRING),
    "input_schema": req(ANY_OBJECT),
    "cache_control": _cache,
    "strict": opt(BOOLEAN),
    "eager_input_streaming": opt(BOOLEAN),
    "defer_loading": opt(BOOLEAN),
    "input_examples": opt(array(_any)),
    "allowed_callers": opt(array(_any)),
})


def _tool_kind(value: Any) -> str | None:
    """A tool without a type (or of type "custom") is a client tool; any other type names a server
    tool, which no target runs (its tag is reported as not among the expected ones)."""
    if type(value) is not dict:
        return None
    kind = value.get("type")
    return "custom" if kind is None or kind == "custom" else str(kind)


TOOL = cs.tagged_union_schema({"custom": _CUSTOM_TOOL}, discriminator=_tool_kind)

_parallel = {"disable_parallel_tool_use": opt(BOOLEAN)}
TOOL_CHOICE = _tagged({
    "auto": obj({"type": req(literal("auto")), **_parallel}),
    "any": obj({"type": req(literal("any")), **_parallel}),
    "tool": obj({"type": req(literal("tool")), "name": req(_text), **_parallel}),
    "none": obj({"type": req(literal("none"))}),
})
_display = {"display": opt(literal("summarized", "omitted"))}
THINKING_CONFIG = _tagged({
    "enabled": obj({"type": req(literal("enabled")), "budget_tokens": req(integer(1024)), **_display}),
    "adaptive": obj({"type": req(literal("adaptive")), **_display}),
    "disabled": obj({"type": req(literal("disabled"))}),
})
JSON_FORMAT = obj({"type": req(literal("json_schema")), "schema": req(ANY_OBJECT)})
OUTPUT_CONFIG = obj({"effort": opt(literal("low", "medium", "high", "xhigh", "max")), "format": opt(JSON_FORMAT)})


def _fields(max_tokens_required: bool) -> dict[str, cs.TypedDictField]:
    return {
        "model": req(_text),
        "max_tokens": cs.typed_dict_field(integer(1), required=max_tokens_required),
        "messages": req(array(MESSAGE, min_length=1)),
        "system": opt(cs.union_schema([(STRING, _STR), (array(_tagged({"text": TEXT})), _LIST)])),
        "metadata": opt(obj({"user_id": opt(cs.str_schema(strict=True, max_length=256))})),
        "stop_sequences": opt(array(STRING)),
        "stream": opt(BOOLEAN),
        "temperature": opt(number(0, 1)),
        "top_p": opt(number(0, 1)),
        "top_k": opt(integer(0)),
        "tools": opt(array(TOOL)),
        "tool_choice": opt(TOOL_CHOICE),
        "thinking": opt(THINKING_CONFIG),
        "output_config": opt(OUTPUT_CONFIG),
        "output_format": opt(JSON_FORMAT),
        "service_tier": opt(literal("auto", "standard_only")),
        "context_management": opt(ANY_OBJECT),
        "cache_control": _cache,
        "container": opt(_refused("Containers are not supported: no model of this gateway runs code on its side.")),
        "mcp_servers": opt(_refused("MCP servers are not supported: connect them to your client and pass their tools as client tools.")),
    }


REQUEST = obj(_fields(max_tokens_required=True))
# count_tokens takes the same body, without max_tokens.
COUNT = obj(_fields(max_tokens_required=False))
_validators = {id(REQUEST): SchemaValidator(REQUEST), id(COUNT): SchemaValidator(COUNT)}


def validate(body: bytes, schema: cs.CoreSchema = REQUEST) -> dict[str, Any]:
    """The body as a dict if it fits ``schema``; else InvalidRequest naming the field."""
    try:
        return _validators[id(schema)].validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> InvalidRequest:
    """The most specific error of a failed validation, as Anthropic phrases it."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(
            f"There was an issue with the request body: {first['ctx']['error']}. Send a JSON object "
            "with 'Content-Type: application/json'.",
            param="body", code="invalid_json",
        )
    if first["type"] == "dict_type" and not first["loc"]:
        return InvalidRequest("body: Input should be an object", param="body", code="invalid_json")
    best = max(errors, key=lambda e: (len(_path(e["loc"])), _rank(e)))
    parts = _path(best["loc"])
    kind = best["type"]
    ctx = best.get("ctx") or {}
    message = best["msg"]
    if kind == "extra_forbidden" and "field" in ctx:
        parts.append(ctx["field"])
    elif kind == "union_tag_not_found":
        parts.append("type")
        message = "Field required"
    elif kind == "union_tag_invalid":
        parts.append("type")
        if parts[0] == "tools" and len(parts) == 3:
            message = (
                f"Tool type '{ctx.get('tag')}' is not supported: only client tools (a name, a description and an "
                "input_schema) can be served. Leave server tools out of 'tools'."
            )
    path = ".".join(str(p) for p in parts)
    return InvalidRequest(f"{path}: {message}", param=path, code="unknown_parameter" if kind == "extra_forbidden" else None)


def _path(loc: tuple) -> list:
    return [item for item in loc if item not in _LABELS]


def _rank(error: dict) -> int:
    """Among errors at the same depth, which says most: a wrong value, then a missing or unknown
    field, then a wrong type (a plain union reports one type error per choice)."""
    kind = error["type"]
    if kind in ("missing", "extra_forbidden"):
        return 1
    return 0 if kind.endswith("_type") else 2
