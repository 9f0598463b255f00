"""GET /api/v1/usage: the caller's balance, active package and usage totals; the caller is an API
key or an account owner's session."""
from __future__ import annotations

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...accounts import provisioning
from ...billing import packages
from ...gateway.services import Services
from .. import auth

bp = Blueprint("usage")


async def usage(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    if auth.owner_session_sent(request):
        account_id = (await auth.signed_in(request)).session.account_id
    else:
        headers = request.headers
        account_id = (await services.admission.key(headers.get("authorization"), request.ip, headers.get("x-forwarded-for"))).account_id
    store = services.store
    account = await provisioning.find_account(store, account_id)
    since = provisioning.parse_time(request.args.get("since"), "since")
    until = provisioning.parse_time(request.args.get("until"), "until")
    body = await packages.balance(store, account)
    body["usage"] = await packages.usage_report(store, account, since, until)
    return HTTPResponse(orjson.dumps(body), content_type="application/json")


bp.add_route(usage, "/api/v1/usage", methods=["GET"], name="usage")
bp.add_route(usage, "/v1/usage", methods=["GET"], name="usage_v1")
