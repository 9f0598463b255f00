"""The Responses API: POST /api/v1/responses on the chat pipeline (gateway/pipeline.py with
gateway/responses.py's ResponsesApi), and the stored responses: GET and DELETE
/api/v1/responses/{id}, GET /api/v1/responses/{id}/input_items."""
from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...gateway import responses
from ...gateway.services import Services
from .. import client_api

bp = Blueprint("responses")


async def create(request: Request) -> HTTPResponse | None:
    return await client_api.create(request, responses.ResponsesApi.name, responses.ResponsesApi,
                                   request.headers.get("authorization"))


async def _account(request: Request) -> str:
    services: Services = request.app.ctx.services
    headers = request.headers
    key = await services.admission.key(headers.get("authorization"), request.ip, headers.get("x-forwarded-for"))
    return key.account_id


async def retrieve(request: Request, response_id: str) -> HTTPResponse:
    services: Services = request.app.ctx.services
    body = await responses.retrieve(services.store, await _account(request), response_id)
    return HTTPResponse(body, content_type="application/json")


async def delete(request: Request, response_id: str) -> HTTPResponse:
    services: Services = request.app.ctx.services
    body = await responses.delete(services.store, await _account(request), response_id)
    return HTTPResponse(body, content_type="application/json")


async def input_items(request: Request, response_id: str) -> HTTPResponse:
    services: Services = request.app.ctx.services
    args = {name: request.args.get(name) for name in ("limit", "order", "after")}
    body = await responses.input_items(services.store, await _account(request), response_id, args)
    return HTTPResponse(body, content_type="application/json")


for prefix, suffix in (("/api/v1", ""), ("/v1", "_v1")):
    # stream=True: the body is read by the handler, under the gateway's size limit; ctx_direct=True: a
    # plain request may skip Sanic's request cycle (http/connection.py).
    bp.add_route(create, f"{prefix}/responses", methods=["POST"], name=f"create_response{suffix}", stream=True,
                 ctx_direct=True)
    bp.add_route(retrieve, f"{prefix}/responses/<response_id:str>", methods=["GET"], name=f"retrieve_response{suffix}")
    bp.add_route(delete, f"{prefix}/responses/<response_id:str>", methods=["DELETE"], name=f"delete_response{suffix}")
    bp.add_route(input_items, f"{prefix}/responses/<response_id:str>/input_items", methods=["GET"],
                 name=f"response_input_items{suffix}")
