"""GET /api/v1/models and /api/v1/models/{id}: the public models the key may use, in OpenAI's
list/retrieve shape; in Anthropic's when the request carries ``anthropic-version`` (the anthropic
SDK's ``models.list()``), its errors then in Anthropic's envelope too."""
from __future__ import annotations

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...catalog.models import PublicModel
from ...core.errors import ModelNotFound
from ...gateway.services import Services
from ...wire.messages.api import MESSAGES
from ...wire.messages.models import model_info, model_page
from .. import auth

bp = Blueprint("models")


def model_object(model: PublicModel) -> dict:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": "zowy"}


def _anthropic(request: Request) -> bool:
    """Whether the caller speaks Anthropic's API: then its answers and errors are in that shape."""
    if "anthropic-version" in request.headers:
        request.ctx.api = MESSAGES
        return True
    return False


async def list_models(request: Request) -> HTTPResponse:
    services: Services = request.app.ctx.services
    anthropic = _anthropic(request)
    key = await services.admission.key(auth.api_key(request), request.ip, request.headers.get("x-forwarded-for"))
    models = [m for m in services.settings.models.values() if key.allows(m.id)]
    if anthropic:
        body = model_page((m.id, m.created) for m in models)
    else:
        body = {"object": "list", "data": [model_object(m) for m in models]}
    return HTTPResponse(orjson.dumps(body), content_type="application/json")


async def retrieve_model(request: Request, model_id: str) -> HTTPResponse:
    services: Services = request.app.ctx.services
    anthropic = _anthropic(request)
    key = await services.admission.key(auth.api_key(request), request.ip, request.headers.get("x-forwarded-for"))
    model = services.settings.models.get(model_id)
    if model is None or not key.allows(model.id):
        raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")
    body = model_info(model.id, model.created) if anthropic else model_object(model)
    return HTTPResponse(orjson.dumps(body), content_type="application/json")


for prefix in ("/api/v1", "/v1"):
    alias = "" if prefix == "/api/v1" else "_v1"
    bp.add_route(list_models, f"{prefix}/models", methods=["GET"], name=f"list_models{alias}")
    bp.add_route(retrieve_model, f"{prefix}/models/<model_id:path>", methods=["GET"], name=f"retrieve_model{alias}")
