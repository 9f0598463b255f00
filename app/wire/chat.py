"""Request validation for chat completions: one pydantic-core pass over the raw body bytes.

``parse_chat_request(body)`` returns the validated request as a plain dict with what was learned of
it on the way, or raises ``InvalidRequest`` naming the offending field as OpenAI does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from ..core.config import RequestLimits
from ..core.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant", "tool")
INT64 = 2**63 - 1


def _opt(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(cs.nullable_schema(schema), required=False)


def _req(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(schema, required=True)


def _obj(fields: dict[str, cs.TypedDictField], extra: str = "forbid") -> cs.CoreSchema:
    """An object with these fields. Unknown keys are refused; when there are more keys than fields
    (so some must be unknown) the first one is reported alone, before the object is validated, so
    a body of a million unknown keys costs one error, not a million."""
    schema = cs.typed_dict_schema(fields, extra_behavior=extra)
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


_str = cs.str_schema(strict=True)
_bool = cs.bool_schema(strict=True)
_any_obj = cs.dict_schema(cs.str_schema(strict=True), cs.any_schema(), strict=True, fail_fast=True)


def _lit(*values: str) -> cs.LiteralSchema:
    return cs.literal_schema(list(values))


def _float(lo: float, hi: float) -> cs.FloatSchema:
    return cs.float_schema(ge=lo, le=hi, strict=True, allow_inf_nan=False)


def _int(lo: int, hi: int = INT64) -> cs.IntSchema:
    return cs.int_schema(ge=lo, le=hi, strict=True)


_text_part = _obj({"type": _req(_lit("text")), "text": _req(_str)})
_image_part = _obj({
    "type": _req(_lit("image_url")),
    "image_url": _req(_obj({"url": _req(cs.str_schema(strict=True, min_length=1)), "detail": _opt(_lit("auto", "low", "high"))})),
})
_refusal_part = _obj({"type": _req(_lit("refusal")), "refusal": _req(_str)})
_part = cs.tagged_union_schema(
    {"text": _text_part, "image_url": _image_part, "refusal": _refusal_part}, discriminator="type"
)
_content = cs.union_schema([(_str, "@text"), (_list(_part), "@parts")])

# ``parsed_arguments``, ``index`` and a message's ``parsed`` are what the SDKs' own message objects
# carry when a caller sends one back; they are accepted and never sent upstream.
_function_call = _obj({"name": _req(_str), "arguments": _req(_str), "parsed_arguments": _opt(cs.any_schema())})
# Vendor fields a provider's answer carries and the next request must send back (Gemini's
# ``extra_content.google.thought_signature``): any JSON object, bounded in size.
_tool_call = _obj({
    "index": _opt(_int(0, 1024)),
    "id": _req(_str),
    "type": _req(_lit("function")),
    "function": _req(_function_call),
    "extra_content": _opt(_any_obj),
})

_message = _obj({
    "role": _req(_lit(*ROLES)),
    "content": _opt(_content),
    "name": _opt(_str),
    "tool_calls": _opt(_list(_tool_call)),
    "tool_call_id": _opt(_str),
    "refusal": _opt(_str),
    # Fields the SDKs echo back when a previous response message is sent again.
    "annotations": _opt(_list(cs.any_schema())),
    "audio": _opt(cs.any_schema()),
    "function_call": _opt(cs.any_schema()),
    "extra_content": _opt(_any_obj),
    "thought_signature": _opt(_str),
    "parsed": _opt(cs.any_schema()),
})

_function = _obj({
    "name": _req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": _opt(_str),
    "parameters": _opt(_any_obj),
    "strict": _opt(_bool),
})
_tool = _obj({"type": _req(_lit("function")), "function": _req(_function)})
_named_tool = _obj({"type": _req(_lit("function")), "function": _req(_obj({"name": _req(_str)}))})
_tool_choice = cs.union_schema([(_lit("auto", "none", "required"), "@mode"), (_named_tool, "@function")])

_json_schema = _obj({
    "name": _req(cs.str_schema(strict=True, pattern=r"^[a-zA-Z0-9_-]{1,64}$")),
    "description": _opt(_str),
    "schema": _opt(_any_obj),
    "strict": _opt(_bool),
})
_response_format = cs.tagged_union_schema(
    {
        "text": _obj({"type": _req(_lit("text"))}),
        "json_object": _obj({"type": _req(_lit("json_object"))}),
        "json_schema": _obj({"type": _req(_lit("json_schema")), "json_schema": _req(_json_schema)}),
    },
    discriminator="type",
)

CHAT_REQUEST_SCHEMA = _obj({
    "model": _req(cs.str_schema(strict=True, min_length=1)),
    "messages": _req(_list(_message, min_length=1)),
    "stream": _opt(_bool),
    "stream_options": _opt(_obj({"include_usage": _opt(_bool), "include_obfuscation": _opt(_bool)})),
    "temperature": _opt(_float(0, 2)),
    "top_p": _opt(_float(0, 1)),
    "max_tokens": _opt(_int(1)),
    "max_completion_tokens": _opt(_int(1)),
    "n": _opt(_int(1, 128)),
    "stop": _opt(cs.union_schema([
        (_str, "@text"),
        (_list(_str, max_length=4), "@list"),
    ])),
    "presence_penalty": _opt(_float(-2, 2)),
    "frequency_penalty": _opt(_float(-2, 2)),
    "logit_bias": _opt(cs.dict_schema(cs.str_schema(strict=True, pattern=r"^\d+$"), _float(-100, 100), strict=True, fail_fast=True)),
    "logprobs": _opt(_bool),
    "top_logprobs": _opt(_int(0, 20)),
    "seed": _opt(_int(-INT64 - 1)),
    "user": _opt(cs.str_schema(strict=True, max_length=256)),
    "tools": _opt(_list(_tool)),
    "tool_choice": _opt(_tool_choice),
    "parallel_tool_calls": _opt(_bool),
    "response_format": _opt(_response_format),
    "metadata": _opt(cs.dict_schema(cs.str_schema(strict=True, max_length=64), cs.str_schema(strict=True, max_length=512), max_length=16, strict=True, fail_fast=True)),
    "store": _opt(_bool),
    "service_tier": _opt(_lit("auto", "default", "flex", "priority")),
    "reasoning_effort": _opt(_lit("none", "minimal", "low", "medium", "high")),
    "verbosity": _opt(_lit("low", "medium", "high")),
    "modalities": _opt(_list(_lit("text"))),
    "prompt_cache_key": _opt(_str),
    "safety_identifier": _opt(cs.str_schema(strict=True, max_length=256)),
})

_chat_validator = SchemaValidator(CHAT_REQUEST_SCHEMA)

_CONTENT_REQUIRED = frozenset(("system", "developer", "user", "tool"))
_TYPE_NAMES = {
    "string_type": "a string",
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What validation learned of a request on its way: its images (where the first one is, and
    how many bytes of the body they take) and how many characters of text it holds."""

    first_image: str | None = None
    images: int = 0
    image_bytes: int = 0
    text_chars: int = 0


