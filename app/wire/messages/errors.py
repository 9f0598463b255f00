"""Failures in Anthropic's envelope: ``{"type":"error","error":{"type","message"},"request_id"}`` with
the error type Anthropic (and its SDKs) give each status; in a stream, an ``error`` event."""
from __future__ import annotations

import orjson

# The gateway keeps its own statuses (README's table); each gets the type Anthropic uses for it.
# 402 is ``billing_error`` (the anthropic SDK's PaymentRequiredError), 413 ``request_too_large``,
# 504 ``timeout_error``; 502 and 503 (no backend answered, overloaded, restarting) are retryable
# server errors, as Anthropic's own 500 and 529.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    found = TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def phrase(message: str, param: str | None) -> str:
    """Anthropic's messages start with the field they concern (``model: ...``)."""
    if param and not message.startswith(param + ":"):
        return f"{param}: {message}"
    return message


def envelope(status: int, message: str, request_id: str | None, param: str | None = None) -> bytes:
    """The body of an error answer."""
    doc: dict = {"type": "error", "error": {"type": error_type(status), "message": phrase(message, param)}}
    if request_id:
        doc["request_id"] = request_id
    return orjson.dumps(doc)


def error_event(status: int, message: str) -> bytes:
    """A failure after the stream began: Anthropic's ``error`` event (the stream ends after it)."""
    doc = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"
