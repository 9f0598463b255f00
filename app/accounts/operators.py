"""Operator sessions for the web console: the admin token, given once at sign-in, becomes a short-lived
session in the HttpOnly ``zowy_operator`` cookie, so the token never sits in a page's storage or URL.

Sessions live in the store beside owners' sessions (only their hash), bound to the admin token: a new
token ends them all. Calls made with the cookie that change anything must carry ``X-CSRF-Token``.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..access.clientip import throttle_source
from ..core.config import Settings
from ..core.digests import key_hash
from ..core.errors import AdminDisabled, AdminUnauthorized
from ..store import Store
from ..store.contracts.owners import Session
from . import audit
from .audit import Actor
from .signin import csrf_token, guard, throttle

SESSION_PREFIX = "zo-"
COOKIE = "zowy_operator"
CSRF_COOKIE = "zowy_operator_csrf"
_MAX_TOKEN = 256


@dataclass(frozen=True, slots=True)
class OperatorSession:
    token: str
    csrf: str
    expires_at: float


def _binding(settings: Settings) -> str:
    """What a session row names as its owner: a digest of the admin token it was opened with."""
    digest = hmac.new(settings.admin_token.encode(), b"zowy-operator-session", hashlib.sha256).hexdigest()
    return "operator:" + digest[:24]


async def sign_in(store: Store, settings: Settings, token: object, ip: str) -> OperatorSession:
    """A new operator session for the right admin token, within the sign-in windows (the operators
    are one subject, throttled as an account is)."""
    if not settings.admin_token:
        raise AdminDisabled()
    limits = settings.self_service
    now = time.time()
    source = throttle_source(ip)
    await throttle(store, settings, f"operator-signin:ip:{source}", limits.signin_ip_per_minute, limits.signin_ip_per_hour, now)
    given = token.encode() if type(token) is str and len(token) <= _MAX_TOKEN else b""

    async def check() -> bool:
        return hmac.compare_digest(given, settings.admin_token.encode())

    if not await guard(store, settings, "operators", source, check):
        await audit.record(store, Actor("anonymous", ip), "operator.signin.failed", after={"reason": "wrong admin token"})
        raise AdminUnauthorized("Incorrect admin token.")
    session_token = SESSION_PREFIX + secrets.token_urlsafe(32)
    ttl = settings.console.operator_session_ttl
    session = Session(key_hash(session_token, settings.key_pepper), "", _binding(settings), now, now + ttl)
    await store.create_session(session)
    await audit.record(store, Actor("admin", ip), "operator.signin", after={"session_expires_at": session.expires_at})
    return OperatorSession(session_token, csrf_token(settings, session_token), session.expires_at)


async def session_of(store: Store, settings: Settings, token: str | None) -> Session | None:
    """The live operator session of a cookie's token, or None (also once the admin token changed)."""
    if not settings.admin_token or not token or not token.startswith(SESSION_PREFIX) or len(token) > 128:
        return None
    session = await store.session(key_hash(token, settings.key_pepper), time.time())
    if session is None or not hmac.compare_digest(session.owner_id, _binding(settings)):
        return None
    return session


async def sign_out(store: Store, settings: Settings, token: str) -> bool:
    return await store.delete_session(key_hash(token, settings.key_pepper))
