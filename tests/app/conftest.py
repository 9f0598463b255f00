"""The whole gateway in process for tests/app: ``create_app(settings, MockTransport(handler))``
driven through sanic-testing's ASGI client, the server's start and stop run once around a test's
requests (as a worker's run around its connections). The store is a SQLite file in the test's
temporary directory; the upstreams are the fake provider in process, in OpenAI's manner for the
OpenAI target and in Gemini's for the Gemini ones, as the shipped models file routes them.

No socket and no subprocess: a test here runs in milliseconds. The ledger writer only writes when a
test says so (``await gateway.settle()``), so what the ledger holds is never a matter of timing.
"""
from __future__ import annotations

import itertools
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest
from sanic import Sanic
from sanic_testing.testing import SanicASGITestClient, TestingResponse

from app.accounts import provisioning
from app.billing import packages
from app.core.config import Settings
from app.gateway.services import Services
from app.http.app import create_app
from app.http.server import Server, bind
from app.store.contracts.ledger import LedgerEntry
from app.upstream.mock import MockRequest, MockResponse, MockTransport
from app.upstream.transport_base import Transport
from bench.fakes.provider import FakeProvider
from tests import support
from tests.conftest import record

UPSTREAM_KEY = "sk-fake-provider-key-1234567890"
# Where the models file says the upstreams are; in process nothing listens there.
OPENAI_URL = "https://openai.upstream.test"
GEMINI_URL = "https://gemini.upstream.test"
UPSTREAM_HOSTS = ("openai.upstream.test", "gemini.upstream.test")
ADMIN_TOKEN = "admin-secret-token"
PEER = ("127.0.0.1", 50000)

ENV = {
    support.UPSTREAM_KEY_ENV: UPSTREAM_KEY,
    "ZOWY_DEMO": "off",
    "ZOWY_ADMIN_TOKEN": ADMIN_TOKEN,
    "ZOWY_ACCESS_LOG": "false",
    "ZOWY_METER_INTERVAL": "3600",  # the ledger is written when a test settles it
    "ZOWY_KEY_CACHE_TTL": "0",  # a key's controls apply from the next request
    "ZOWY_RETRY_BACKOFF": "0",
    "ZOWY_BREAKER_MIN_REQUESTS": "1000000",  # the breaker's own tests lower it
}


class Client(SanicASGITestClient):
    """sanic-testing's ASGI client, with the server's start and stop run once (``start()``,
    ``stop()``) instead of around every request, and the caller at 127.0.0.1. Everything it
    receives goes to the session's leak check (tests/conftest.py)."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self._transport = httpx.ASGITransport(app=app, client=PEER)

    async def start(self) -> None:
        app = self.sanic_app
        app.router.reset()
        app.signal_router.reset()
        await app._startup()
        await app._server_event("init", "before")
        await app._server_event("init", "after")

    async def stop(self) -> None:
        await self.sanic_app._server_event("shutdown", "before")
        await self.sanic_app._server_event("shutdown", "after")

    async def request(self, method: str, url: str, *args, **kwargs) -> TestingResponse:  # type: ignore[override]
        response = await httpx.AsyncClient.request(self, method, url, *args, **kwargs)
        response.__class__ = TestingResponse
        record(b"\n".join(k + b": " + v for k, v in response.headers.raw) + b"\n" + response.content)
        return response


class Upstreams:
    """The upstreams in process: ``openai`` answers the OpenAI targets, ``gemini`` the Gemini ones,
    unless ``targets`` names a handler of its own for a target."""

    def __init__(self) -> None:
        self.openai = FakeProvider("openai")
        self.gemini = FakeProvider("gemini")
        self.targets: dict[str, Callable[[MockRequest], Awaitable[MockResponse]]] = {}

    async def __call__(self, request: MockRequest) -> MockResponse:
        handler = self.targets.get(request.target.name)
        if handler is None:
            handler = self.gemini if request.target.provider == "gemini" else self.openai
        return await handler(request)


@dataclass
class Customer:
    account_id: str
    key_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


class Gateway:
    """One gateway in process and what a test needs of it."""

    def __init__(self, client: Client, transport: MockTransport | Transport, upstreams: Upstreams, settings: Settings) -> None:
        self.client = client
        self.transport = transport
        self.upstreams = upstreams
        self.settings = settings
        self._names = itertools.count(1)

    @property
    def services(self) -> Services:
        return self.client.sanic_app.ctx.services

    @property
    def store(self):
        return self.services.store

    async def customer(self, tokens: int | None = 2_000_000, per_minute: int | None = 10_000,
                       per_hour: int | None = 100_000, **controls: Any) -> Customer:
        """An account with a package of ``tokens`` (none when None) and a key with these limits."""
        account = await provisioning.create_account(self.store, f"acct-{next(self._names)}-{uuid.uuid4().hex[:6]}")
        if tokens is not None:
            await packages.grant_package(self.store, self.settings, account, "pro", tokens=tokens)
        record, key = await provisioning.create_key(self.store, self.settings, account, per_minute, per_hour,
                                                    controls=controls or None)
        return Customer(account.id, record.id, key)

    async def request(self, method: str, path: str, **kwargs) -> TestingResponse:
        return await self.client.request(method, path, **kwargs)

    async def post(self, path: str, body: dict | bytes, customer: Customer | None = None,
                   headers: dict[str, str] | None = None) -> TestingResponse:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        sent = {"content-type": "application/json", **(customer.auth if customer else {}), **(headers or {})}
        return await self.client.post(path, content=content, headers=sent)

    async def chat(self, customer: Customer | None, body: dict | bytes, headers: dict[str, str] | None = None) -> TestingResponse:
        return await self.post("/v1/chat/completions", body, customer, headers)

    async def admin(self, method: str, path: str, body: dict | None = None) -> TestingResponse:
        kwargs: dict[str, Any] = {"headers": {"authorization": f"Bearer {ADMIN_TOKEN}"}}
        if body is not None:
            kwargs["content"] = orjson.dumps(body)
            kwargs["headers"]["content-type"] = "application/json"
        return await self.client.request(method, path, **kwargs)

    async def settle(self) -> None:
        """Write what the ledger writer holds (and settle the reservations it carries)."""
        await self.services.ledger_writer.flush()

    async def entry(self, request_id: str) -> LedgerEntry | None:
        await self.settle()
        return await self.store.ledger_entry(request_id)

    async def ledger_count(self, account_id: str) -> int:
        await self.settle()
        return await self.store.ledger_count(account_id)

    async def stop(self) -> None:
        await self.client.stop()

    def sent(self, marker: str) -> list[MockRequest]:
        """The upstream requests whose body holds ``marker``, in the order they were sent."""
        return [r for r in self.transport.requests if marker in orjson.dumps(r.body).decode()]


def models_file(directory: Path, **timeouts: float) -> Path:
    """The shipped models file's shape (tests/support.py), with these timeouts."""
    return support.models_file(directory / f"models-{uuid.uuid4().hex[:8]}.toml", OPENAI_URL, GEMINI_URL, timeouts)


