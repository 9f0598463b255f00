"""What every request schema shares: pydantic-core building blocks written for the raw body
bytes (strict types, unknown keys refused, long bad arrays reported once) and the mapping of a
failed validation to one OpenAI-style error naming the field."""
from __future__ import annotations

import math
from typing import Any

from pydantic_core import PydanticCustomError, ValidationError
from pydantic_core import core_schema as cs

from ..core.errors import InvalidRequest

INT64 = 2**63 - 1


def opt(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(cs.nullable_schema(schema), required=False)


def req(schema: cs.CoreSchema) -> cs.TypedDictField:
    return cs.typed_dict_field(schema, required=True)


def obj(fields: dict[str, cs.TypedDictField], extra: str = "forbid") -> cs.CoreSchema:
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


def array(items: cs.CoreSchema, **constraints: int) -> cs.ListSchema:
    """An array; validation stops at the first bad item, so a long bad array costs one error."""
    return cs.list_schema(items, strict=True, fail_fast=True, **constraints)


STRING = cs.str_schema(strict=True)
BOOLEAN = cs.bool_schema(strict=True)
ANY_OBJECT = cs.dict_schema(cs.str_schema(strict=True), cs.any_schema(), strict=True, fail_fast=True)


def literal(*values: str) -> cs.LiteralSchema:
    return cs.literal_schema(list(values))


def number(lo: float, hi: float) -> cs.FloatSchema:
    return cs.float_schema(ge=lo, le=hi, strict=True, allow_inf_nan=False)


def integer(lo: int, hi: int = INT64) -> cs.IntSchema:
    return cs.int_schema(ge=lo, le=hi, strict=True)

_TYPE_NAMES = {
    "string_type": "a string",
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def invalid(schema: dict, exc: ValidationError) -> InvalidRequest:
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


_INT_RANGE = (-(2**63), 2**64 - 1)


def free_form_fault(value: Any, param: str, index: str = "[{}]") -> tuple[str, str] | None:
    """Where free-form JSON sent on (a tool's schema, a tool call's input) cannot survive the trip,
    and why: JSON has no NaN or Infinity, and integers wider than 64 bits do not travel. ``index``
    writes a list position onto the path (OpenAI's ``[0]``, Anthropic's ``.0``)."""
    found = _fault(value)
    if found is None:
        return None
    path, why = found
    return param + "".join(f".{step}" if type(step) is str else index.format(step) for step in reversed(path)), why


def _fault(value: Any) -> tuple[list, str] | None:
    """The walk of ``free_form_fault``: the path (innermost step first) is made only for a fault, not
    for every node of a valid schema (agents send dozens of tools with every request)."""
    kind = type(value)
    if kind is dict:
        items = value.items()
    elif kind is list:
        items = enumerate(value)
    elif kind is float:
        return None if math.isfinite(value) else ([], "JSON numbers must be finite.")
    elif kind is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return [], "integers must fit in 64 bits."
    else:
        return None
    for step, item in items:
        if type(item) in _WALKED:
            found = _fault(item)
            if found is not None:
                found[0].append(step)
                return found
    return None


_WALKED = frozenset({dict, list, float, int})


def check_free_form(value: Any, param: str) -> None:
    """``free_form_fault`` as OpenAI's APIs answer it: a 400 naming the field."""
    fault = free_form_fault(value, param)
    if fault is not None:
        raise InvalidRequest(f"Invalid value for '{fault[0]}': {fault[1]}", param=fault[0])
