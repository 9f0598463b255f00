"""The signature of every webhook, inbound top-ups and outbound alerts alike.

``X-Zowy-Timestamp: <unix seconds>`` and ``X-Zowy-Signature: v1=<hex HMAC-SHA256(secret,
"<timestamp>." + body)>``; a receiver refuses a timestamp outside its replay window.
"""
from __future__ import annotations

import hashlib
import hmac

from .errors import InvalidSignature

TIMESTAMP_HEADER = "x-zowy-timestamp"
SIGNATURE_HEADER = "x-zowy-signature"
SCHEME = "v1"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC of one delivery."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign ``body`` at ``now``."""
    timestamp = int(now)
    return {"X-Zowy-Timestamp": str(timestamp), "X-Zowy-Signature": f"{SCHEME}={signature(secret, timestamp, body)}"}


def verify(secret: str, timestamp: str | None, header: str | None, body: bytes, now: float, window: float) -> int:
    """The timestamp of a correctly signed, fresh delivery; InvalidSignature otherwise.

    The header may carry several ``v1=`` values (a sender rotating its secret); one must match.
    """
    if not timestamp or not header:
        raise InvalidSignature(
            "Missing webhook signature: send X-Zowy-Timestamp and X-Zowy-Signature headers.",
            param="X-Zowy-Signature", code="missing_signature",
        )
    try:
        sent = int(timestamp.strip())
    except ValueError:
        raise InvalidSignature("X-Zowy-Timestamp must be unix seconds.", param="X-Zowy-Timestamp", code="invalid_timestamp") from None
    if abs(now - sent) > window:
        raise InvalidSignature(
            f"The webhook timestamp is outside the {int(window)} s replay window; sign it again with the current time.",
            param="X-Zowy-Timestamp", code="stale_timestamp",
        )
    expected = signature(secret, sent, body).encode()
    matched = False
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == SCHEME and hmac.compare_digest(value.strip().encode(), expected):
            matched = True
    if not matched:
        raise InvalidSignature(param="X-Zowy-Signature")
    return sent
