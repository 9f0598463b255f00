"""The Sanic application: ``create_app(settings)`` wires routes, per-worker resources and the one
error handler that renders every failure as the OpenAI error envelope. ``create_app(settings,
transport)`` serves every upstream call through ``transport`` instead of HTTP (a ``MockTransport``:
the whole gateway in process)."""
from __future__ import annotations

import asyncio
import logging
import os

from sanic import Request, Sanic
from sanic import exceptions as sanic_errors
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse
from sanic.router import Router

from ..core import logs
from ..core.config import Settings
from ..core.errors import (
    ClientGone,
    GatewayError,
    HeaderTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    StoreUnavailable,
)
from ..core.ids import new_request_id
from ..core.metrics import Metrics
from ..gateway.services import Services
from ..upstream.transport_base import Transport
from . import console, io
from .routes import account, admin, chat, health, messages, models, responses, topup, usage

log = logging.getLogger("zowy")


class GatewayErrorHandler(ErrorHandler):
    """Every exception, ours or Sanic's, becomes an error response: in the envelope of the client API
    the route speaks (its ``ctx_api``, or the one a handler chose in ``request.ctx.api``, when that
    API has an ``error_body`` of its own), else OpenAI's."""

    def response(self, request: Request | None, exception: BaseException) -> HTTPResponse:
        error = as_gateway_error(request, exception)
        headers, body = io.error_parts(request, error, _api(request, exception))
        return HTTPResponse(body, status=error.status, headers=headers, content_type="application/json")

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        return self.response(request, exception)


def _api(request: Request | None, exception: BaseException) -> object | None:
    """The client API a request is answered in, if its route (or handler) named one; for a method
    the path does not take, the API of the path's routes."""
    if request is None:
        return None
    chosen = getattr(request.ctx, "api", None)
    if chosen is not None:
        return chosen
    route = request.route
    if route is None and isinstance(exception, sanic_errors.MethodNotAllowed) and exception.allowed_methods:
        try:
            route = request.app.router.get(request.path, next(iter(exception.allowed_methods)), None)[0]
        except Exception:
            return None
    return getattr(route.ctx, "api", None) if route is not None else None


class GatewayRouter(Router):
    """Sanic's router with HEAD wherever GET: the GET's handler answers, and Sanic sends its status
    and headers without the body."""

    def add(self, uri, methods, handler, *args, **kwargs):
        methods = {m.upper() for m in methods}
        if "GET" in methods:
            methods.add("HEAD")
        return super().add(uri, sorted(methods), handler, *args, **kwargs)


def as_gateway_error(request: Request | None, exception: BaseException) -> GatewayError:
    """Map Sanic's and unexpected exceptions onto the gateway's error tree."""
    if isinstance(exception, GatewayError):
        return exception
    if isinstance(exception, asyncio.CancelledError):
        return ClientGone()  # the caller left; nobody reads this answer, and it is not an error
    if isinstance(exception, sanic_errors.NotFound):
        where = f"{request.method} {request.path}" if request is not None else "this URL"
        return NotFound(f"Unknown request URL: {where}.")
    if isinstance(exception, sanic_errors.MethodNotAllowed):
        allowed = sorted(exception.allowed_methods or ())
        return MethodNotAllowed(headers={"allow": ", ".join(allowed)} if allowed else None)
    if isinstance(exception, sanic_errors.PayloadTooLarge):
        return HeaderTooLarge() if "header" in str(exception).lower() else PayloadTooLarge()
    if isinstance(exception, sanic_errors.RequestTimeout):
        return RequestTimeout()
    if isinstance(exception, sanic_errors.HeaderNotFound):
        return InvalidRequest(str(exception) or "A required header is missing.", param="headers")
    if isinstance(exception, sanic_errors.BadRequest):
        text = str(exception)
        if "header" in text.lower() and "large" in text.lower():
            return HeaderTooLarge()
        return InvalidRequest("The HTTP request is malformed.", param="body", code="bad_request")
    if isinstance(exception, sanic_errors.ServiceUnavailable):
        return StoreUnavailable("The request took too long to process.")
    if isinstance(exception, sanic_errors.SanicException) and 400 <= (exception.status_code or 500) < 500:
        error = InvalidRequest(str(exception) or "The request is invalid.", code="bad_request")
        error.status = exception.status_code
        return error
    log.error("unhandled error", exc_info=exception)
    return ServerError()


def create_app(settings: Settings, transport: Transport | None = None, *, name: str = "zowy") -> Sanic:
    app = Sanic(name, error_handler=GatewayErrorHandler(), router=GatewayRouter(), configure_logging=False)
    longest = max((t.timeouts.total for m in settings.models.values() for t in m.targets), default=600.0)
    app.config.update(
        REQUEST_MAX_SIZE=settings.max_body_bytes,
        REQUEST_TIMEOUT=settings.body_timeout,
        REQUEST_MAX_HEADER_SIZE=settings.max_header_bytes,
        RESPONSE_TIMEOUT=longest + 30,
        KEEP_ALIVE_TIMEOUT=75,
        ACCESS_LOG=False,
        MOTD=False,
        NOISY_EXCEPTIONS=False,
        GRACEFUL_SHUTDOWN_TIMEOUT=settings.drain_timeout,
    )
    app.ctx.settings = settings
    for blueprint in (chat.bp, responses.bp, messages.bp, models.bp, usage.bp, health.bp, admin.bp, account.bp,
                      topup.bp):
        app.blueprint(blueprint)
    if settings.console.enabled:
        app.blueprint(console.bp)

    @app.before_server_start
    async def start_services(app: Sanic) -> None:
        logs.configure(settings.log_level, settings.log_format)
        services = Services.build(settings, transport)
        await services.start()
        app.ctx.services = services

    @app.before_server_stop
    async def start_draining(app: Sanic) -> None:
        """Stopping (the worker no longer accepts): readyz turns unready and each connection closes
        after its current response; the worker drains what is in flight (process/worker.py)."""
        services = getattr(app.ctx, "services", None)
        if services is not None:
            services.draining = True

    @app.on_response
    async def finish_response(request: Request, response: HTTPResponse) -> None:
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = new_request_id()
        if app.ctx.services.draining:
            io.close_after(request)

    @app.after_server_stop
    async def stop_services(app: Sanic) -> None:
        services = getattr(app.ctx, "services", None)
        if services is not None:
            await services.close()
        Metrics.worker_stopped(os.getpid())

    return app
