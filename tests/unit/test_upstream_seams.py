"""The upstream seams: every provider a models file may name has a provider (and its dialect), every
transport fits the transport seam, and an upstream stream closes itself when its reader leaves."""
from __future__ import annotations

import asyncio

from app.catalog.models import PROVIDER_NAMES, Target
from app.upstream.mock import MockResponse, MockTransport
from app.upstream.providers import PROVIDERS
from app.upstream.stream import UpstreamStream
from app.upstream.transport import AiohttpTransport
from app.upstream.transport_h1 import H1Transport
from app.upstream.transport_base import Transport
from app.wire.rewrite import OPENAI, Dialect, StreamRewriter


def test_every_provider_a_target_may_name_is_registered_with_its_dialect():
    assert set(PROVIDERS) == set(PROVIDER_NAMES)
    for name, provider in PROVIDERS.items():
        assert provider.name == name and isinstance(provider.dialect, Dialect)
    assert PROVIDERS["openai"].dialect is OPENAI and PROVIDERS["gemini"].dialect is not OPENAI


def test_every_transport_fits_the_seam():
    async def handler(request):
        return MockResponse.json({})

    assert isinstance(MockTransport(handler), Transport)
    assert isinstance(H1Transport(), Transport)
    assert isinstance(AiohttpTransport(), Transport)
    assert not isinstance(object(), Transport)


async def test_a_stream_left_by_its_reader_closes_its_connection():
    async def endless():
        while True:
            yield b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
            await asyncio.sleep(0)

    target = Target("t", "openai", "http://upstream.invalid/v1", "m", "KEY", "key")
    response = await MockTransport(lambda request: _answer(endless())).send(target, b"{}", {}, lambda: None)
    rewriter = StreamRewriter("zowy-1", "chatcmpl-1", False)
    async with UpstreamStream(response, rewriter, b"", 30.0, asyncio.get_running_loop().time() + 60, MockTransport.failure) as stream:
        assert b'"content":"a"' in await anext(stream)
    assert response.closed and not response.released
    await stream.aclose()  # again: nothing more to do
    assert response.closed


async def _answer(body):
    return MockResponse(200, body, {"content-type": "text/event-stream"})