async def start_gateway(directory: Path, models: Path | None = None, transport: Transport | None = None,
                        **env: str) -> Gateway:
    """A gateway in process with these settings, its data in ``directory``; ``await stop()`` it.
    Its upstreams are ``Upstreams()`` through the mock transport, unless ``transport`` is given."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env({
        **ENV, "ZOWY_DATA_DIR": str(directory), "ZOWY_MODELS_FILE": str(models or models_file(directory)), **env,
    })
    upstreams = Upstreams()
    transport = transport or MockTransport(upstreams)
    client = Client(create_app(settings, transport, name=f"in_process_{uuid.uuid4().hex[:12]}"))
    await client.start()
    return Gateway(client, transport, upstreams, settings)


@pytest.fixture
async def make_gateway(tmp_path):
    """``await make_gateway(models=None, **env)``: a gateway of the test's own, with these settings."""
    started: list[Gateway] = []

    async def make(models: Path | None = None, **env: str) -> Gateway:
        gateway = await start_gateway(tmp_path / f"gateway-{len(started)}", models, **env)
        started.append(gateway)
        return gateway

    yield make
    for gateway in reversed(started):
        await gateway.stop()


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory):
    """One gateway for the tests of a module (each makes its own customers); the upstreams are
    made fresh for every test."""
    gateway = await start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gateway
    await gateway.stop()


@pytest.fixture(autouse=True)
def _fresh_upstreams(request):
    if "gateway" in request.fixturenames:
        gateway = request.getfixturevalue("gateway")
        if isinstance(gateway, Gateway):
            gateway.upstreams.__init__()


@pytest.fixture
async def customer(gateway) -> Customer:
    return await gateway.customer()


# ---------------------------------------------------------------- reading answers


def events(response: TestingResponse) -> list[bytes]:
    """The ``data:`` payloads of a streamed answer, in order (``[DONE]`` included)."""
    blocks = [b for b in response.content.split(b"\n\n") if b]
    assert all(b.startswith(b"data: ") for b in blocks), response.content[:500]
    return [b[6:] for b in blocks]


def chunks(response: TestingResponse) -> list[dict]:
    """The JSON chunks of a streamed answer that ended with ``[DONE]``."""
    data = events(response)
    assert data[-1] == b"[DONE]", data[-3:]
    return [orjson.loads(d) for d in data[:-1]]


def text_of(stream: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in stream if c["choices"])


def error_of(response: TestingResponse) -> dict:
    return orjson.loads(response.content)["error"]


def user(text: str, model: str = "zowy-1", **extra: Any) -> dict:
    """A chat body of one user message."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def guarded(settings: Settings, *messages: dict) -> dict:
    """The messages as the upstream receives them: the identity guard first."""
    return {"messages": [{"role": "system", "content": settings.persona_prompt}, *messages]}


@asynccontextmanager
async def served_on_socket(tmp_path: Path, name: str, per_minute: int, per_hour: int,
                           **env: str) -> AsyncIterator[tuple[Server, int, str]]:
    """The gateway's own server (Sanic's connection, not the ASGI client) in this process on
    127.0.0.1 with the mock transport as the upstream: the server, its port, and the key of a new
    account with a package. Callers set ``Sanic.test_mode`` (a server started in test mode keeps
    Sanic's own methods beside its touched-up copies, so the next tests' apps touch up the originals)."""
    settings = Settings.from_env({**ENV, **env, "ZOWY_DATA_DIR": str(tmp_path),
                                  "ZOWY_MODELS_FILE": str(models_file(tmp_path))})
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = await Server.open(settings, sock.detach(), tmp_path / "workers", MockTransport(Upstreams()))
    try:
        await server.prepare()
        await server.serve()
        store = server.services.store
        account = await provisioning.create_account(store, f"{name}-{uuid.uuid4().hex[:6]}")
        await packages.grant_package(store, settings, account, "pro", tokens=1_000_000)
        _, key = await provisioning.create_key(store, settings, account, per_minute, per_hour)
        yield server, port, key
    finally:
        server.stop_accepting()
        await server.stopping()
        await server.close()
        # Sanic's own runs (the console's test client) start every registered app that has a server.
        Sanic.unregister_app(server.app)
