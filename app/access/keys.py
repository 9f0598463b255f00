"""API key material: generation, and reading the key (or the admin token) from a request header.

A key is shown once at creation; the store only ever sees its hash (app/core/digests.py).
"""
from __future__ import annotations

import hmac
import secrets

from ..core.ids import new_id

KEY_PREFIX = "zk-"
_SECRET_BYTES = 30


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def new_key_id() -> str:
    return new_id("key")


def display_prefix(key: str) -> str:
    return key[:10]


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or len(token) > 256 or not token.isascii():
        return None
    return token


def is_admin(authorization: str | None, admin_token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <admin token>``; never true when unset."""
    token = bearer(authorization)
    return bool(admin_token) and token is not None and hmac.compare_digest(token.encode(), admin_token.encode())
