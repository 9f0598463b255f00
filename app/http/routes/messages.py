"""POST /v1/messages (alias /api/v1/messages; ``?beta=true`` as Claude Code sends it) and
POST /v1/messages/count_tokens: Anthropic's Messages API on the chat pipeline (gateway/pipeline.py),
every failure in Anthropic's envelope (the routes' ``ctx_api``)."""
from __future__ import annotations

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...billing.need import IMAGE_TOKENS
from ...core.errors import InvalidRequest, ModelNotFound
from ...core.ids import new_request_id
from ...gateway.services import Services
from ...wire.messages.api import MESSAGES
from ...wire.messages.count import count_tokens
from ...wire.messages.request import parse_count_request
from .. import auth, client_api, io

bp = Blueprint("messages")


async def messages(request: Request) -> HTTPResponse | None:
    # request-id: where Anthropic's SDKs look for the request's id.
    return await client_api.create(request, MESSAGES.name, _messages, auth.api_key(request), id_header="request-id")


def _messages(exchange: object) -> object:
    return MESSAGES


async def count(request: Request) -> HTTPResponse:
    """An estimate of the request's input tokens (wire/messages/count.py): authenticated, refused
    while the key's window is full, neither counted in its rate windows nor billed."""
    services: Services = request.app.ctx.services
    request_id = new_request_id()
    request.ctx.headers = {"x-request-id": request_id, "request-id": request_id}
    await io.receive(request, services.settings)
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise InvalidRequest("Send the request body as JSON with 'Content-Type: application/json'.",
                             param="content-type", code="invalid_content_type")
    admission = services.admission
    key = await admission.key(auth.api_key(request), request.ip, request.headers.get("x-forwarded-for"))
    admission.refuse_if_full(key)
    chat, facts = parse_count_request(request.body, services.settings.request_limits)
    model = services.settings.models.get(chat["model"])
    if model is None or not key.allows(model.id):
        raise ModelNotFound(f"The model '{chat['model']}' does not exist or you do not have access to it.", param="model")
    tokens = count_tokens(chat, facts, len(services.settings.persona_prompt), IMAGE_TOKENS)
    return HTTPResponse(orjson.dumps({"input_tokens": tokens}), headers=request.ctx.headers, content_type="application/json")


# stream=True: the body is read by the handler, under the gateway's size limit; ctx_direct=True: a
# plain request may skip Sanic's request cycle (http/connection.py).
for prefix in ("/v1", "/api/v1"):
    alias = "" if prefix == "/v1" else "_api"
    bp.add_route(messages, f"{prefix}/messages", methods=["POST"], name=f"messages{alias}", stream=True, ctx_api=MESSAGES,
                 ctx_direct=True)
    bp.add_route(count, f"{prefix}/messages/count_tokens", methods=["POST"], name=f"count_tokens{alias}", stream=True,
                 ctx_api=MESSAGES, ctx_direct=True)
