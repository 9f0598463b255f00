"""Signing in, for owners and operators alike: attempts counted in exact rate windows so that
strangers cannot lock anyone out, and the CSRF token that a session's cookie must be sent with."""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Awaitable, Callable

from ..access.windows import Decision
from ..core.config import Settings
from ..core.errors import RateLimited
from ..store import Store

CSRF_HEADER = "x-csrf-token"


def csrf_token(settings: Settings, session_token: str) -> str:
    """The CSRF token of a session: an HMAC of its token, so nothing more is stored."""
    return hmac.new(settings.key_pepper.encode(), b"csrf:" + session_token.encode(), hashlib.sha256).hexdigest()[:32]


def csrf_ok(settings: Settings, session_token: str, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(header.encode(), csrf_token(settings, session_token).encode())


def _refused(count, per_minute: int, per_hour: int, now: float, what: str) -> RateLimited:
    headers = Decision(False, per_minute, count.minute, per_hour, count.hour, now).headers()
    return RateLimited(
        f"Too many {what}. Please try again in {headers['retry-after']} s.",
        headers={k: v for k, v in headers.items() if k.startswith("retry-after")},
    )


async def throttle(store: Store, settings: Settings, window_id: str, per_minute: int, per_hour: int, now: float,
                   what: str = "sign-in attempts") -> None:
    """Count one attempt in a synthetic rate window (exact across instances); RateLimited when full."""
    count = await store.hit(window_id, per_minute, per_hour, now, settings.limiter_timeout)
    if not count.admitted:
        raise _refused(count, per_minute, per_hour, now, what)


_ALWAYS = 1 << 40  # a window's limits when it only counts


async def guard(store: Store, settings: Settings, subject: str, source: str, check: Callable[[], Awaitable[bool]]) -> bool:
    """Whether ``check`` (the secret's check, costly for a password) passed for a sign-in to ``subject``
    (an account, or the operators) from ``source`` (an address, or an IPv6 /64); RateLimited when the
    windows refuse, always before ``check`` runs.

    Every attempt counts per (subject, address) and in the subject's ceiling. Over the ceiling, only
    an address with no failure on this subject in this clock hour has its secret checked, once a
    minute: strangers cannot lock an owner out, and each of their addresses gets one guess an hour.
    """
    limits = settings.self_service
    now = time.time()
    timeout = settings.limiter_timeout
    await throttle(store, settings, f"signin:pair:{subject}:{source}",
                   limits.signin_account_ip_per_minute, limits.signin_account_ip_per_hour, now)
    ceiling = await store.hit(f"signin:ceiling:{subject}", limits.signin_per_minute, limits.signin_per_hour, now, timeout)
    failures = f"signin:failed:{subject}:{source}"
    if not ceiling.admitted:
        refused = _refused(ceiling, limits.signin_per_minute, limits.signin_per_hour, now, "sign-in attempts")
        # Limits of 0 and nothing taken: admitted only while the window holds no failure.
        if not (await store.hit(failures, 0, 0, now, timeout, take=0)).admitted:
            raise refused
        if not (await store.hit(f"signin:over:{subject}:{source}", 1, 60, now, timeout)).admitted:
            raise refused
    if await check():
        return True
    await store.hit(failures, _ALWAYS, _ALWAYS, now, timeout)
    return False
