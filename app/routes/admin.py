"""The operator API under /admin/v1: accounts, keys, packages, usage and reconcile.

Every call needs ``Authorization: Bearer $ZOWY_ADMIN_TOKEN``; with no token configured the API is off.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from .. import operations
from ..errors import AdminDisabled, AdminUnauthorized
from ..keys import is_admin
from ..schemas import parse_admin_body
from ..services import Services

bp = Blueprint("admin", url_prefix="/admin/v1")


@bp.on_request
async def require_admin(request: Request) -> None:
    token = request.app.ctx.settings.admin_token
    if not token:
        raise AdminDisabled()
    if not is_admin(request.headers.get("authorization"), token):
        raise AdminUnauthorized()


def _json(value, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(value), status=status, content_type="application/json")


def _services(request: Request) -> Services:
    return request.app.ctx.services


@bp.post("/accounts")
async def create_account(request: Request) -> HTTPResponse:
    body = parse_admin_body("account", request.body)
    account = await operations.create_account(_services(request).store, body["name"])
    return _json(asdict(account), 201)


@bp.get("/accounts")
async def list_accounts(request: Request) -> HTTPResponse:
    return _json({"data": [asdict(a) for a in await _services(request).store.accounts()]})


@bp.get("/accounts/<account>")
async def get_account(request: Request, account: str) -> HTTPResponse:
    store = _services(request).store
    return _json(await operations.balance(store, await operations.find_account(store, account)))


@bp.post("/accounts/<account>/keys")
async def create_key(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("key", request.body)
    services = _services(request)
    found = await operations.find_account(services.store, account)
    record, key = await operations.create_key(
        services.store, services.settings, found, body.get("per_minute"), body.get("per_hour")
    )
    return _json({**operations.key_view(record), "key": key}, 201)


@bp.get("/accounts/<account>/keys")
async def list_keys(request: Request, account: str) -> HTTPResponse:
    store = _services(request).store
    found = await operations.find_account(store, account)
    return _json({"data": [operations.key_view(k) for k in await store.keys(found.id)]})


@bp.post("/keys/<key_id>/revoke")
async def revoke_key(request: Request, key_id: str) -> HTTPResponse:
    await operations.revoke_key(_services(request).store, key_id)
    return _json({"id": key_id, "revoked": True})


@bp.put("/keys/<key_id>/limits")
async def set_limits(request: Request, key_id: str) -> HTTPResponse:
    body = parse_admin_body("limits", request.body)
    await operations.set_limits(_services(request).store, key_id, body.get("per_minute"), body.get("per_hour"))
    return _json({"id": key_id, "per_minute": body.get("per_minute"), "per_hour": body.get("per_hour")})


@bp.post("/accounts/<account>/packages")
async def grant_package(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("package", request.body)
    services = _services(request)
    found = await operations.find_account(services.store, account)
    package = await operations.grant_package(
        services.store, services.settings, found, body["plan"], body.get("tokens"), body.get("days")
    )
    services.admission.forget(account_id=found.id)
    return _json(operations.package_view(package, time.time()), 201)


@bp.get("/accounts/<account>/packages")
async def list_packages(request: Request, account: str) -> HTTPResponse:
    store = _services(request).store
    return _json(await operations.balance(store, await operations.find_account(store, account)))


@bp.get("/accounts/<account>/usage")
async def usage(request: Request, account: str) -> HTTPResponse:
    store = _services(request).store
    found = await operations.find_account(store, account)
    since = operations.parse_time(request.args.get("since"), "since")
    until = operations.parse_time(request.args.get("until"), "until")
    return _json(await operations.usage_report(store, found, since, until))


@bp.get("/reconcile")
async def reconcile(request: Request) -> HTTPResponse:
    services = _services(request)
    return _json(await operations.reconcile(services.store, services.settings))
