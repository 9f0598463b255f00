"""The upstream client in process, on the mock transport: retry and fallback order, what is
billable, parameter policies, error mapping, the stream iterator and its idle timer, the body cap."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson
import pytest

from app.catalog.models import Condition, ParamPolicy, PublicModel, Target, Timeouts
from app.core.config import Settings
from app.core.errors import InvalidRequest, Overloaded, StreamCut, UpstreamError, UpstreamTimeout
from app.upstream.client import Attempts, UpstreamClient
from app.upstream.mock import MockRequest, MockResponse, MockTransport
from app.wire.rewrite import StreamRewriter

FAST = Timeouts(connect=0.2, first_byte=0.3, idle=0.2, total=3.0)


def target(name: str, provider: str = "openai", **changes) -> Target:
    return Target(name=name, provider=provider, base_url=f"http://{name}", model=f"up-{name}",
                  api_key_env="K", api_key="k", **{"timeouts": FAST, **changes})


def model(*targets: Target) -> PublicModel:
    return PublicModel(id="zowy-1", created=1, targets=targets)


def client(handler, **settings) -> UpstreamClient:
    base = Settings(upstream_attempts=3, retry_backoff=0.0, breaker_min_requests=1000, max_upstream_body_bytes=4096)
    return UpstreamClient(replace(base, **settings), transport=MockTransport(handler))


def completion(text: str = "hi", model_name: str = "up-a") -> MockResponse:
    return MockResponse.json({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    })


REQUEST = {"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}]}


async def test_falls_back_in_order_then_retries_the_list():
    order = []

    async def handler(request: MockRequest) -> MockResponse:
        order.append(request.target.name)
        if len(order) < 3:
            return MockResponse.json({"error": {"message": "busy"}}, status=503)
        return completion()

    up = client(handler)
    attempts = Attempts()
    out, usage, _ = await up.complete(model(target("a"), target("b")), REQUEST, "rid", attempts, "chatcmpl-ours")
    assert order == ["a", "b", "a"]
    assert attempts.count == attempts.sent == 3
    assert attempts.failures == ["a:status_503", "b:status_503"]
    assert orjson.loads(out)["id"] == "chatcmpl-ours" and usage.total_tokens == 3


async def test_a_connect_failure_is_not_billable_and_the_next_target_answers():
    async def handler(request: MockRequest) -> MockResponse:
        if request.target.name == "a":
            raise ConnectionRefusedError()
        return completion()

    attempts = Attempts()
    await client(handler).complete(model(target("a"), target("b")), REQUEST, "rid", attempts, "c")
    assert attempts.count == 2 and attempts.sent == 1 and attempts.failures == ["a:connect"]


async def test_a_400_is_final_and_scrubbed_of_upstream_names():
    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse.json({"error": {"message": "up-a does not take that at https://api.example.com/v1"}}, status=400)

    with pytest.raises(InvalidRequest) as info:
        await client(handler).complete(model(target("a"), target("b")), REQUEST, "rid", Attempts(), "c")
    assert "up-a" not in info.value.message and "example.com" not in info.value.message


async def test_429_everywhere_becomes_overloaded_with_retry_after():
    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse.json({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "7"})

    with pytest.raises(Overloaded) as info:
        await client(handler).complete(model(target("a")), REQUEST, "rid", Attempts(), "c")
    assert info.value.headers["retry-after"] == "7"


async def test_headers_that_never_come_time_out():
    async def handler(request: MockRequest) -> MockResponse:
        await asyncio.sleep(10)

    with pytest.raises(UpstreamTimeout):
        await client(handler, upstream_attempts=1).complete(model(target("a")), REQUEST, "rid", Attempts(), "c")


async def test_a_body_beyond_the_cap_is_a_502():
    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse(200, (b"x" * 1024 for _ in range(100)))

    with pytest.raises(UpstreamError):
        await client(handler).complete(model(target("a")), REQUEST, "rid", Attempts(), "c")


async def test_policy_depends_on_the_request():
    seen = []

    async def handler(request: MockRequest) -> MockResponse:
        seen.append(request.body)
        return completion()

    policy = ParamPolicy("reject", (Condition("reasoning_effort", ("none",)),))
    gpt = target("a", params={"temperature": policy, "seed": ParamPolicy("drop")})
    up = client(handler)
    await up.complete(model(gpt), {**REQUEST, "temperature": 0.3, "seed": 1, "reasoning_effort": "none"}, "r", Attempts(), "c")
    assert seen[-1]["temperature"] == 0.3 and "seed" not in seen[-1]
    await up.complete(model(gpt), {**REQUEST, "temperature": 1}, "r", Attempts(), "c")
    assert "temperature" not in seen[-1]  # the default value: the same as leaving it out
    with pytest.raises(InvalidRequest) as info:
        await up.complete(model(gpt), {**REQUEST, "temperature": 0.3, "reasoning_effort": "low"}, "r", Attempts(), "c")
    assert info.value.param == "temperature"
    assert seen[-1]["messages"][0]["role"] == "system"  # the persona prompt leads every request


def sse(*events: dict) -> list[bytes]:
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def chunk(text: str) -> dict:
    return {"id": "up1", "object": "chat.completion.chunk", "created": 1, "model": "up-a",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def rewriter(dialect) -> StreamRewriter:
    return StreamRewriter("zowy-1", "chatcmpl-ours", False, dialect)


async def test_stream_iterator_relays_and_releases_after_a_clean_end():
    responses = []

    async def handler(request: MockRequest) -> MockResponse:
        responses.append(MockResponse(200, sse(chunk("a"), chunk("b"), chunk("c"))))
        return responses[-1]

    stream = await client(handler).stream(model(target("a")), {**REQUEST, "stream": True}, "r", Attempts(), rewriter)
    out = b"".join([piece async for piece in stream])
    # Three chunks, and the finish chunk the upstream never sent.
    assert out.count(b"chatcmpl-ours") == 4 and b'"finish_reason":"stop"' in out and b"up1" not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert responses[0].released and not responses[0].closed


async def test_an_error_before_the_first_event_is_retried_elsewhere():
    async def handler(request: MockRequest) -> MockResponse:
        if request.target.name == "a":
            return MockResponse(200, [b'data: {"error": {"message": "boom"}}\n\n'])
        return MockResponse(200, sse(chunk("ok")))

    attempts = Attempts()
    stream = await client(handler).stream(model(target("a"), target("b")), REQUEST, "r", attempts, rewriter)
    assert b"ok" in b"".join([piece async for piece in stream])
    assert attempts.failures == ["a:error_event"]


async def slow_events():
    yield sse(chunk("first"))[0]
    await asyncio.sleep(5)
    yield b"never"


async def test_idle_timer_ends_a_stalled_stream_with_a_timeout():
    response = None

    async def handler(request: MockRequest) -> MockResponse:
        nonlocal response
        response = MockResponse(200, slow_events())
        return response

    stream = await client(handler).stream(model(target("a")), REQUEST, "r", Attempts(), rewriter)
    got = [await stream.__anext__()]
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        async for piece in stream:
            got.append(piece)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert response.closed and b"first" in got[0]


async def test_cut_ends_the_stream_with_stream_cut():
    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse(200, slow_events())

    stream = await client(handler).stream(model(target("a", timeouts=replace(FAST, idle=10))), REQUEST, "r", Attempts(), rewriter)
    await stream.__anext__()
    asyncio.get_running_loop().call_later(0.05, stream.cut)
    with pytest.raises(StreamCut):
        await stream.__anext__()


async def test_a_stream_ending_without_done_relays_what_came_then_fails():
    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse(200, sse(chunk("a"), chunk("b"))[:-1])

    stream = await client(handler).stream(model(target("a")), REQUEST, "r", Attempts(), rewriter)
    pieces = []
    with pytest.raises(UpstreamError):
        async for piece in stream:
            pieces.append(piece)
    assert b'"content":"b"' in b"".join(pieces)