def parse_chat_request(body: bytes, limits: RequestLimits = RequestLimits()) -> tuple[dict[str, Any], RequestFacts]:
    """Validate a chat completions body; return it as a dict with its facts, or raise InvalidRequest."""
    try:
        request = _chat_validator.validate_json(body)
    except ValidationError as exc:
        raise _invalid(CHAT_REQUEST_SCHEMA, exc) from None
    facts = _check_messages(request["messages"], limits)
    if request.get("top_logprobs") is not None and not request.get("logprobs"):
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    tools = request.get("tools")
    if tools:
        if len(tools) > limits.tools:
            raise InvalidRequest(f"Too many tools: at most {limits.tools} are allowed.", param="tools", code="array_above_max_length")
        for i, tool in enumerate(tools):
            _check_free_form(tool["function"].get("parameters"), f"tools[{i}].function.parameters")
    response_format = request.get("response_format")
    if response_format and response_format["type"] == "json_schema":
        _check_free_form(response_format["json_schema"].get("schema"), "response_format.json_schema.schema")
    return request, facts


_INT_RANGE = (-(2**63), 2**64 - 1)


def _check_free_form(value: Any, param: str) -> None:
    """Free-form JSON (a tool's parameters, a JSON schema) must survive being sent on: JSON has no
    NaN or Infinity, and integers wider than 64 bits do not travel."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            _check_free_form(item, f"{param}.{key}")
    elif kind is list:
        for i, item in enumerate(value):
            _check_free_form(item, f"{param}[{i}]")
    elif kind is float:
        if not math.isfinite(value):
            raise InvalidRequest(f"Invalid value for '{param}': JSON numbers must be finite.", param=param)
    elif kind is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise InvalidRequest(f"Invalid value for '{param}': integers must fit in 64 bits.", param=param)


def _check_vendor_field(value: dict | str, param: str, limits: RequestLimits) -> None:
    _check_free_form(value, param)
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
                _check_free_form(message[echoed], f"messages[{i}].{echoed}")
        if message.get("tool_calls") and role != "assistant":
            raise InvalidRequest(f"'messages[{i}].tool_calls' is only allowed on assistant messages.", param=f"messages[{i}].tool_calls")
        for vendor in ("extra_content", "thought_signature"):
            if message.get(vendor) is not None:
                if role != "assistant":
                    raise InvalidRequest(
                        f"Unrecognized parameter: 'messages[{i}].{vendor}' (only assistant messages carry it).",
                        param=f"messages[{i}].{vendor}", code="unknown_parameter",
                    )
                _check_vendor_field(message[vendor], f"messages[{i}].{vendor}", limits)
        for k, call in enumerate(message.get("tool_calls") or ()):
            if call.get("extra_content") is not None:
                _check_vendor_field(call["extra_content"], f"messages[{i}].tool_calls[{k}].extra_content", limits)
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
                    _check_image_url(url, f"messages[{i}].content[{j}].image_url.url", limits)
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


def _check_image_url(url: str, param: str, limits: RequestLimits) -> None:
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


def _invalid(schema: dict, exc: ValidationError) -> InvalidRequest:
    """Pick the most specific error of a failed validation and phrase it as OpenAI does."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(
            f"We could not parse the JSON body of your request ({first['ctx']['error']}). "
            "Send a JSON object with 'Content-Type: application/json'.",
            param="body",
            code="invalid_json",
        )
    if first["type"] == "dict_type" and not first["loc"]:
        return InvalidRequest("The request body must be a JSON object.", param="body", code="invalid_json")
    located = [(param_of(schema, e["loc"]), e) for e in errors]
    (param, top_level), error = max(located, key=lambda pe: (pe[0][0].count(".") + pe[0][0].count("["), _rank(pe[1])))
    same_place = [e for (p, _), e in located if p == param]
    kind = error["type"]
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        field = (error.get("ctx") or {}).get("field")
        if field is not None:
            top_level = not param
            param = f"{param}.{field}" if param else str(field)
        if top_level:
            return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
        return InvalidRequest(f"Unrecognized parameter: '{param}'.", param=param, code="unknown_parameter")
    if len(same_place) > 1 and all(_is_type_error(e) for e in same_place):
        expected = " or ".join(sorted({_expected(e) for e in same_place}))
        return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", param=param, code="invalid_type")
    if kind in _TYPE_NAMES:
        return InvalidRequest(f"Invalid type for '{param}': expected {_TYPE_NAMES[kind]}.", param=param, code="invalid_type")
    ctx = error.get("ctx") or {}
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        bound = next(iter(ctx.values()), "")
        sign = {"less_than_equal": "<=", "greater_than_equal": ">=", "less_than": "<", "greater_than": ">"}[kind]
        return InvalidRequest(f"Invalid value for '{param}': expected a value {sign} {bound}.", param=param)
    if kind == "literal_error":
        return InvalidRequest(f"Invalid value for '{param}': expected one of {ctx.get('expected')}.", param=param)
    if kind == "union_tag_invalid":
        return InvalidRequest(
            f"Invalid value for '{param}.type': expected one of {ctx.get('expected_tags')}.",
            param=f"{param}.type",
        )
    if kind == "union_tag_not_found":
        return InvalidRequest(f"Missing required parameter: '{param}.type'.", param=f"{param}.type", code="missing_required_parameter")
    if kind == "too_short":
        return InvalidRequest(f"Invalid '{param}': empty array. Expected an array with minimum length 1.", param=param, code="empty_array")
    if kind == "too_long":
        return InvalidRequest(f"Invalid '{param}': array or object too long, at most {ctx.get('max_length')} items.", param=param, code="array_above_max_length")
    if kind == "string_too_short":
        return InvalidRequest(f"Invalid '{param}': empty string.", param=param)
    if kind == "string_too_long":
        return InvalidRequest(f"Invalid '{param}': string too long, at most {ctx.get('max_length')} characters.", param=param)
    if kind == "string_pattern_mismatch":
        return InvalidRequest(f"Invalid '{param}': does not match pattern {ctx.get('pattern')}.", param=param)
    if kind == "int_from_float" or kind == "finite_number":
        return InvalidRequest(f"Invalid type for '{param}': expected an integer.", param=param, code="invalid_type")
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param)


