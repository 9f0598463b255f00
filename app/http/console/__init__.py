"""The web console under /console: one page and its scripts, styles and vendored chart library, served
from this package under a strict Content-Security-Policy; the facts the page needs; and operators'
sign-in, which trades the admin token for a short-lived session cookie."""
from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...accounts import operators, signin
from ...core.errors import NotFound, PermissionDenied
from ...wire.bodies import parse_body
from .. import auth

bp = Blueprint("console")

STATIC = Path(__file__).with_name("static")
PAGE = "index.html"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
# Vendored files carry their version in their path, so they never change under one URL.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
          ".md": "text/plain", "": "text/plain"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache: str


def _load(root: Path) -> dict[str, Asset]:
    assets = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[name] = Asset(body, kind, etag, _IMMUTABLE if name.startswith("vendor/") else _REVALIDATE)
    return assets


_assets: dict[str, Asset] | None = None


def assets() -> dict[str, Asset]:
    """Every file of the console, read once per worker."""
    global _assets
    if _assets is None:
        _assets = _load(STATIC)
    return _assets


def _send(request: Request, asset: Asset) -> HTTPResponse:
    headers = {**SECURITY_HEADERS, "cache-control": asset.cache, "etag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return HTTPResponse(status=304, headers=headers)
    return HTTPResponse(asset.body, headers=headers, content_type=asset.content_type)


def _json(value, status: int = 200) -> HTTPResponse:
    headers = {**SECURITY_HEADERS, "cache-control": "no-store"}
    return HTTPResponse(orjson.dumps(value), status=status, headers=headers, content_type="application/json")


async def page(request: Request) -> HTTPResponse:
    return _send(request, assets()[PAGE])


async def static(request: Request, path: str) -> HTTPResponse:
    asset = assets().get(path)
    if asset is None or path == PAGE:
        raise NotFound(f"No console file '{path}'.")
    return _send(request, asset)


async def config(request: Request) -> HTTPResponse:
    """What the pages show before anyone signs in: models, plans, and whether operators can sign in."""
    settings = auth.services(request).settings
    return _json({
        "models": list(settings.models),
        "plans": {plan: settings.plans[plan] for plan in settings.plans},
        "operators": bool(settings.admin_token),
        "demo": settings.demo,
    })


def _same_origin(request: Request) -> None:
    # A browser names where a request came from; a sign-in posted by another site is refused, so no
    # page elsewhere can sign a visitor in to a session it chose.
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise PermissionDenied("Sign in from the console itself.", code="cross_site_request")


async def operator_sign_in(request: Request) -> HTTPResponse:
    _same_origin(request)
    services = auth.services(request)
    body = parse_body("operator_sign_in", request.body)
    done = await operators.sign_in(services.store, services.settings, body["token"], auth.client_ip(request))
    response = _json({"csrf_token": done.csrf, "expires_at": done.expires_at}, 201)
    auth.set_session_cookies(request, response, operators.COOKIE, done.token, operators.CSRF_COOKIE, done.csrf,
                             services.settings.console.operator_session_ttl)
    return response


async def operator_session(request: Request) -> HTTPResponse:
    _, expires_at = await auth.operator_session(request)
    return _json({"signed_in": True, "expires_at": expires_at})


async def operator_sign_out(request: Request) -> HTTPResponse:
    services = auth.services(request)
    token, _ = await auth.operator_session(request)
    if not signin.csrf_ok(services.settings, token, request.headers.get(signin.CSRF_HEADER)):
        raise PermissionDenied("Missing or wrong X-CSRF-Token header.", param="X-CSRF-Token", code="csrf_failed")
    await operators.sign_out(services.store, services.settings, token)
    response = _json({"signed_out": True})
    auth.clear_session_cookies(request, response, operators.COOKIE, operators.CSRF_COOKIE)
    return response


bp.add_route(page, "/console", methods=["GET"], name="page")
bp.add_route(static, "/console/static/<path:path>", methods=["GET"], name="static")
bp.add_route(config, "/console/api/config", methods=["GET"], name="config")
bp.add_route(operator_sign_in, "/console/api/operator/session", methods=["POST"], name="operator_sign_in")
bp.add_route(operator_session, "/console/api/operator/session", methods=["GET"], name="operator_session")
bp.add_route(operator_sign_out, "/console/api/operator/session", methods=["DELETE"], name="operator_sign_out")
