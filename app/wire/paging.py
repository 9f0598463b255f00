"""Opaque page cursors: the (time, id) of the last item a page showed, as a URL-safe token."""
from __future__ import annotations

import base64
import binascii

import orjson

from ..core.errors import InvalidRequest

MAX_LIMIT = 1000


def cursor(at: float, item_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at, item_id])).decode().rstrip("=")


def after(text: str | None) -> tuple[float, str] | None:
    """The position a cursor names; InvalidRequest naming ``cursor`` when it is not one of ours."""
    if not text:
        return None
    try:
        at, item_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if type(at) in (int, float) and type(item_id) is str:
            return float(at), item_id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise InvalidRequest("Invalid 'cursor': pass the next_cursor of the previous page.", param="cursor")


def limit(text: str | None, default: int = 100) -> int:
    """A page size from a query string: 1 to MAX_LIMIT."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"Invalid 'limit': expected an integer from 1 to {MAX_LIMIT}.", param="limit")
    return value
