"""Operations endpoints: /healthz (the process answers), /readyz (it can serve: store reachable,
not draining, every worker of the instance up), /metrics (Prometheus) and /openapi.json (the API's
description)."""
from __future__ import annotations

import asyncio

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...access.keys import is_admin
from ...core import instance
from ...core.errors import AdminUnauthorized, NotFound, StoreUnavailable
from ...core.metrics import CONTENT_TYPE
from ...gateway.services import Services
from ..openapi import document

bp = Blueprint("health")

_OK = orjson.dumps({"status": "ok"})


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return HTTPResponse(_OK, content_type="application/json")


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    checks: dict = {"draining": services.draining}
    try:
        async with asyncio.timeout(services.settings.store_timeout):
            await services.store.ping()
        checks["store"] = "ok"
    except (StoreUnavailable, TimeoutError):
        checks["store"] = "unavailable"
    workers = instance.read(getattr(request.app.ctx, "workers_file", None))
    if workers is not None:
        checks["workers"] = {"expected": workers.get("expected"), "ready": workers.get("ready")}
    if is_admin(request.headers.get("authorization"), services.settings.admin_token):
        upstream = services.upstream
        checks["targets"] = upstream.breaker.snapshot(upstream.targets())
        checks["ledger"] = {"queued": services.ledger_writer.depth, "spool_bytes": services.ledger_writer.spool.size()}
    ready = checks["store"] == "ok" and not services.draining
    if workers is not None and workers.get("ready") != workers.get("expected"):
        ready = False
    body = {"status": "ready" if ready else "unready", "checks": checks}
    return HTTPResponse(orjson.dumps(body), status=200 if ready else 503, content_type="application/json")


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    mode = services.settings.metrics
    if mode == "off":
        raise NotFound("Metrics are turned off.")
    if mode == "admin" and not is_admin(request.headers.get("authorization"), services.settings.admin_token):
        raise AdminUnauthorized("Metrics need the admin token (or ZOWY_METRICS=public).")
    return HTTPResponse(services.metrics.render(), content_type=CONTENT_TYPE)


@bp.get("/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    cached = getattr(request.app.ctx, "openapi", None)
    if cached is None:
        cached = request.app.ctx.openapi = orjson.dumps(document(request.app.ctx.settings))
    return HTTPResponse(cached, content_type="application/json")
