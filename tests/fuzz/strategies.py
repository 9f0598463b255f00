"""Hypothesis strategies for the fuzzer: JSON documents drawn from the served OpenAPI schema, hostile
values and strings, and the document- and byte-level mutations applied to them.

Every generated string is cleaned of the fake upstream's ``[[fake:`` directive prefix and of the
leak detector's markers, so a failure is never scripted by the input and a leak is never an echo.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import strategies as st

from tests.conftest import leaks

# ---------------------------------------------------------------------------------------- strings

EDGE_STRINGS = (
    "", " ", "\u0000", "a\u0000b", "\u0001\u001f\u007f", "\t\r\n", "\u2028\u2029",
    "\u202eevil\u202c", "\u200f\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627",  # RTL override, Hebrew, Arabic
    "\u200b\u200c\u200d\u2060\ufeff",  # zero-width
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466\U0001f3f3\ufe0f\u200d\U0001f308",  # ZWJ emoji
    "e\u0301\u0301\u0301", "\ufffd\ufffe\uffff", "\U0010ffff", "\U0001d573\U0001d58a\U0001d591",
    "Привет!", "\\", "\"", "\\u0000", "\\ud800", "</script><script>", "%s%n%x", "${jndi:ldap://x/a}",
    "' OR 1=1 --", "{{7*7}}", "null", "true", "0", "-0", "1e309", "NaN", "Infinity",
    "zowy-1", "zowy-2", "zowy-1-pro", "ZOWY-1", " zowy-1", "zowy-1\u0000", "zowy-1 ", "gpt-4o",
    "system", "user", "assistant", "tool", "function", "image_url", "text", "json_schema",
    "data:image/png;base64,AAAA", "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
    "https://example.com/a.png", "javascript:alert(1)",
)
_DIRECTIVE = "[[fake:"


def clean(text: str) -> str:
    """The text without the fake upstream's directive prefix or a leak marker in it."""
    while _DIRECTIVE in text:
        text = text.replace(_DIRECTIVE, "[ [fake:")
    if leaks(text.encode("utf-8", "surrogatepass"), ("127.0.0.1:", "googleapis", "api.openai.com")):
        return "x"
    return text


_alphabet = st.characters(codec="utf-8")
texts = st.one_of(
    st.text(_alphabet, max_size=24),
    st.sampled_from(EDGE_STRINGS),
    st.text(st.sampled_from("a \u200b\u202e\U0001f600\u0000\u0627"), max_size=40),
).map(clean)


def long_text(sizes: tuple[int, ...]) -> st.SearchStrategy[str]:
    """Strings of exactly one of ``sizes`` characters, in one- and multi-byte alphabets."""
    return st.tuples(st.sampled_from(sizes), st.sampled_from(("a", "я", "\U0001f600", "\u0000", "\u200b"))).map(
        lambda pair: pair[1] * pair[0]
    )


# -------------------------------------------------------------------------------- JSON values

INT64 = 2**63 - 1
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


_BIG = "\x1bBIG:"
_BIG_WRITTEN = re.compile(r'"\\u001bBIG:([^"\\]+)\\u001b"')


def big(literal: str) -> str:
    """A placeholder ``dumps`` writes as the bare number literal (``1e309``, ``-0``, 30 digits...)."""
    return f"{_BIG}{literal}\x1b"


HUGE_LITERALS = ("1e309", "-1e309", "1E400", "-0", "-0.0", "5e-324", "1e-400", "0.000000000000000000000000001",
                 "123456789012345678901234567890", "-123456789012345678901234567890", "1.0e+2", "NaN", "Infinity")

hostile_values = st.one_of(
    st.sampled_from([
        None, True, False, 0, -1, 1, 0.5, -0.0, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1, -(2**70),
        1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"), "", [], {}, [None], {"": None}, [[]], {"a": {}},
        list(range(300)), {str(i): i for i in range(40)},
    ]),
    st.sampled_from(HUGE_LITERALS).map(big),
    st.integers(), st.floats(), texts, json_values,
    st.builds(nested, st.integers(20, 260), st.sampled_from(("list", "dict"))),
    long_text((255, 256, 257, 1024, 8191, 8192, 8193, 70_000)),
)


