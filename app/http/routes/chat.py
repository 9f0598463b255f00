"""POST /api/v1/chat/completions: admit, validate, relay, meter."""
from __future__ import annotations

import asyncio

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...billing.need import prompt_need
from ...catalog.models import PublicModel
from ...core.errors import GatewayError, InvalidRequest, ModelNotFound, StreamCut
from ...gateway.exchange import Exchange
from ...gateway.services import Services
from ...wire.chat import parse_chat_request
from ...wire.rewrite import StreamRewriter
from ...wire.sse import format_event
from ..io import receive

bp = Blueprint("chat")

_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat_completions(request: Request) -> HTTPResponse | None:
    services: Services = request.app.ctx.services
    await receive(request, services.settings)
    with Exchange(services, len(request.body), request.headers.get("x-request-id")) as exchange:
        request.ctx.headers = exchange.headers
        try:
            return await _serve(request, services, exchange)
        except asyncio.CancelledError:
            if not exchange.was_cut or exchange.upstream is not None:
                raise
            asyncio.current_task().uncancel()  # the drain deadline, not the caller: answer 503
            raise StreamCut() from None


# stream=True: the body is read by the handler, under the gateway's size limit.
bp.add_route(chat_completions, "/api/v1/chat/completions", methods=["POST"], name="chat_completions", stream=True)
bp.add_route(chat_completions, "/v1/chat/completions", methods=["POST"], name="chat_completions_v1", stream=True)


async def _serve(request: Request, services: Services, exchange: Exchange) -> HTTPResponse | None:
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise InvalidRequest(
            "Send the request body as JSON with 'Content-Type: application/json'.",
            param="content-type",
            code="invalid_content_type",
        )
    admission = services.admission
    key = await admission.key(request.headers.get("authorization"), request.ip, request.headers.get("x-forwarded-for"))
    exchange.key_id, exchange.account_id = key.id, key.account_id
    admission.refuse_if_full(key)  # a retry loop against a full window costs no parsing, no store
    body, facts = parse_chat_request(request.body, services.settings.request_limits)
    model = services.settings.models.get(body["model"])
    if model is None or not key.allows(model.id):
        raise ModelNotFound(f"The model '{body['model']}' does not exist or you do not have access to it.", param="model")
    if facts.first_image is not None and not model.vision:
        raise InvalidRequest(
            "Invalid content type. image_url is only supported by certain models.",
            param=facts.first_image,
            code="invalid_content_type",
        )
    exchange.admitted(model.id, body)
    decision = await admission.limit(key)
    exchange.headers.update(decision.headers())
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or model.default_completion_tokens
    choices = body.get("n") or 1
    prompt = prompt_need(len(request.body), facts.image_bytes, facts.images, services.guard_bytes)
    reservation = exchange.reservation = await admission.reserve(key, prompt, completion, choices)
    if reservation.tokens < prompt + completion * choices:
        # The balance (or the key's cap) holds less than the answer allowed: the answer is limited
        # to what it holds, as a max_tokens of the caller's would (the target's own field is sent).
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = (reservation.tokens - prompt) // choices
    _still_wanted(request)  # a reservation taken for a caller who left goes back with the exchange
    if exchange.stream:
        return await _stream(request, services, model, body, exchange)
    out, exchange.usage, exchange.response_bytes = await services.upstream.complete(
        model, body, exchange.request_id, exchange.attempts, exchange.completion_id
    )
    return HTTPResponse(out, status=200, headers=exchange.headers, content_type="application/json")


def _still_wanted(request: Request) -> None:
    """A caller who hung up during admission gets no upstream call, even where a store driver
    swallowed the task's cancellation."""
    task = asyncio.current_task()
    conn_info = request.conn_info
    if (conn_info is not None and conn_info.lost) or (task is not None and task.cancelling()):
        raise asyncio.CancelledError()


async def _stream(request: Request, services: Services, model: PublicModel, body: dict, exchange: Exchange) -> None:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream = exchange.upstream = await services.upstream.stream(
        model, body, exchange.request_id, exchange.attempts,
        lambda dialect: StreamRewriter(model.id, exchange.completion_id, include_usage, dialect, exchange.estimate),
    )
    try:
        response = await request.respond(headers={**exchange.headers, **_STREAM_HEADERS}, content_type="text/event-stream")
        try:
            await response.send(await anext(upstream))  # the headers go out with the first event
            await _relay(request, upstream)
        except GatewayError as failure:
            exchange.failed(failure)
            await response.send(format_event(failure.body()))
        if services.draining:
            request.stream.keep_alive = False  # a stream that began before SIGTERM: close after it
        await response.eof()
    finally:
        upstream.close()


async def _relay(request: Request, upstream) -> None:
    """The rest of the stream, each read written as one HTTP chunk straight to the connection, with
    the connection's own back-pressure: what Sanic's ``response.send`` does, minus its per-call
    signal dispatch and layers (measured: bench ``long-stream``)."""
    protocol = request.stream.protocol
    transport = protocol.transport
    can_write = protocol._can_write
    async for chunk in upstream:
        if transport.is_closing():
            raise asyncio.CancelledError("the client closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if not can_write.is_set():
            await can_write.wait()