def _rank(error: dict) -> int:
    """Among errors at the same depth, which says most: a wrong value, then a missing field, then a type."""
    if error["type"] in ("missing", "extra_forbidden"):
        return 1
    return 0 if error["type"].endswith("_type") else 2


def _is_type_error(error: dict) -> bool:
    return error["type"].endswith("_type") or error["type"] == "literal_error"


def _expected(error: dict) -> str:
    if error["type"] == "literal_error":
        return (error.get("ctx") or {}).get("expected", "a known value")
    return _TYPE_NAMES.get(error["type"], "a valid value")


def param_of(schema: dict, loc: tuple) -> tuple[str, bool]:
    """Turn a pydantic-core error location into an OpenAI ``param`` by walking the schema.

    Union labels and union tags appear in ``loc`` but are not part of the caller's document.
    Returns the param and whether it names a top-level field.
    """
    out: list[str] = []
    node: dict | None = schema
    depth = 0
    for item in loc:
        while node is not None and node["type"] in ("nullable", "default", "function-before"):
            node = node["schema"]
        kind = node["type"] if node is not None else None
        if kind == "union":
            node = next((c[0] for c in node["choices"] if isinstance(c, tuple) and c[1] == item), None)
            continue
        if kind == "tagged-union":
            node = node["choices"].get(item)
            continue
        if item == "[key]":
            continue
        depth += 1
        if isinstance(item, int):
            out.append(f"[{item}]")
        else:
            out.append(f".{item}" if out else str(item))
        if kind == "typed-dict":
            field = node["fields"].get(item)
            node = field["schema"] if field else None
        elif kind == "list":
            node = node.get("items_schema")
        elif kind == "dict":
            node = node.get("values_schema")
        else:
            node = None
    return "".join(out), depth == 1


