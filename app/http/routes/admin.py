"""The operator API under /admin/v1: accounts, owners and invites, keys and their controls,
packages, redemption codes, alerts, usage, the audit log and reconcile.

Every call needs ``Authorization: Bearer $ZOWY_ADMIN_TOKEN``, or the web console's operator session
cookie (with ``X-CSRF-Token`` on calls that change anything); with no token configured the API is off.
Every change is written to the audit log with actor ``admin`` and the caller's address.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...accounts import audit, owners, provisioning
from ...billing import grants, packages, reconciliation
from ...core.errors import NotFound
from ...gateway import traffic
from ...store.contracts.audit import AuditQuery
from ...wire import paging
from ...wire.bodies import parse_admin_body
from .. import auth

bp = Blueprint("admin", url_prefix="/admin/v1")


@bp.on_request
async def require_admin(request: Request) -> None:
    await auth.require_operator(request)


def _json(value, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(value), status=status, content_type="application/json")


@bp.post("/accounts")
async def create_account(request: Request) -> HTTPResponse:
    body = parse_admin_body("account", request.body)
    account = await provisioning.create_account(auth.services(request).store, body["name"], auth.operator(request))
    return _json(asdict(account), 201)


@bp.get("/accounts")
async def list_accounts(request: Request) -> HTTPResponse:
    return _json({"data": [asdict(a) for a in await auth.services(request).store.accounts()]})


@bp.get("/accounts/<account>")
async def get_account(request: Request, account: str) -> HTTPResponse:
    store = auth.services(request).store
    return _json(await packages.balance(store, await provisioning.find_account(store, account)))


@bp.post("/accounts/<account>/keys")
async def create_key(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("key", request.body)
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    controls = {k: v for k, v in body.items() if k not in ("per_minute", "per_hour")}
    record, key = await provisioning.create_key(
        services.store, services.settings, found, body.get("per_minute"), body.get("per_hour"),
        controls=controls, actor=auth.operator(request),
    )
    return _json({**provisioning.key_view(record), "key": key}, 201)


@bp.get("/accounts/<account>/keys")
async def list_keys(request: Request, account: str) -> HTTPResponse:
    store = auth.services(request).store
    found = await provisioning.find_account(store, account)
    return _json({"data": [provisioning.key_view(k) for k in await store.keys(found.id)]})


@bp.post("/keys/<key_id>/revoke")
async def revoke_key(request: Request, key_id: str) -> HTTPResponse:
    await provisioning.revoke_key(auth.services(request).store, key_id, auth.operator(request))
    return _json({"id": key_id, "revoked": True})


@bp.put("/keys/<key_id>/limits")
async def set_limits(request: Request, key_id: str) -> HTTPResponse:
    body = parse_admin_body("limits", request.body)
    await provisioning.set_limits(auth.services(request).store, key_id, body.get("per_minute"), body.get("per_hour"), auth.operator(request))
    return _json({"id": key_id, "per_minute": body.get("per_minute"), "per_hour": body.get("per_hour")})


@bp.post("/accounts/<account>/packages")
async def grant_package(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("package", request.body)
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    package = await packages.grant_package(
        services.store, services.settings, found, body["plan"], body.get("tokens"), body.get("days"), auth.operator(request)
    )
    return _json(packages.package_view(package, time.time()), 201)


@bp.get("/accounts/<account>/packages")
async def list_packages(request: Request, account: str) -> HTTPResponse:
    store = auth.services(request).store
    return _json(await packages.balance(store, await provisioning.find_account(store, account)))


@bp.get("/accounts/<account>/usage")
async def usage(request: Request, account: str) -> HTTPResponse:
    store = auth.services(request).store
    found = await provisioning.find_account(store, account)
    since = provisioning.parse_time(request.args.get("since"), "since")
    until = provisioning.parse_time(request.args.get("until"), "until")
    return _json(await packages.usage_report(store, found, since, until))


@bp.get("/reconcile")
async def reconcile(request: Request) -> HTTPResponse:
    services = auth.services(request)
    return _json(await reconciliation.reconcile(services.store, services.settings))


@bp.patch("/keys/<key_id>")
async def set_key_controls(request: Request, key_id: str) -> HTTPResponse:
    body = parse_admin_body("key_controls", request.body)
    services = auth.services(request)
    record = await provisioning.set_key_controls(services.store, services.settings, key_id, body, actor=auth.operator(request))
    return _json(provisioning.key_view(record))


@bp.post("/accounts/<account>/owners")
async def create_owner(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("owner", request.body)
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    owner = await owners.create_owner(services.store, services.settings, found, body["email"], body["password"], auth.operator(request))
    return _json(owners.owner_view(owner), 201)


@bp.get("/accounts/<account>/owners")
async def list_owners(request: Request, account: str) -> HTTPResponse:
    store = auth.services(request).store
    found = await provisioning.find_account(store, account)
    return _json({"data": [owners.owner_view(o) for o in await store.owners(found.id)]})


@bp.post("/accounts/<account>/invites")
async def invite_owner(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("invite", request.body)
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    made, token = await owners.invite(services.store, services.settings, found, body["email"], auth.operator(request))
    return _json({"id": made.id, "account_id": made.account_id, "email": made.email, "created_at": made.created_at,
                  "expires_at": made.expires_at, "token": token, "accept": "POST /api/v1/auth/invite/accept"}, 201)


@bp.post("/codes")
async def create_codes(request: Request) -> HTTPResponse:
    body = parse_admin_body("codes", request.body)
    services = auth.services(request)
    batch = await grants.create_batch(
        services.store, services.settings, plan=body.get("plan"), tokens=body.get("tokens"), days=body.get("days"),
        count=body["count"], expires_in_days=body.get("expires_in_days"), actor=auth.operator(request),
    )
    return _json(batch, 201)


@bp.get("/codes/<batch_id>")
async def list_codes(request: Request, batch_id: str) -> HTTPResponse:
    codes = await auth.services(request).store.codes(batch_id)
    if not codes:
        raise NotFound(f"No code batch '{batch_id}'.", param="batch_id", code="batch_not_found")
    redeemed = sum(1 for c in codes if c.redeemed_by is not None)
    return _json({"batch_id": batch_id, "count": len(codes), "redeemed": redeemed, "data": [grants.code_view(c) for c in codes]})


@bp.get("/accounts/<account>/alerts")
async def get_alerts(request: Request, account: str) -> HTTPResponse:
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    return _json(await services.alerts.describe(found.id))


@bp.put("/accounts/<account>/alerts")
async def put_alerts(request: Request, account: str) -> HTTPResponse:
    body = parse_admin_body("alerts", request.body)
    services = auth.services(request)
    found = await provisioning.find_account(services.store, account)
    return _json(await services.alerts.configure(found.id, body["url"], body.get("thresholds"), auth.operator(request)))


@bp.get("/traffic")
async def live_traffic(request: Request) -> HTTPResponse:
    return _json(traffic.summary(auth.services(request)))


@bp.get("/audit")
async def audit_log(request: Request) -> HTTPResponse:
    store = auth.services(request).store
    args = request.args
    account_id = None
    if args.get("account"):
        account_id = (await provisioning.find_account(store, args.get("account"))).id
    query = AuditQuery(
        limit=paging.limit(args.get("limit")),
        after=paging.after(args.get("cursor")),
        account_id=account_id,
        action=args.get("action") or None,
        since=provisioning.parse_time(args.get("since"), "since"),
        until=provisioning.parse_time(args.get("until"), "until"),
    )
    return _json(await audit.page(store, query))
