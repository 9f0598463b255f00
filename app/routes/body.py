"""Reading a request body the handler streams itself, under the size limit and a time limit."""
from __future__ import annotations

import asyncio

from sanic import Request
from sanic.response import HTTPResponse

from ..config import Settings
from ..errors import RequestTimeout


async def receive(request: Request, settings: Settings) -> bool:
    """Read the whole body into ``request.body``; False when it stalled and a 408 was sent instead."""
    # A streaming route lifts Sanic's size limit; the body is read here under both limits.
    http = request.stream
    http.request_max_size = settings.max_body_bytes
    if not (http.request_body == "chunked" or (http.request_body and http.request_bytes_left > len(http.recv_buffer))):
        await request.receive_body()  # already here in full: no timer needed
        return True
    try:
        async with asyncio.timeout(settings.body_timeout):
            await request.receive_body()
        return True
    except TimeoutError:
        # Answer, then drop the connection: the rest of a stalled body must not be waited for.
        error = RequestTimeout()
        http.keep_alive = False
        response = await request.respond(HTTPResponse(error.body(), status=error.status, content_type="application/json"))
        await response.send(end_stream=True)
        request.transport.close()
        return False
