"""Sanic's server for our own processes: the listening socket the supervisor binds, and in each
worker the app served on it, taken through Sanic's stages as the worker decides (process/worker.py).

Sanic is imported where it is used, so the supervisor loads no more of it than ``bind`` needs.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import config
from ..core.config import Settings

if TYPE_CHECKING:
    from ..gateway.services import Services
    from ..upstream.transport_base import Transport

BACKLOG = 100


def bind(host: str, port: int) -> socket.socket:
    from sanic.server.socket import bind_socket

    return bind_socket(host, port, backlog=BACKLOG)


class Server:
    """The gateway's app on a listening socket handed over by the supervisor: ``open`` (the app
    made, not serving yet), ``prepare`` (the worker's services up), ``serve`` (accepting),
    ``stop_accepting``, ``stopping`` (new requests refused, the rest to drain), ``close``."""

    def __init__(self, app, server, served) -> None:
        self.app = app
        self._server = server
        self._served = served

    @classmethod
    async def open(cls, settings: Settings, listen_fd: int, workers_file: Path, transport: Transport | None = None) -> "Server":
        """The app on the socket ``listen_fd``; ``transport`` carries its upstream requests (None: aiohttp's)."""
        from .app import create_app
        from .connection import GatewayProtocol

        # create_server prints Sanic's production-mode warning on a terminal; Sanic's own workers
        # never do (their manager's process does, once), nor do ours.
        config.export("SANIC_IGNORE_PRODUCTION_WARNING", "true")
        sock = socket.socket(fileno=listen_fd)
        app = create_app(settings, transport)
        app.ctx.workers_file = workers_file
        server = await app.create_server(
            sock=sock, protocol=GatewayProtocol, backlog=BACKLOG, return_asyncio_server=True, access_log=False,
            asyncio_server_kwargs={"start_serving": False},
        )
        served = record_server(app, server, sock)
        await server.startup()
        return cls(app, server, served)

    async def prepare(self) -> None:
        await self._server.before_start()

    async def serve(self) -> None:
        await self._server.start_serving()  # accepting from here on
        await self._server.after_start()
        self.app.set_serving(True)

    def stop_accepting(self) -> None:
        # This process lets go of the listening socket, and no loop ever polls a socket that is
        # shut. The socket closes when the last process does.
        self._server.server.close()

    async def stopping(self) -> None:
        self.app.set_serving(False)
        await self._server.before_stop()

    @property
    def services(self) -> Services | None:
        return getattr(self.app.ctx, "services", None)

    @property
    def connections(self) -> set:
        """The open connections (Sanic's protocols: ``close_if_idle()``, ``abort()``)."""
        return self._server.connections

    async def close(self) -> None:
        from sanic.application.constants import ServerStage

        await self._server.after_stop()
        self._served.stage = ServerStage.STOPPED


def record_server(app, server, sock: socket.socket):
    """Record the server in ``app.state`` as Sanic's own worker does before start-up. Its touch-ups
    read it (with one HTTP/1.1 server the ``alt-svc`` header is compiled out of every response;
    without it the header goes out empty), and ``app.state.stage`` says serving (``app.loop`` and
    ``app.add_task`` work)."""
    from sanic.application.constants import ServerStage
    from sanic.application.state import ApplicationServerInfo
    from sanic.http.constants import HTTP

    host, port = sock.getsockname()[:2]
    settings = {"host": host, "port": port, "version": HTTP.VERSION_1, "sock": sock, "ssl": None, "unix": None, "app": app}
    info = ApplicationServerInfo(settings=settings, stage=ServerStage.SERVING, server=server)
    app.state.server_info.append(info)
    return info
