"""One set of upstream doubles (bench/fakes): the same handler answers alike in process, through
the mock transport, and behind a real socket, through the gateway's own transports (aiohttp, h1),
read as the upstream client reads them: same status, headers and bytes, the same failures where
the fake provider drops the connection, and the demo model serving a whole gateway either way."""
from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from app.catalog.models import Target, Timeouts
from app.upstream import demo
from app.upstream.mock import MockRequest, MockResponse, MockTransport
from app.upstream.transport import AiohttpTransport
from app.upstream.transport_h1 import H1Transport
from bench.fake_upstream import FakeUpstream
from bench.fakes.provider import FakeProvider, reply_text
from bench.fakes.server import HandlerServer
from tests.app.conftest import start_gateway
from tests.support import models_file

HEADERS = {"Authorization": "Bearer k", "Content-Type": "application/json", "Accept": "application/json"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def chat(text: str, **extra) -> dict:
    return {"model": "up-model-1", "messages": [{"role": "system", "content": "You are Zowy AI."},
                                                 {"role": "user", "content": text}], **extra}


def target(base_url: str) -> Target:
    return Target(name="t", provider="openai", base_url=base_url, model="up-model-1", api_key_env="K", api_key="k",
                  timeouts=Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=10.0))


def same(data: bytes) -> bytes:
    """The bytes with what differs from one answer to the next (ids, times) made equal."""
    data = re.sub(rb'"id": ?"[^"]*"', b'"id":"-"', data)
    return re.sub(rb'"created": ?\d+', b'"created":0', data)


async def read(transport, where: Target, body: dict) -> tuple[int, str | None, bytes, str | None]:
    """Status, content type, the body's bytes, and the kind of failure that ended it (None: its end)."""
    sent = []
    response = await transport.send(where, orjson.dumps(body), HEADERS, lambda: sent.append(True))
    assert sent == [True]
    data, failure = b"", None
    try:
        while piece := await response.content.readany():
            data += piece
    except Exception as exc:
        failure = transport.failure(exc)
        assert failure is not None, exc
    response.close()
    return response.status, response.headers.get("content-type"), data, failure


@pytest.fixture(scope="module")
async def served():
    """The fake provider (in both modes) behind sockets, and the gateway's transports to them."""
    servers = {mode: await FakeUpstream(mode=mode).start() for mode in ("openai", "gemini")}
    transports = {"aiohttp": AiohttpTransport(4), "h1": H1Transport(4)}
    for transport in transports.values():
        await transport.start()
    yield servers, transports
    for transport in transports.values():
        await transport.close()
    for server in servers.values():
        await server.close()


CASES = [
    ("openai", chat("hello [[fake:chunks=3]]")),
    ("openai", chat("hello", stream=True, stream_options={"include_usage": True})),
    ("gemini", chat("hello", stream=True, stream_options={"include_usage": True})),
    ("gemini", chat("call a tool [[fake:calls=2]]", stream=True, tools=TOOLS)),
    ("openai", chat("call a tool", tools=TOOLS, n=2)),
    ("openai", chat("[[fake:malformed=2,chunks=3]]", stream=True)),
    ("openai", chat("[[fake:error_event=2]]", stream=True)),
    ("openai", chat("[[fake:refusal=1,spaced=1,usage=0]]", stream=True, stream_options={"include_usage": True})),
    ("openai", chat("[[fake:status=429]]")),
    ("gemini", chat("hi", logit_bias={"1": 2})),
    ("openai", chat("[[fake:chunks=6,cut=3]]", stream=True)),
    ("openai", chat("[[fake:cut=1]]")),
    ("openai", chat("[[fake:delay=0.01,chunks=4]]", stream=True)),
]


