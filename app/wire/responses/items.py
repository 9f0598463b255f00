"""What a stored response keeps of its request, and how it is read back: the input items (each with
an id), the conversation a ``previous_response_id`` continues, an ``item_reference``'s item, and
the ``input_items`` list.
"""
from __future__ import annotations

from typing import Any, Iterable

from ...core.errors import InvalidRequest
from .output import RESPONSE_PREFIX

_PREFIXES = {
    "message": "msg", "function_call": "fc", "function_call_output": "fco", "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco", "reasoning": "rs",
}
# Input items are numbered from here, output items from 0: the same response never gives one id twice.
_INPUT_BASE = 0x8000


def kind(item: dict) -> str:
    return item.get("type") or ("message" if "role" in item else "item_reference")


def input_items(request: dict[str, Any], request_id: str, resolve=None) -> list[dict]:
    """The request's input as stored: a string becomes a user message, every item gets a ``type``
    and an id (the caller's own, or ours), references are replaced by the items they name."""
    items = request.get("input")
    if items is None:
        return []
    if type(items) is str:
        items = [{"role": "user", "content": items}]
    out = []
    for n, item in enumerate(items):
        if kind(item) == "item_reference":
            item = resolve(item["id"]) if resolve is not None else None
            if item is None:
                continue
            out.append(item)
            continue
        item = {k: v for k, v in item.items() if k != "parsed_arguments"}
        item["type"] = kind(item)
        if not item.get("id"):
            item = {"id": f"{_PREFIXES[item['type']]}_{request_id}{_INPUT_BASE + n:04x}", **item}
        out.append(item)
    return out


def response_of(item_id: str) -> str | None:
    """The id of the stored response an item id of ours belongs to; None for any other id."""
    prefix, _, rest = item_id.partition("_")
    if prefix not in _PREFIXES.values() and prefix != "call" or len(rest) != 28:
        return None
    return RESPONSE_PREFIX + rest[:24]


def find(item_id: str, input_items: Iterable[dict], output: Iterable[dict]) -> dict | None:
    """The item with this id among a stored response's input and output items."""
    for item in (*input_items, *output):
        if item.get("id") == item_id:
            return item
    return None


def conversation(chain: Iterable[tuple[list[dict], list[dict]]]) -> list[dict]:
    """The items a response continues, from its chain of stored ``(input items, output)``, oldest
    first: each response's input, then what it answered."""
    out: list[dict] = []
    for inputs, output in chain:
        out.extend(inputs)
        out.extend(output)
    return out


def page(items: list[dict], limit: Any = None, order: Any = None, after: Any = None) -> dict:
    """One page of a stored response's input items, in the list shape OpenAI answers: newest
    first unless ``order`` is ``asc``, ``limit`` (1-100, default 20) items after the one named
    by ``after``. Query values arrive as strings; a bad one is a 400 naming it."""
    if limit is None:
        count = 20
    else:
        try:
            count = int(limit)
        except (TypeError, ValueError):
            count = 0
        if not 1 <= count <= 100:
            raise InvalidRequest("Invalid 'limit': expected an integer between 1 and 100.", param="limit")
    order = order or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"Invalid 'after': no input item '{after}' in this response.", param="after")
        start = ids.index(after) + 1
    data = [_listed(item) for item in ordered[start:start + count]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + count < len(ordered),
    }


def _listed(item: dict) -> dict:
    """An item as ``input_items`` lists it: a message's string content as one text part, as OpenAI does."""
    if item.get("type") == "message" and type(item.get("content")) is str:
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        return {**item, "content": [{"type": part, "text": item["content"]}]}
    return item


def deleted(response_id: str) -> dict:
    return {"id": response_id, "object": "response.deleted", "deleted": True}
