"""GET /api/v1/usage: the caller's balance, active package and usage totals."""
from __future__ import annotations

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from .. import operations
from ..services import Services

bp = Blueprint("usage")


async def usage(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    key = await services.admission.key(request.headers.get("authorization"))
    store = services.store
    account = await operations.find_account(store, key.account_id)
    since = operations.parse_time(request.args.get("since"), "since")
    until = operations.parse_time(request.args.get("until"), "until")
    body = await operations.balance(store, account)
    body["usage"] = await operations.usage_report(store, account, since, until)
    return HTTPResponse(orjson.dumps(body), content_type="application/json")


bp.add_route(usage, "/api/v1/usage", methods=["GET"], name="usage")
bp.add_route(usage, "/v1/usage", methods=["GET"], name="usage_v1")
