"""The Messages request schema: one pydantic-core pass over the raw body, its failures phrased as
Anthropic phrases them: the dotted path of the field (union tags included, as in
``messages.2.content.0.text.foo``), a colon, and pydantic's own words."""
from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from ...errors import InvalidRequest

INT64 = 2**63 - 1
# Labels of the plain (untagged) unions: they appear in an error's location but not in the caller's
# document, so they are left out of the path; a tagged union's tag stays in it, as Anthropic writes.
_STR, _LIST = "\x00str", "\x00list"
_LABELS = frozenset((_STR, _LIST))


def _opt(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(cs.nullable_schema(schema), required=False)


def _req(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(schema, required=True)


def _obj(fields: dict[str, cs.TypedDictField]) -> cs.CoreSchema:
    """An object with these fields and no others. When it has more keys than fields, the first
    unknown key is reported alone before the object is validated: a body of a million unknown keys
    costs one error, not a million."""
    schema = cs.typed_dict_schema(fields, extra_behavior="forbid")
    known = frozenset(fields)
    limit = len(fields)

    def few_enough_keys(value: Any) -> Any:
        if type(value) is dict and len(value) > limit:
            unknown = next(k for k in value if k not in known)
            raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted", {"field": unknown})
        return value

    return cs.no_info_before_validator_function(few_enough_keys, schema)


def _list(items: cs.CoreSchema, **constraints: int) -> cs.ListSchema:
    """An array; validation stops at the first bad item, so a long bad array costs one error."""
    return cs.list_schema(items, strict=True, fail_fast=True, **constraints)


def _lit(*values: str) -> cs.LiteralSchema:
    return cs.literal_schema(list(values))


def _refused(message: str) -> cs.CoreSchema:
    """A field this gateway knows of and cannot serve: any value is refused with ``message``."""

    def refuse(value: Any) -> Any:
        raise PydanticCustomError("unsupported", message)

    return cs.no_info_plain_validator_function(refuse)


_str = cs.str_schema(strict=True)
_text = cs.str_schema(strict=True, min_length=1)
_bool = cs.bool_schema(strict=True)
_any = cs.any_schema()
_any_obj = cs.dict_schema(cs.str_schema(strict=True), _any, strict=True, fail_fast=True)
# cache_control is accepted wherever Anthropic takes it (any keys: clients send new ones, such as a
# scope); the targets cache prompts on their own, so it is never sent on.
_cache = _opt(_any_obj)


def _tagged(choices: dict[str, cs.CoreSchema]) -> cs.CoreSchema:
    return cs.tagged_union_schema(choices, discriminator="type")


TEXT = _obj({"type": _req(_lit("text")), "text": _req(_str), "cache_control": _cache, "citations": _opt(_list(_any))})

_image_source = _tagged({
    "base64": _obj({
        "type": _req(_lit("base64")),
        "media_type": _req(_lit("image/jpeg", "image/png", "image/gif", "image/webp")),
        "data": _req(_text),
    }),
    "url": _obj({"type": _req(_lit("url")), "url": _req(_text)}),
    "file": _obj({"type": _req(_lit("file")), "file_id": _req(_str)}),
})
IMAGE = _obj({
    "type": _req(_lit("image")), "source": _req(_image_source), "cache_control": _cache, "transformations": _opt(_any),
})

_document_source = _tagged({
    "text": _obj({"type": _req(_lit("text")), "media_type": _req(_lit("text/plain")), "data": _req(_str)}),
    "content": _obj({"type": _req(_lit("content")), "content": _req(cs.union_schema([
        (_str, _STR), (_list(_tagged({"text": TEXT, "image": IMAGE})), _LIST),
    ]))}),
    "base64": _obj({"type": _req(_lit("base64")), "media_type": _req(_str), "data": _req(_str)}),
    "url": _obj({"type": _req(_lit("url")), "url": _req(_str)}),
    "file": _obj({"type": _req(_lit("file")), "file_id": _req(_str)}),
})
DOCUMENT = _obj({
    "type": _req(_lit("document")), "source": _req(_document_source), "cache_control": _cache,
    "citations": _opt(_any), "context": _opt(_str), "title": _opt(_str),
})

TOOL_USE = _obj({
    "type": _req(_lit("tool_use")),
    "id": _req(_text),
    "name": _req(_text),
    "input": _req(_any_obj),
    "cache_control": _cache,
    "caller": _opt(_any),
    "toolset_name": _opt(_str),
})
TOOL_RESULT = _obj({
    "type": _req(_lit("tool_result")),
    "tool_use_id": _req(_text),
    "content": _opt(cs.union_schema([
        (_str, _STR), (_list(_tagged({"text": TEXT, "image": IMAGE, "document": DOCUMENT})), _LIST),
    ])),
    "is_error": _opt(_bool),
    "cache_control": _cache,
    "toolset_name": _opt(_str),
})
THINKING = _obj({"type": _req(_lit("thinking")), "thinking": _req(_str), "signature": _req(_str)})
REDACTED_THINKING = _obj({"type": _req(_lit("redacted_thinking")), "data": _req(_str)})

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
MESSAGE = _obj({
    "role": _req(_lit("user", "assistant", "system")),
    "content": _req(cs.union_schema([(_str, _STR), (_list(_block), _LIST)])),
})

_CUSTOM_TOOL = _obj({
    "type": _opt(_lit("custom")),
    "name": _req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": _opt(_str),
    "input_schema": _req(_any_obj),
    "cache_control": _cache,
    "strict": _opt(_bool),
    "eager_input_streaming": _opt(_bool),
    "defer_loading": _opt(_bool),
    "input_examples": _opt(_list(_any)),
    "allowed_callers": _opt(_list(_any)),
})


def _tool_kind(value: Any) -> str | None:
    """A tool without a type (or of type "custom") is a client tool; any other type names a server
    tool, which no target runs (its tag is reported as not among the expected ones)."""
    if type(value) is not dict:
        return None
    kind = value.get("type")
    return "custom" if kind is None or kind == "custom" else str(kind)


TOOL = cs.tagged_union_schema({"custom": _CUSTOM_TOOL}, discriminator=_tool_kind)

_parallel = {"disable_parallel_tool_use": _opt(_bool)}
TOOL_CHOICE = _tagged({
    "auto": _obj({"type": _req(_lit("auto")), **_parallel}),
    "any": _obj({"type": _req(_lit("any")), **_parallel}),
    "tool": _obj({"type": _req(_lit("tool")), "name": _req(_text), **_parallel}),
    "none": _obj({"type": _req(_lit("none"))}),
})
_display = {"display": _opt(_lit("summarized", "omitted"))}
THINKING_CONFIG = _tagged({
    "enabled": _obj({"type": _req(_lit("enabled")), "budget_tokens": _req(cs.int_schema(ge=1024, le=INT64, strict=True)), **_display}),
    "adaptive": _obj({"type": _req(_lit("adaptive")), **_display}),
    "disabled": _obj({"type": _req(_lit("disabled"))}),
})
JSON_FORMAT = _obj({"type": _req(_lit("json_schema")), "schema": _req(_any_obj)})
OUTPUT_CONFIG = _obj({"effort": _opt(_lit("low", "medium", "high", "xhigh", "max")), "format": _opt(JSON_FORMAT)})


def _fields(max_tokens_required: bool) -> dict[str, cs.TypedDictField]:
    return {
        "model": _req(_text),
        "max_tokens": cs.typed_dict_field(cs.int_schema(ge=1, le=INT64, strict=True), required=max_tokens_required),
        "messages": _req(_list(MESSAGE, min_length=1)),
        "system": _opt(cs.union_schema([(_str, _STR), (_list(_tagged({"text": TEXT})), _LIST)])),
        "metadata": _opt(_obj({"user_id": _opt(cs.str_schema(strict=True, max_length=256))})),
        "stop_sequences": _opt(_list(_str)),
        "stream": _opt(_bool),
        "temperature": _opt(cs.float_schema(ge=0, le=1, strict=True, allow_inf_nan=False)),
        "top_p": _opt(cs.float_schema(ge=0, le=1, strict=True, allow_inf_nan=False)),
        "top_k": _opt(cs.int_schema(ge=0, le=INT64, strict=True)),
        "tools": _opt(_list(TOOL)),
        "tool_choice": _opt(TOOL_CHOICE),
        "thinking": _opt(THINKING_CONFIG),
        "output_config": _opt(OUTPUT_CONFIG),
        "output_format": _opt(JSON_FORMAT),
        "service_tier": _opt(_lit("auto", "standard_only")),
        "context_management": _opt(_any_obj),
        "cache_control": _cache,
        "container": _opt(_refused("Containers are not supported: no model of this gateway runs code on its side.")),
        "mcp_servers": _opt(_refused("MCP servers are not supported: connect them to your client and pass their tools as client tools.")),
    }


REQUEST = _obj(_fields(max_tokens_required=True))
# count_tokens takes the same body, without max_tokens.
COUNT = _obj(_fields(max_tokens_required=False))
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