_limit = cs.nullable_schema(_int(1, 10**12))
_moment = cs.union_schema([(_float(0, 1e11), "@epoch"), (cs.str_schema(strict=True, min_length=1, max_length=64), "@iso")])
_short = cs.str_schema(strict=True, min_length=1, max_length=256)
# A key's controls: null clears one (no expiry, every model, no cap, any address, default limits).
_KEY_CONTROLS = {
    "name": _opt(cs.str_schema(strict=True, min_length=1, max_length=64)),
    "expires_at": _opt(_moment),
    "models": _opt(_list(cs.str_schema(strict=True, min_length=1, max_length=128), min_length=1, max_length=64)),
    "token_cap": _opt(_int(1, 10**15)),
    "ips": _opt(_list(cs.str_schema(strict=True, min_length=1, max_length=64), min_length=1, max_length=64)),
    "per_minute": cs.typed_dict_field(_limit, required=False),
    "per_hour": cs.typed_dict_field(_limit, required=False),
}
_grant = {"plan": _opt(_str), "tokens": _opt(_int(1, 10**15)), "days": _opt(_int(1, 36500))}
_email = cs.str_schema(strict=True, min_length=3, max_length=254)
_password = cs.str_schema(strict=True, min_length=1, max_length=1024)
_alerts = _obj({
    "url": cs.typed_dict_field(cs.nullable_schema(cs.str_schema(strict=True, min_length=1, max_length=2048)), required=True),
    "thresholds": _opt(_list(_int(0, 100), min_length=1, max_length=8)),
})

ADMIN_SCHEMAS = {
    "account": _obj({"name": _req(cs.str_schema(strict=True, min_length=1, max_length=128))}),
    "key": _obj(_KEY_CONTROLS),
    "limits": _obj({"per_minute": cs.typed_dict_field(_limit, required=False), "per_hour": cs.typed_dict_field(_limit, required=False)}),
    "package": _obj({
        "plan": _req(_str),
        "tokens": _opt(_int(1, 10**15)),
        "days": _opt(_int(1, 36500)),
    }),
    "key_controls": _obj(_KEY_CONTROLS),
    "invite": _obj({"email": _req(_email)}),
    "owner": _obj({"email": _req(_email), "password": _req(_password)}),
    "codes": _obj({**_grant, "count": _req(_int(1, 10_000)), "expires_in_days": _opt(_int(1, 36500))}),
    "alerts": _alerts,
}
# Bodies of the customer API (an owner's session) and of the top-up webhook.
ACCOUNT_SCHEMAS = {
    "accept_invite": _obj({"token": _req(_short), "password": _req(_password)}),
    "sign_in": _obj({"email": _req(_email), "password": _req(_password)}),
    "operator_sign_in": _obj({"token": _req(_short)}),
    "redeem": _obj({"code": _req(cs.str_schema(strict=True, min_length=1, max_length=64))}),
    "topup": _obj({
        "event_id": _req(cs.str_schema(strict=True, min_length=1, max_length=200)),
        "account": _req(cs.str_schema(strict=True, min_length=1, max_length=128)),
        **_grant,
        "metadata": _opt(_any_obj),
    }),
}
_SCHEMAS = {**ADMIN_SCHEMAS, **ACCOUNT_SCHEMAS}
_admin_validators = {name: SchemaValidator(schema) for name, schema in _SCHEMAS.items()}


def parse_body(kind: str, body: bytes) -> dict[str, Any]:
    """Validate a JSON API body of the admin or customer API (an empty body is an empty object)."""
    try:
        return _admin_validators[kind].validate_json(body or b"{}")
    except ValidationError as exc:
        raise _invalid(_SCHEMAS[kind], exc) from None


parse_admin_body = parse_body
