"""Who is calling, for the routes and the console alike: a signed-in owner (a session token as
Bearer or cookie), an operator (the admin token, or the console's operator session cookie), the
caller's address; and the session cookies that sign-in sets and sign-out clears.

A session that comes as a cookie must send ``X-CSRF-Token`` on every call that changes anything.
"""
from __future__ import annotations

from dataclasses import dataclass

from sanic import Request
from sanic.response import HTTPResponse

from ..access.keys import bearer, is_admin
from ..accounts import operators, owners, signin
from ..accounts.audit import Actor
from ..core.errors import AdminDisabled, AdminUnauthorized, InvalidSession, PermissionDenied
from ..gateway.services import Services
from ..store.contracts.owners import Session

_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def services(request: Request) -> Services:
    return request.app.ctx.services


def api_key(request: Request) -> str | None:
    """The API key as the Authorization header admission reads: Anthropic's ``x-api-key`` header
    (what Claude Code sends), else the caller's ``Authorization``."""
    key = request.headers.get("x-api-key")
    return f"Bearer {key}" if key else request.headers.get("authorization")


def client_ip(request: Request) -> str:
    """The caller's address: the peer, or the client a trusted proxy forwarded."""
    return services(request).admission.client(request.ip, request.headers.get("x-forwarded-for"))


def secure(request: Request) -> bool:
    """Whether the caller came over HTTPS (here, or to a proxy in front that says so)."""
    return bool(request.conn_info and request.conn_info.ssl) or request.headers.get("x-forwarded-proto", "").lower() == "https"


@dataclass(frozen=True, slots=True)
class Caller:
    """A signed-in owner making this request."""

    session: Session
    token: str
    ip: str

    @property
    def actor(self) -> Actor:
        return Actor(f"owner:{self.session.owner_id}", self.ip)


def owner_session_sent(request: Request) -> bool:
    """Whether the call carries an owner's session (as Bearer, or as the cookie with no Authorization)."""
    header = request.headers.get("authorization")
    token = bearer(header)
    return (token or "").startswith(owners.SESSION_PREFIX) or (header is None and bool(request.cookies.get(owners.SESSION_COOKIE)))


async def signed_in(request: Request) -> Caller:
    """The caller's live session (Bearer header or cookie); CSRF-checked when it came as a cookie."""
    found = services(request)
    header = request.headers.get("authorization")
    token = bearer(header)
    by_cookie = token is None
    if by_cookie:
        token = request.cookies.get(owners.SESSION_COOKIE)
    elif not token.startswith(owners.SESSION_PREFIX):
        raise InvalidSession("This call needs an account owner's session, not an API key: sign in at POST /api/v1/auth/sessions.")
    session = await owners.session_of(found.store, found.settings, token)
    if session is None:
        raise InvalidSession(None if token else "Sign in first: POST /api/v1/auth/sessions with your email and password.")
    if by_cookie and request.method not in _SAFE_METHODS:
        if not signin.csrf_ok(found.settings, token, request.headers.get(signin.CSRF_HEADER)):
            raise PermissionDenied(
                "Missing or wrong X-CSRF-Token header: send the csrf_token given at sign-in (also in the zowy_csrf cookie).",
                param="X-CSRF-Token", code="csrf_failed",
            )
    return Caller(session, token, client_ip(request))


async def require_operator(request: Request) -> None:
    """The admin token as Bearer, or a live operator session cookie (CSRF-checked on changes);
    AdminDisabled while no admin token is configured."""
    settings = request.app.ctx.settings
    if not settings.admin_token:
        raise AdminDisabled()
    header = request.headers.get("authorization")
    if is_admin(header, settings.admin_token):
        return
    cookie = request.cookies.get(operators.COOKIE) if header is None else None
    if not cookie or await operators.session_of(services(request).store, settings, cookie) is None:
        raise AdminUnauthorized()
    if request.method not in _SAFE_METHODS and not signin.csrf_ok(settings, cookie, request.headers.get(signin.CSRF_HEADER)):
        raise PermissionDenied(
            "Missing or wrong X-CSRF-Token header: send the csrf_token given at sign-in (also in the zowy_operator_csrf cookie).",
            param="X-CSRF-Token", code="csrf_failed",
        )


def operator(request: Request) -> Actor:
    """The operator making this call, as the audit log names it."""
    return Actor("admin", client_ip(request))


async def operator_session(request: Request) -> tuple[str, float]:
    """The console's operator session of this call: its token and expiry; InvalidSession if none."""
    found = services(request)
    token = request.cookies.get(operators.COOKIE)
    session = await operators.session_of(found.store, found.settings, token)
    if session is None:
        raise InvalidSession("No operator session: sign in with the admin token at POST /console/api/operator/session.")
    return token, session.expires_at


def set_session_cookies(request: Request, response: HTTPResponse, cookie: str, token: str, csrf_cookie: str, csrf: str,
                        ttl: int) -> None:
    """The session's token (HttpOnly) and its CSRF token (readable by the page) as cookies."""
    https = secure(request)
    response.add_cookie(cookie, token, path="/", max_age=ttl, httponly=True, samesite="Strict", secure=https)
    response.add_cookie(csrf_cookie, csrf, path="/", max_age=ttl, httponly=False, samesite="Strict", secure=https)


def clear_session_cookies(request: Request, response: HTTPResponse, cookie: str, csrf_cookie: str) -> None:
    https = secure(request)
    for name, httponly in ((cookie, True), (csrf_cookie, False)):
        response.add_cookie(name, "", path="/", max_age=0, httponly=httponly, samesite="Strict", secure=https)
