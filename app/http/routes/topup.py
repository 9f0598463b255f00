"""POST /webhooks/topup: a payment provider's signed top-up event grants a package, once per event_id.

Off (403) unless ZOWY_TOPUP_SECRET is set. A bad signature, a stale timestamp, an unknown account or
an invalid body changes nothing and gets a 4xx naming what was wrong.
"""
from __future__ import annotations

import time

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...accounts.audit import Actor
from ...billing import grants, packages
from ...core import signing
from ...core.errors import WebhookDisabled
from ...gateway.services import Services
from ...wire.bodies import parse_body

bp = Blueprint("webhooks")


@bp.post("/webhooks/topup")
async def topup(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    hooks = services.settings.hooks
    if not hooks.topup_secret:
        raise WebhookDisabled()
    signing.verify(
        hooks.topup_secret, request.headers.get(signing.TIMESTAMP_HEADER), request.headers.get(signing.SIGNATURE_HEADER),
        request.body, time.time(), hooks.window,
    )
    event = parse_body("topup", request.body)
    actor = Actor("webhook:topup", services.admission.client(request.ip, request.headers.get("x-forwarded-for")))
    package, duplicate = await grants.topup(services.store, services.settings, event, actor)
    body = {"event_id": event["event_id"], "account_id": package.account_id, "duplicate": duplicate,
            "package": packages.package_view(package, time.time())}
    return HTTPResponse(orjson.dumps(body), status=200, content_type="application/json")
