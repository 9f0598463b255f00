"""What every client API's create route does (chat, Responses, Messages): the body read, the
exchange, the pipeline, and the answer written — whole, streamed, or refused before it began."""
from __future__ import annotations

from typing import Any, Callable

from sanic import Request
from sanic.response import HTTPResponse

from ..core.errors import GatewayError
from ..gateway import pipeline
from ..gateway.exchange import Exchange
from ..gateway.services import Services
from . import io


async def create(request: Request, name: str, api_for: Callable[[Exchange], Any], authorization: str | None,
                 id_header: str | None = None) -> HTTPResponse | None:
    """Serve one request of the API ``api_for`` makes for its exchange. The API may also have
    ``refusal(error)`` (the error as that API answers it) and ``store_answer()`` (run before a whole
    answer goes out); ``id_header`` names a second header carrying the request id."""
    services: Services = request.app.ctx.services
    await io.receive(request, services.settings)
    headers = request.headers
    loop = getattr(getattr(request.stream, "protocol", None), "loop", None)  # None under an ASGI server
    with Exchange(services, len(request.body), headers.get("x-request-id"), name, loop) as exchange:
        if id_header is not None:
            exchange.headers[id_header] = exchange.request_id
        request.ctx.headers = exchange.headers
        call = pipeline.Call(
            request.body, headers.get("content-type", ""), authorization, request.ip,
            headers.get("x-forwarded-for"), lambda: io.gone(request),
        )
        api = api_for(exchange)
        try:
            answer = await pipeline.serve(services, api, exchange, call)
        except GatewayError as error:
            refusal = getattr(api, "refusal", None)
            if refusal is not None:
                error = refusal(error)
            exchange.failed(error)
            return await io.refuse(request, error, api, services.draining)
        if type(answer) is bytes:
            stored = getattr(api, "store_answer", None)
            if stored is not None:
                await stored()
            return await io.answer(request, answer, exchange.headers, services.draining)
        await io.send_events(request, answer)
        return None
