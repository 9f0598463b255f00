"""The Python floor: a minimal Sanic pass-through proxy for POST /v1/chat/completions.

No auth, no limits, no metering, no parsing: the body goes upstream as received, non-stream answers
come back whole, streams are relayed chunk by chunk as they arrive. ``--client`` picks the upstream
HTTP client so the candidates can be compared under the same server:

    python -m bench.baselines.bare_proxy --port 8002 --upstream http://127.0.0.1:8001/v1 \
        [--client aiohttp|httpx|httpx-aiohttp] [--transport aiohttp|aiohttp-tuned|pyreqwest|pyqwest|h1]

``--transport`` relays through one of the gateway's upstream transports instead (the interface of
app/upstream/transport.py, with the gateway's request headers): the transport bake-off. An https
upstream is trusted through ``SSL_CERT_FILE``.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial

from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic.worker.loader import AppLoader

CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp")
TRANSPORT_NAMES = ("aiohttp", "aiohttp-tuned", "pyreqwest", "pyqwest", "h1")
_SSE = "text/event-stream"


class AiohttpRelay:
    """aiohttp.ClientSession, as the gateway uses it."""

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None), skip_auto_headers=("User-Agent",),
        )

    async def relay(self, request: Request, url: str, headers: dict) -> HTTPResponse | None:
        async with self.session.post(url, data=request.body, headers=headers) as upstream:
            content_type = upstream.headers.get("content-type", "application/json")
            if not content_type.startswith(_SSE):
                return HTTPResponse(await upstream.read(), status=upstream.status, content_type=content_type)
            response = await request.respond(status=upstream.status, content_type=content_type)
            async for chunk in upstream.content.iter_any():
                await response.send(chunk)
            await response.eof()
            return None

    async def close(self) -> None:
        await self.session.close()


class HttpxRelay:
    """httpx.AsyncClient with its default transport, or with httpx-aiohttp's transport."""

    def __init__(self, with_aiohttp: bool) -> None:
        import httpx

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=60)
        timeout = httpx.Timeout(60.0, connect=5.0)
        if with_aiohttp:
            from httpx_aiohttp import HttpxAiohttpClient

            self.client = HttpxAiohttpClient(limits=limits, timeout=timeout)
        else:
            self.client = httpx.AsyncClient(limits=limits, timeout=timeout)

    async def relay(self, request: Request, url: str, headers: dict) -> HTTPResponse | None:
        upstream = await self.client.send(
            self.client.build_request("POST", url, content=request.body, headers=headers), stream=True
        )
        try:
            content_type = upstream.headers.get("content-type", "application/json")
            if not content_type.startswith(_SSE):
                return HTTPResponse(await upstream.aread(), status=upstream.status_code, content_type=content_type)
            response = await request.respond(status=upstream.status_code, content_type=content_type)
            async for chunk in upstream.aiter_raw():
                await response.send(chunk)
            await response.eof()
            return None
        finally:
            await upstream.aclose()

    async def close(self) -> None:
        await self.client.aclose()


class TransportRelay:
    """One of the gateway's upstream transports (bench/transports.py:TRANSPORTS), used as the gateway
    uses it: ``send`` with the gateway's four headers, ``content.readany()``, then ``release()``."""

    def __init__(self, name: str, upstream: str, api_key: str) -> None:
        from app.catalog.models import Target
        from app.upstream.transport import make_transport

        from ..transports import TRANSPORTS

        self.transport = make_transport(TRANSPORTS[name], 4096)
        self.target = Target(name="bench", provider="openai", base_url=upstream.rstrip("/"), model="bench",
                             api_key_env="", api_key=api_key)
        self.auth = f"Bearer {api_key}"
        self.count = 0

    async def start(self) -> None:
        await self.transport.start()

    async def relay(self, request: Request, url: str, headers: dict) -> HTTPResponse | None:
        self.count += 1
        stream = b'"stream":true' in request.body
        upstream = await self.transport.send(self.target, request.body, {
            "Authorization": self.auth, "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json", "X-Request-Id": f"bench-{self.count}",
        }, _nothing)
        read = upstream.content.readany
        try:
            content_type = upstream.headers.get("content-type", "application/json")
            if not content_type.startswith(_SSE):
                parts = []
                while chunk := await read():
                    parts.append(chunk)
                upstream.release()
                return HTTPResponse(b"".join(parts), status=upstream.status, content_type=content_type)
            response = await request.respond(status=upstream.status, content_type=content_type)
            while chunk := await read():
                await response.send(chunk)
            upstream.release()
            await response.eof()
            return None
        finally:
            upstream.close()  # a no-op after release()

    async def close(self) -> None:
        await self.transport.close()


def _nothing() -> None:
    return None


def create_app(upstream: str, client: str, api_key: str, transport: str | None = None) -> Sanic:
    app = Sanic("bare_proxy", configure_logging=False)
    app.config.update(ACCESS_LOG=False, MOTD=False, KEEP_ALIVE_TIMEOUT=75, REQUEST_MAX_SIZE=64 * 1024 * 1024)
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    @app.before_server_start
    async def start(app: Sanic) -> None:
        if transport:
            app.ctx.relay = TransportRelay(transport, upstream, api_key)
            await app.ctx.relay.start()
        else:
            app.ctx.relay = AiohttpRelay() if client == "aiohttp" else HttpxRelay(client == "httpx-aiohttp")

    @app.after_server_stop
    async def stop(app: Sanic) -> None:
        await app.ctx.relay.close()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await request.app.ctx.relay.relay(request, url, headers)

    @app.get("/healthz")
    async def health(request: Request):
        return HTTPResponse(b'{"ok":true}', content_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines.bare_proxy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--client", choices=CLIENTS, default="aiohttp")
    p.add_argument("--transport", choices=TRANSPORT_NAMES, help="relay through this upstream transport instead")
    p.add_argument("--api-key", default="sk-bench-upstream")
    p.add_argument("--workers", type=int, default=1, help="worker processes (Sanic's own manager above 1)")
    args = p.parse_args(argv)
    print(f"bare proxy ({args.transport or args.client}) on http://{args.host}:{args.port} -> {args.upstream}", flush=True)
    if args.workers > 1:
        # Sanic's own manager: each worker process builds the app from the factory.
        loader = AppLoader(factory=partial(create_app, args.upstream, args.client, args.api_key, args.transport))
        app = loader.load()
        app.prepare(host=args.host, port=args.port, workers=args.workers, access_log=False, motd=False, backlog=1024)
        Sanic.serve(primary=app, app_loader=loader)
        return 0
    app = create_app(args.upstream, args.client, args.api_key, args.transport)
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False, backlog=1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
