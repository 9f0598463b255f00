"""Reading a request body the handler streams itself, under the size limit (its time limit is the
connection's body deadline, app/http/connection.py)."""
from __future__ import annotations

from sanic import Request

from ..core.config import Settings


async def receive(request: Request, settings: Settings) -> None:
    """Read the whole body into ``request.body``."""
    # A streaming route lifts Sanic's size limit; the body is read here under ours.
    request.stream.request_max_size = settings.max_body_bytes
    await request.receive_body()
