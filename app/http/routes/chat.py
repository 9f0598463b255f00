"""POST /api/v1/chat/completions: the Chat Completions API, on the chat pipeline (gateway/pipeline.py)."""
from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...core.errors import GatewayError
from ...gateway import pipeline
from ...gateway.exchange import Exchange
from ...gateway.services import Services
from ...wire.chat import CHAT_COMPLETIONS
from .. import io

bp = Blueprint("chat")


async def chat_completions(request: Request) -> HTTPResponse | None:
    services: Services = request.app.ctx.services
    await io.receive(request, services.settings)
    headers = request.headers
    with Exchange(services, len(request.body), headers.get("x-request-id"), CHAT_COMPLETIONS.name) as exchange:
        request.ctx.headers = exchange.headers
        call = pipeline.Call(
            request.body, headers.get("content-type", ""), headers.get("authorization"), request.ip,
            headers.get("x-forwarded-for"), lambda: io.gone(request),
        )
        try:
            answer = await pipeline.serve(services, CHAT_COMPLETIONS, exchange, call)
        except GatewayError as error:
            exchange.failed(error)
            return await io.refuse(request, error, CHAT_COMPLETIONS, services.draining)
        if type(answer) is bytes:
            return await io.answer(request, answer, exchange.headers, services.draining)
        await io.send_events(request, answer)
        return None


# stream=True: the body is read by the handler, under the gateway's size limit.
bp.add_route(chat_completions, "/api/v1/chat/completions", methods=["POST"], name="chat_completions", stream=True)
bp.add_route(chat_completions, "/v1/chat/completions", methods=["POST"], name="chat_completions_v1", stream=True)