@pytest.mark.parametrize("kind", ["aiohttp", "h1"])
@pytest.mark.parametrize("mode, body", CASES, ids=lambda v: v if isinstance(v, str) else v["messages"][-1]["content"])
async def test_the_fake_provider_answers_alike_in_process_and_behind_a_socket(served, kind, mode, body):
    servers, transports = served
    in_process = await read(MockTransport(FakeProvider(mode)), target("https://nowhere.test/v1"), body)
    behind = await read(transports[kind], target(servers[mode].base_url), body)
    (status, content_type, data, failure), (status2, content_type2, data2, failure2) = in_process, behind
    assert (status, content_type) == (status2, content_type2)
    assert same(data) == same(data2) and data
    assert (failure is None) == (failure2 is None)
    if "cut" in body["messages"][-1]["content"]:
        assert failure == "connection" and failure2 == "connection"  # the connection dropped there
        assert b"[DONE]" not in data and data.count(b"\n\n") <= 3
    if "status=429" in body["messages"][-1]["content"]:
        assert status == 429


async def test_headers_that_never_come_leave_a_disconnect_on_record(served):
    servers, transports = served
    server = servers["openai"]
    server.reset()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await read(transports["aiohttp"], target(server.base_url), chat("[[fake:hang=headers]]"))
    for _ in range(100):
        if server.stats()["disconnects"]:
            break
        await asyncio.sleep(0.01)
    (disconnect,) = server.stats()["disconnects"]
    assert disconnect["during"] == "headers" and disconnect["events_sent"] == 0
    assert server.requests(1)[0]["body"]["messages"][-1]["content"] == "[[fake:hang=headers]]"


async def test_a_handler_that_refuses_or_times_out_is_a_transport_failure_both_ways():
    async def refuses(request: MockRequest) -> MockResponse:
        raise ConnectionRefusedError()

    async def times_out(request: MockRequest) -> MockResponse:
        raise TimeoutError()

    for handler, kind in ((refuses, "connect"), (times_out, "timeout")):
        mock = MockTransport(handler)
        with pytest.raises(OSError if kind == "connect" else TimeoutError) as raised:
            await mock.send(target("https://nowhere.test/v1"), orjson.dumps(chat("hi")), HEADERS, lambda: None)
        assert mock.failure(raised.value) == kind
    # Behind a socket: refused is a connection closed unanswered, a timeout an answer that never comes.
    server = await HandlerServer(refuses).start()
    transport = AiohttpTransport(4)
    await transport.start()
    try:
        with pytest.raises(Exception) as raised:
            await read(transport, target(server.base_url), chat("hi"))
        assert transport.failure(raised.value) == "connection"
        server.handler = times_out
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await read(transport, target(server.base_url), chat("hi"))
    finally:
        await transport.close()
        await server.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_the_demo_model_serves_the_gateway_alike_in_process_and_behind_a_socket(tmp_path, monkeypatch, stream):
    monkeypatch.setattr(demo, "WORD_DELAY", 0.0)
    server = await HandlerServer(demo.answer).start()
    answers = []
    try:
        for name, transport in (("mock", MockTransport(demo.answer)), ("socket", AiohttpTransport(4))):
            models = models_file(tmp_path / f"{name}.toml", server.url, server.url)
            gateway = await start_gateway(tmp_path / name, models, transport)
            try:
                customer = await gateway.customer()
                body = {"model": "zowy-1", "stream": stream, "messages": [{"role": "user", "content": "Hello!"}]}
                response = await gateway.chat(customer, body)
                assert response.status_code == 200
                if stream:
                    events = [orjson.loads(e[6:]) for e in response.content.split(b"\n\n") if e.startswith(b"data: {")]
                    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"])
                else:
                    text = orjson.loads(response.content)["choices"][0]["message"]["content"]
                entry = await gateway.entry(response.headers["x-request-id"])
                answers.append((text, entry.prompt_tokens, entry.completion_tokens, entry.estimated))
            finally:
                await gateway.stop()
    finally:
        await server.close()
    assert answers[0] == answers[1] and answers[0][0] == demo.REPLY
    assert server.stats()["requests"] == 1 and server.requests(1)[0]["path"] == "/v1/chat/completions"


def test_the_fake_provider_s_plain_reply_is_the_documented_one():
    async def go():
        answer = await FakeProvider("openai", chunks=3, chunk_size=2)(MockRequest(None, chat("hi"), HEADERS))
        return orjson.loads(answer.body)["choices"][0]["message"]["content"]

    assert asyncio.run(go()) == reply_text(3, 2) == "t0x t1x t2x "
