"""POST /api/v1/chat/completions: the Chat Completions API, on the chat pipeline (gateway/pipeline.py)."""
from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...wire.chat import CHAT_COMPLETIONS
from .. import client_api

bp = Blueprint("chat")


async def chat_completions(request: Request) -> HTTPResponse | None:
    return await client_api.create(request, CHAT_COMPLETIONS.name, _chat, request.headers.get("authorization"))


def _chat(exchange: object) -> object:
    return CHAT_COMPLETIONS


# stream=True: the body is read by the handler, under the gateway's size limit; ctx_direct=True: a
# plain request may skip Sanic's request cycle (http/connection.py).
bp.add_route(chat_completions, "/api/v1/chat/completions", methods=["POST"], name="chat_completions", stream=True,
             ctx_direct=True)
bp.add_route(chat_completions, "/v1/chat/completions", methods=["POST"], name="chat_completions_v1", stream=True,
             ctx_direct=True)
