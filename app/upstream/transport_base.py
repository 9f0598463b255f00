"""The transport seam: what the upstream client needs of a transport and of the responses it returns.
The HTTP/1.1 transport (transport_h1.py), the aiohttp fallback (transport.py) and the in-process mock
(mock.py) all fit it; the client knows nothing else of them."""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, runtime_checkable

from ..catalog.models import Target


class Content(Protocol):
    async def readany(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""


class Response(Protocol):
    """An upstream's answer once its head is in. It may also offer ``attach(on_data, on_end) -> bool``
    and ``detach()``: the body's reads handed to ``on_data`` in the transport's own callback
    (transport_h1.py); a stream relayed so wakes no task per read."""

    status: int
    headers: Mapping[str, str]
    content: Content

    def release(self) -> None:
        """The body was read to its end: the connection goes back to the pool."""

    def close(self) -> None:
        """Drop the connection (a pending read fails)."""


@runtime_checkable
class Transport(Protocol):
    """Sends chat requests to targets; one per worker, started before use and closed at its end."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, target: Target, body: bytes, headers: Mapping[str, str], on_sent: Callable[[], None]) -> Response:
        """POST ``body`` to ``target``; ``on_sent`` is called the moment the body goes out."""

    def failure(self, exc: BaseException) -> str | None:
        """The kind of transport failure ``exc`` is (``connect``, ``timeout``, ``connection``), or None
        when it is not one of this transport's."""