def dumps(doc: Any, ensure_ascii: bool = False, compact: bool = True) -> bytes:
    """JSON bytes of ``doc`` as a careless client writes them: big ints, NaN/Infinity, odd literals."""
    text = json.dumps(doc, ensure_ascii=ensure_ascii, allow_nan=True, separators=(",", ":") if compact else (", ", ": "))
    text = _BIG_WRITTEN.sub(lambda m: m.group(1), text)
    return text.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------- JSON Schema -> strategy


def from_schema(schema: dict, depth: int = 0) -> st.SearchStrategy:
    """Values valid for the subset of JSON Schema the OpenAPI document uses (values, not semantics)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, depth) for s in schema.get("anyOf") or schema["oneOf"]])
    kind = schema.get("type")
    if kind is None:  # any JSON value: hostile ones included
        return st.one_of(json_values, json_values, hostile_values)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", INT64)
        return st.one_of(st.integers(lo, hi), st.sampled_from(sorted({lo, hi, min(lo + 1, hi), max(hi - 1, lo)})))
    if kind == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        ints = st.integers(math.ceil(lo) if lo is not None else -(2**53), math.floor(hi) if hi is not None else 2**53)
        return st.one_of(st.floats(lo, hi, allow_nan=False, allow_infinity=False), ints)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).map(clean)
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        strategy = texts.filter(lambda s: len(s) >= lo) if lo else texts
        if hi is not None:
            strategy = st.one_of(strategy.map(lambda s: s[:hi]), long_text((hi,)))
        return strategy
    if kind == "array":
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 4)
        return st.lists(from_schema(schema.get("items", {}), depth + 1), min_size=lo, max_size=min(hi, max(lo, 4 if depth < 2 else 2)))
    if kind == "object":
        properties = schema.get("properties")
        if properties is not None:
            required = set(schema.get("required", ()))
            return st.fixed_dictionaries(
                {k: from_schema(v, depth + 1) for k, v in properties.items() if k in required},
                optional={k: from_schema(v, depth + 1) for k, v in properties.items() if k not in required},
            )
        extra = schema.get("additionalProperties", {})
        keys = texts
        if "propertyNames" in schema:
            keys = st.from_regex(schema["propertyNames"]["pattern"], fullmatch=True)
        values = from_schema(extra, depth + 1) if isinstance(extra, dict) else st.one_of(json_values, hostile_values)
        return st.dictionaries(keys, values, max_size=min(schema.get("maxProperties", 4), 4))
    raise ValueError(f"unsupported schema: {schema}")


# ------------------------------------------------------------- a plausible, admissible request

_PARTS = {"system": ("text",), "developer": ("text",), "user": ("text", "image_url"), "assistant": ("text", "refusal"), "tool": ("text",)}


def repair(doc: dict) -> dict:
    """Make a schema-valid document also pass the role rules the schema cannot say, so a good share of
    generated requests get through to the upstream."""
    messages = [m for m in doc.get("messages") or [] if isinstance(m, dict)] or [{"role": "user"}]
    for m in messages:
        role = m.get("role", "user")
        if role not in _PARTS:
            role = m["role"] = "user"
        content = m.get("content")
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict) and p.get("type") in _PARTS[role]]
            for p in parts:
                if p.get("type") == "image_url":
                    p["image_url"] = {"url": "https://example.com/cat.png"}
            m["content"] = parts
        elif content is None and role != "assistant":
            m["content"] = "hi"
        if role == "assistant" and m.get("content") is None and not m.get("tool_calls") and not m.get("refusal"):
            m["content"] = "ok"
        if role == "tool" and not m.get("tool_call_id"):
            m["tool_call_id"] = "call_1"
        if role != "assistant":
            m.pop("tool_calls", None)
    doc["messages"] = messages
    if doc.get("top_logprobs") is not None:
        doc["logprobs"] = True
    if doc.get("model") == "zowy-1-pro":
        doc.pop("temperature", None)
        doc.pop("top_p", None)
    return doc


# ------------------------------------------------------------------------- mutations


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (the root is ``()``)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:8]):
            out += paths(v, prefix + (i,))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


MUTATIONS = ("replace", "delete", "add_unknown", "wrap_list", "stringify", "duplicate", "rename_case")


def mutate(doc: Any, path: tuple, how: str, value: Any) -> Any:
    """``doc`` with one mutation at ``path`` (in place where possible; returns the new root)."""
    if not path:
        if how in ("replace", "delete"):
            return value if how == "replace" else {}
        if how == "wrap_list":
            return [doc]
        if how == "add_unknown" and isinstance(doc, dict):
            doc[clean(str(value))[:40] or "unknown_field"] = value
        return doc
    parent, last = _parent(doc, path), path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "wrap_list":
        parent[last] = [parent[last]]
    elif how == "stringify":
        parent[last] = json.dumps(parent[last], default=str)
    elif how == "duplicate" and isinstance(parent, list):
        parent.append(parent[last])
    elif how == "rename_case" and isinstance(parent, dict) and isinstance(last, str):
        parent[last.upper() if last != last.upper() else last + " "] = parent.pop(last)
    elif how == "add_unknown" and isinstance(parent[last], dict):
        parent[last][clean(str(value))[:40] or "unknown_field"] = value
    else:
        parent[last] = value
    return doc


# Byte-level mutations of a serialized body.
INSERTS = (b"\x00", b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xc0\x80", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xef\xbb\xbf", b"\\ud800", b"\\udfff\\ud800",
           b"\\u", b"\\x41", b"\\", b'"', b"{", b"}", b"[", b"]", b",", b":", b"//c\n", b"/*", b"\r\n", b" " * 1000)
NUMBER_LITERALS = (b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"inf", b"1e309", b"-1e309", b"-0", b"1E400", b"0x10",
                   b"01", b".5", b"1.", b"+1", b"1e", b"--1", b"123456789012345678901234567890", b"1" * 5000,
                   b"0." + b"0" * 400 + b"1", b"true", b"null")
_NUMBER = re.compile(rb"(?<=[:\[,])-?\d+(\.\d+)?([eE][-+]?\d+)?")
_STRING_START = re.compile(rb'(?<=[:\[,])"')
DUPLICATE_KEYS = (b'"model":"zowy-2",', b'"model":"nope",', b'"model":1,', b'"messages":[],', b'"messages":null,',
                  b'"stream":true,', b'"stream":"yes",', b'"temperature":9,', b'"max_tokens":0,', b'"model":"zowy-1",')

BYTE_MUTATIONS = ("truncate", "insert", "number", "surrogate", "duplicate_key", "bom", "trailing", "nest_array",
                  "nest_object", "array_of", "ascii_escape", "replace_byte")


def mutate_bytes(raw: bytes, how: str, position: int, pick: int) -> bytes:
    """``raw`` with one byte-level mutation; ``position`` and ``pick`` are free draws used as needed."""
    at = position % (len(raw) + 1)
    if how == "truncate":
        return raw[:at]
    if how == "insert":
        return raw[:at] + INSERTS[pick % len(INSERTS)] + raw[at:]
    if how == "number":
        spans = [m.span() for m in _NUMBER.finditer(raw)]
        literal = NUMBER_LITERALS[pick % len(NUMBER_LITERALS)]
        if not spans:
            return raw.replace(b'"messages"', b'"temperature":' + literal + b',"messages"', 1)
        start, end = spans[position % len(spans)]
        return raw[:start] + literal + raw[end:]
    if how == "surrogate":
        starts = [m.end() for m in _STRING_START.finditer(raw)]
        if not starts:
            return raw
        where = starts[position % len(starts)]
        escape = (b"\\ud800", b"\\udc00", b"\\udbff\\udbff", b"\\ud83d", b"\\ud800\\u0041", b"\\u0000", b"\\uFFFF")[pick % 7]
        return raw[:where] + escape + raw[where:]
    if how == "duplicate_key":
        brace = raw.find(b"{")
        if brace < 0:
            return raw
        return raw[: brace + 1] + DUPLICATE_KEYS[pick % len(DUPLICATE_KEYS)] + raw[brace + 1:] if raw[brace + 1:brace + 2] != b"}" else raw
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "trailing":
        return raw + (b"x", b"\x00", b"{}", b" \n", b",", b"]")[pick % 6]
    if how == "nest_array":
        depth = 1 + pick % 300
        return b"[" * depth + raw + b"]" * depth
    if how == "nest_object":
        depth = 1 + pick % 300
        return b'{"a":' * depth + raw + b"}" * depth
    if how == "array_of":
        return b"[" + b",".join([raw] * (1 + pick % 3)) + b"]"
    if how == "ascii_escape":
        return raw.decode("utf-8", "replace").encode("ascii", "backslashreplace")
    if how == "replace_byte":
        if not raw:
            return raw
        i = position % len(raw)
        return raw[:i] + bytes([pick % 256]) + raw[i + 1:]
    raise ValueError(how)
