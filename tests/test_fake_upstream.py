"""Tests for bench.fake_upstream: the fake provider's wire format, directives and stats."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio

from bench.fake_upstream import (
    REFUSAL_TEXT,
    TOOL_ARGUMENTS,
    parse_directives,
    reply_text,
    start,
    usage_for,
)

AUTH = {"Authorization": "Bearer test-key"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def chat(text: str, **extra) -> dict:
    return {"model": "up-model-1", "messages": [
        {"role": "system", "content": "You are Zowy AI."},
        {"role": "user", "content": text}], **extra}


def events_of(raw: bytes) -> list[str]:
    """SSE data payloads in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            out.append(block[len("data: "):])
    return out


def chunks_of(raw: bytes) -> list[dict]:
    events = events_of(raw)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# ------------------------------------------------------------------ fixtures


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def upstream():
    server = await start("127.0.0.1", 0)
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gemini():
    server = await start("127.0.0.1", 0, mode="gemini", chunks=4)
    yield server
    await server.close()


@pytest.fixture(autouse=True)
def _fresh(upstream, gemini):
    upstream.reset()
    gemini.reset()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sdk(upstream):
    client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="x", max_retries=0)
    yield client
    await client.close()


async def post(http, server, body, *, path="/v1/chat/completions", headers=AUTH, timeout=None):
    kwargs = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await http.post(server.url + path, data=data, headers=headers, **kwargs)


async def wait_for_disconnect(http, server, deadline=2.0) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        async with http.get(server.url + "/_fake/stats") as r:
            stats = await r.json()
        if stats["disconnects"]:
            return stats
        await asyncio.sleep(0.005)
    raise AssertionError("no disconnect recorded")


# ------------------------------------------------------------------ basic shapes


async def test_non_stream_shape_headers_and_usage(http, upstream):
    body = chat("hello [[fake:chunks=3]]")
    async with await post(http, upstream, body) as r:
        assert r.status == 200
        assert r.headers["x-request-id"].startswith("req_upstream")
        assert r.headers["openai-model"] == "up-model-1"
        assert r.headers["server"] == "fake-provider"
        data = await r.json()
    assert data["id"].startswith("chatcmpl-") and len(data["id"]) > 15
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "up-model-1"
    assert data["system_fingerprint"] == "fp_fake123"
    assert data["choices"] == [{"index": 0, "message": {
        "role": "assistant", "content": "t0 t1 t2 ", "refusal": None},
        "logprobs": None, "finish_reason": "stop"}]
    assert "fake" not in data["choices"][0]["message"]["content"]
    assert data["usage"] == {**usage_for(body, 3), "prompt_tokens_details": {"cached_tokens": 0},
                             "completion_tokens_details": {"reasoning_tokens": 0}}


def test_usage_for_and_reply_text_are_pure_and_documented():
    body = {"messages": [{"role": "system", "content": "abcd"},
                         {"role": "user", "content": [{"type": "text", "text": "efgh"},
                                                      {"type": "image_url", "image_url": {"url": "x"}}]},
                         {"role": "assistant", "content": None, "tool_calls": []},
                         {"role": "tool", "tool_call_id": "c", "content": "ijk"}]}
    assert usage_for(body, 8) == {"prompt_tokens": 1 + 11 // 4, "completion_tokens": 8,
                                  "total_tokens": 1 + 11 // 4 + 8}
    assert usage_for({**body, "n": 3}, 2)["completion_tokens"] == 6
    assert reply_text(3, 2) == "t0x t1x t2x "
    assert parse_directives("a [[fake:status=429]] b [[fake:delay=0.5,key=k1,hang=body]]") == {
        "status": 429, "delay": 0.5, "key": "k1", "hang": "body"}


async def test_path_aliases_auth_and_bad_json(http, upstream):
    for path in ("/v1beta/openai/chat/completions", "/chat/completions"):
        async with await post(http, upstream, chat("hi"), path=path) as r:
            assert r.status == 200, path
    async with await post(http, upstream, chat("hi"), headers={}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "invalid_api_key"
    async with await post(http, upstream, chat("hi"), headers={"Authorization": "Bearer "}) as r:
        assert r.status == 401
    async with await post(http, upstream, b"{nope", headers=AUTH) as r:
        assert r.status == 400
        err = (await r.json())["error"]
        assert err["type"] == "invalid_request_error" and "param" in err


async def test_vision_n_choices_and_json_format(http, upstream):
    body = {"model": "m", "n": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}
    async with await post(http, upstream, body) as r:
        data = await r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert data["choices"][1]["message"]["content"] == "saw 2 image(s) " + reply_text(8)
    assert data["usage"]["completion_tokens"] == 16 == usage_for(body, 8)["completion_tokens"]

    for rf in ({"type": "json_object"},
               {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}):
        async with await post(http, upstream, chat("json please", response_format=rf)) as r:
            content = (await r.json())["choices"][0]["message"]["content"]
        assert json.loads(content) == {"answer": reply_text(8)}
    async with await post(http, upstream, chat("json [[fake:chunks=3]]", stream=True,
                                               response_format={"type": "json_object"})) as r:
        chunks = chunks_of(await r.read())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert json.loads(text) == {"answer": reply_text(3)}


# ------------------------------------------------------------------ streaming


async def test_stream_events_with_include_usage(http, upstream):
    body = chat("hello [[fake:chunks=4]]", stream=True, stream_options={"include_usage": True})
    async with await post(http, upstream, body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    chunks = chunks_of(raw)
    assert len(chunks) == 1 + 4 + 1 + 1
    assert len({c["id"] for c in chunks}) == 1
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "up-model-1" and c["system_fingerprint"] == "fp_fake123"
        assert isinstance(c["created"], int)
    for c in chunks[:-1]:
        assert "usage" in c and c["usage"] is None
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"] == ""
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:5]] == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert chunks[5]["choices"][0]["delta"] == {} and chunks[5]["choices"][0]["finish_reason"] == "stop"
    assert chunks[6]["choices"] == []
    assert chunks[6]["usage"]["total_tokens"] == usage_for(body, 4)["total_tokens"]
    assert chunks[6]["usage"]["completion_tokens"] == 4


async def test_stream_without_include_usage_has_no_usage(http, upstream):
    async with await post(http, upstream, chat("hi [[fake:size=3]]", stream=True)) as r:
        chunks = chunks_of(await r.read())
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == reply_text(8, 3)


async def test_usage_and_spaced_directives(http, upstream):
    body = chat("hello [[fake:chunks=3,usage=0,spaced=1]]", stream=True, stream_options={"include_usage": True})
    async with await post(http, upstream, body) as r:
        raw = await r.read()
    chunks = chunks_of(raw)
    assert all("usage" not in c for c in chunks) and all(c["choices"] for c in chunks)
    assert b'"finish_reason": "stop"' in raw and b'"finish_reason":"' not in raw and b'":null' not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == reply_text(3)
    async with await post(http, upstream, chat("hello [[fake:chunks=3,spaced=1]]", stream=True,
                                                stream_options={"include_usage": True})) as r:
        chunks = chunks_of(await r.read())
    assert all("usage" not in c for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_sdk_non_stream_and_stream(sdk):
    resp = await sdk.chat.completions.create(model="up-model-1", messages=[
        {"role": "user", "content": "hello"}])
    assert resp.choices[0].message.content == reply_text(8)
    assert resp.usage.total_tokens == usage_for({"messages": [{"content": "hello"}]}, 8)["total_tokens"]

    stream = await sdk.chat.completions.create(
        model="up-model-1", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello [[fake:chunks=5,size=2]]"}])
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == reply_text(5, 2)
    assert usage.completion_tokens == 5


async def test_stream_delay_spaces_chunks(http, upstream):
    t0 = time.monotonic()
    async with await post(http, upstream, chat("[[fake:chunks=5,delay=0.04]]", stream=True)) as r:
        await r.read()
    assert time.monotonic() - t0 >= 0.2


# ------------------------------------------------------------------ tools, logprobs


async def test_tool_call_non_stream(sdk):
    resp = await sdk.chat.completions.create(
        model="m", tools=[WEATHER_TOOL, CLOCK_TOOL],
        messages=[{"role": "user", "content": "please call a tool"}])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id == "call_fake1" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tashkent"}


async def test_tool_call_streamed_deltas_reassemble(sdk):
    stream = await sdk.chat.completions.create(
        model="m", stream=True, tools=[WEATHER_TOOL, CLOCK_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        messages=[{"role": "user", "content": "what time is it"}])
    name, args, pieces, finish = None, "", 0, None
    async for chunk in stream:
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            assert tc.index == 0
            if tc.function.name:
                name = tc.function.name
                assert tc.id == "call_fake1" and tc.function.arguments == ""
            elif tc.function.arguments:
                args += tc.function.arguments
                pieces += 1
        finish = choice.finish_reason or finish
    assert name == "get_time" and finish == "tool_calls"
    assert pieces >= 3
    assert args == TOOL_ARGUMENTS and json.loads(args) == {"city": "Tashkent"}


async def test_tool_choice_rules(http, upstream):
    async def finish(**extra):
        async with await post(http, upstream, chat(extra.pop("text", "hi"), **extra)) as r:
            return (await r.json())["choices"][0]
    assert (await finish(tools=[WEATHER_TOOL]))["finish_reason"] == "stop"
    assert (await finish(tools=[WEATHER_TOOL], tool_choice="required"))["finish_reason"] == "tool_calls"
    assert (await finish(tools=[WEATHER_TOOL], tool_choice="none",
                         text="call a tool"))["finish_reason"] == "stop"
    assert (await finish(text="call a tool"))["finish_reason"] == "stop"


async def test_tool_result_is_answered_with_text(sdk):
    call = {"id": "call_fake1", "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}
    messages = [{"role": "user", "content": "please call a tool"}, {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_fake1", "content": "sunny"}]
    answer = await sdk.chat.completions.create(model="m", tools=[WEATHER_TOOL], messages=messages)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    forced = await sdk.chat.completions.create(model="m", tools=[WEATHER_TOOL], messages=messages, tool_choice="required")
    assert forced.choices[0].finish_reason == "tool_calls"


async def test_logprobs_non_stream_and_stream(http, upstream):
    body = chat("[[fake:chunks=2]]", logprobs=True, top_logprobs=2)
    async with await post(http, upstream, body) as r:
        lp = (await r.json())["choices"][0]["logprobs"]
    assert lp["refusal"] is None
    assert [e["token"] for e in lp["content"]] == ["t0 ", "t1 "]
    entry = lp["content"][0]
    assert entry["logprob"] == -0.1 and entry["bytes"] == list(b"t0 ")
    assert len(entry["top_logprobs"]) == 2 and entry["top_logprobs"][0]["token"] == "t0 "

    async with await post(http, upstream, {**body, "stream": True}) as r:
        chunks = chunks_of(await r.read())
    content_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["logprobs"]["content"][0]["token"] for c in content_chunks] == ["t0 ", "t1 "]


# ------------------------------------------------------------------ directives


@pytest.mark.parametrize("status,etype", [
    (400, "invalid_request_error"), (401, "invalid_request_error"), (403, "permission_error"),
    (404, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
    (503, "server_error")])
async def test_status_directive(http, upstream, status, etype):
    async with await post(http, upstream, chat(f"x [[fake:status={status}]]", stream=True)) as r:
        assert r.status == status
        assert r.headers["Content-Type"].startswith("application/json")
        err = (await r.json())["error"]
        assert err["type"] == etype and "message" in err and "code" in err and "param" in err
        assert (r.headers.get("retry-after") == "1") == (status == 429)


async def test_status_directive_through_sdk(sdk):
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(model="m", messages=[
            {"role": "user", "content": "[[fake:status=429]]"}])


async def test_cut_stream_closes_without_done(http, upstream):
    r = await post(http, upstream, chat("[[fake:cut=3,chunks=6]]", stream=True))
    assert r.status == 200
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        while True:
            piece = await r.content.readany()
            if not piece:
                break
            got += piece
    r.release()
    assert len(events_of(got)) == 3 and b"[DONE]" not in got
    assert upstream.stats()["disconnects"] == []  # a server-side cut is not a client disconnect


async def test_cut_non_stream_sends_half_the_body(http, upstream):
    r = await post(http, upstream, chat("[[fake:cut=1]]"))
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    r.release()


async def test_hang_headers_until_client_timeout(http, upstream):
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post(http, upstream, chat("[[fake:hang=headers]]"), timeout=0.2)
    stats = await wait_for_disconnect(http, upstream)
    (d,) = stats["disconnects"]
    assert d["during"] == "headers" and d["events_sent"] == 0
    assert 0.15 < d["at"] - t0 < 0.5


async def test_hang_body_stream_and_non_stream(http, upstream):
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with http.post(upstream.url + "/v1/chat/completions", headers=AUTH, timeout=timeout,
                         json=chat("[[fake:hang=body,after=2]]", stream=True)) as r:
        assert r.status == 200
        got = b""
        with pytest.raises(asyncio.TimeoutError):
            while True:
                got += await r.content.readany()
    assert len(events_of(got)) == 2

    async with http.post(upstream.url + "/v1/chat/completions", headers=AUTH, timeout=timeout,
                         json=chat("[[fake:hang=body]]")) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        with pytest.raises(asyncio.TimeoutError):
            await r.read()
    stats = await wait_for_disconnect(http, upstream)
    assert {d["during"] for d in stats["disconnects"]} == {"body"}


async def test_malformed_event_then_normal(http, upstream):
    async with await post(http, upstream, chat("[[fake:malformed=2,chunks=3]]", stream=True)) as r:
        events = events_of(await r.read())
    assert events[2] == "{not json"
    assert events[-1] == "[DONE]"
    good = [json.loads(e) for e in events[:2] + events[3:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in good) == reply_text(3)


async def test_error_event_ends_stream(http, upstream):
    async with await post(http, upstream, chat("[[fake:error_event=2]]", stream=True)) as r:
        events = events_of(await r.read())
    assert len(events) == 3
    assert json.loads(events[-1]) == {"error": {"message": "upstream exploded", "type": "server_error"}}


async def test_echo_system_and_body(http, upstream):
    body = {"model": "m", "messages": [
        {"role": "system", "content": "IDENTITY: you are Zowy AI."},
        {"role": "system", "content": "second"},
        {"role": "user", "content": "[[fake:echo=system]]"}]}
    async with await post(http, upstream, body) as r:
        assert (await r.json())["choices"][0]["message"]["content"] == "IDENTITY: you are Zowy AI."
    async with await post(http, upstream, {**body, "stream": True}) as r:
        chunks = chunks_of(await r.read())
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == \
        "IDENTITY: you are Zowy AI."
    raw = json.dumps(chat("[[fake:echo=body]]", temperature=0.5)).encode()
    async with await post(http, upstream, raw) as r:
        assert (await r.json())["choices"][0]["message"]["content"] == raw.decode()


async def test_fail_first_then_succeed_and_reset(http, upstream):
    statuses = []
    for _ in range(4):
        async with await post(http, upstream, chat("[[fake:fail_first=2,key=abc]]")) as r:
            statuses.append(r.status)
    async with await post(http, upstream, chat("[[fake:fail_first=2,key=other]]")) as r:
        statuses.append(r.status)
    assert statuses == [503, 503, 200, 200, 503]
    async with http.post(upstream.url + "/_fake/reset") as r:
        assert r.status == 200
    async with await post(http, upstream, chat("[[fake:fail_first=2,key=abc]]")) as r:
        assert r.status == 503


async def test_content_filter_and_refusal(http, upstream):
    async with await post(http, upstream, chat("[[fake:content_filter=1]]")) as r:
        choice = (await r.json())["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] == ""
    async with await post(http, upstream, chat("[[fake:refusal=1]]")) as r:
        msg = (await r.json())["choices"][0]["message"]
    assert msg["content"] is None and msg["refusal"] == REFUSAL_TEXT
    async with await post(http, upstream, chat("[[fake:refusal=1]]", stream=True)) as r:
        chunks = chunks_of(await r.read())
    assert "".join(c["choices"][0]["delta"].get("refusal") or "" for c in chunks) == REFUSAL_TEXT
    async with await post(http, upstream, chat("[[fake:content_filter=1]]", stream=True)) as r:
        chunks = chunks_of(await r.read())
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_think_delays_headers(http, upstream):
    t0 = time.monotonic()
    async with await post(http, upstream, chat("[[fake:think=0.15]]", stream=True)) as r:
        assert time.monotonic() - t0 >= 0.15
        await r.read()


# ------------------------------------------------------------------ gemini mode


async def test_gemini_errors_are_lists(http, gemini):
    async with await post(http, gemini, chat("[[fake:status=429]]")) as r:
        assert r.status == 429
        (item,) = await r.json()
        assert set(item["error"]) == {"code", "message", "status"}
        assert item["error"]["code"] == 429 and item["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert r.headers["retry-after"] == "1"
    async with await post(http, gemini, chat("hi", logit_bias={"1": 2})) as r:
        assert r.status == 400
        (item,) = await r.json()
        assert item["error"]["status"] == "INVALID_ARGUMENT"
        assert item["error"]["message"] == \
            'Invalid JSON payload received. Unknown name "logit_bias": Cannot find field.'
    for field, value in (("max_completion_tokens", 5), ("logprobs", True), ("store", False)):
        async with await post(http, gemini, chat("hi", **{field: value})) as r:
            assert r.status == 400 and f'"{field}"' in (await r.json())[0]["error"]["message"]
    async with await post(http, gemini, chat("hi"), headers={}) as r:
        assert r.status == 401 and (await r.json())[0]["error"]["status"] == "UNAUTHENTICATED"


async def test_gemini_non_stream_and_stream(http, gemini):
    """The shapes of tests/conformance/recordings: sorted compact keys, bare model name, running
    usage on every chunk with the final one on the last content chunk, whole tool calls."""
    async with await post(http, gemini, chat("hi", max_tokens=10)) as r:
        raw = await r.read()
    data = json.loads(raw)
    assert raw.startswith(b'{"choices":[{"finish_reason":"stop","index":0,"message":{"content":')
    assert data["model"] == "up-model-1"
    assert "system_fingerprint" not in data and len(data["id"]) == 23
    assert data["choices"][0]["message"]["content"] == reply_text(4)

    body = chat("hi", stream=True, stream_options={"include_usage": True})
    async with await post(http, gemini, body) as r:
        chunks = chunks_of(await r.read())
    assert all(c["model"] == "up-model-1" and "system_fingerprint" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)  # no separate choices: [] usage chunk
    assert all("finish_reason" not in c["choices"][0] for c in chunks[:-1])
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == usage_for(body, 4)
    assert all(c["usage"]["completion_tokens"] == 0 for c in chunks[:-1])

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = chat("call a tool [[fake:calls=2,thinking=30,no_id=1]]", stream=True, tools=tools,
                stream_options={"include_usage": True})
    async with await post(http, gemini, body) as r:
        chunks = chunks_of(await r.read())
    (chunk,) = chunks
    assert "id" not in chunk
    calls = chunk["choices"][0]["delta"]["tool_calls"]
    assert len(calls) == 2 and all("index" not in c for c in calls)
    assert all(c["extra_content"]["google"]["thought_signature"] for c in calls)
    assert chunk["usage"]["total_tokens"] == usage_for(body, 4)["total_tokens"] + 30


async def test_gemini_3_wants_thought_signatures_back(http, gemini):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    body = {"model": "gemini-3-flash", "messages": messages, "tools": tools}
    async with await post(http, gemini, body) as r:
        assert r.status == 400 and "thought_signature" in (await r.json())[0]["error"]["message"]
    call["extra_content"] = {"google": {"thought_signature": "abc"}}
    async with await post(http, gemini, body) as r:
        assert r.status == 200


async def test_gemini_mode_by_directive(http, upstream):
    async with await post(http, upstream, chat("[[fake:mode=gemini,status=503]]")) as r:
        assert r.status == 503
        assert (await r.json())[0]["error"]["status"] == "UNAVAILABLE"
    async with await post(http, upstream, chat("[[fake:mode=gemini]]", stream=True,
                                               stream_options={"include_usage": True})) as r:
        chunks = chunks_of(await r.read())
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" in chunks[-1]


# ------------------------------------------------------------------ introspection, disconnects


async def test_requests_log(http, upstream):
    async with await post(http, upstream, chat("one")):
        pass
    async with await post(http, upstream, chat("two"), headers={**AUTH, "X-Trace": "t1"}):
        pass
    async with http.get(upstream.url + "/_fake/requests?n=1") as r:
        (rec,) = await r.json()
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == "Bearer test-key" and rec["headers"]["x-trace"] == "t1"
    assert rec["body"]["messages"][1]["content"] == "two"
    assert rec["received_at"] <= time.monotonic()
    async with http.get(upstream.url + "/_fake/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 2 and stats["open"] == 0 and stats["disconnects"] == []


async def test_client_disconnect_mid_stream_recorded_within_100ms(http, upstream):
    r = await post(http, upstream, chat("[[fake:chunks=100,delay=0.05]]", stream=True))
    got = b""
    while got.count(b"\n\n") < 2:
        got += await r.content.readany()
    assert upstream.stats()["open"] == 1
    closed_at = time.monotonic()
    r.close()  # drops the connection
    stats = await wait_for_disconnect(http, upstream)
    (d,) = stats["disconnects"]
    assert d["during"] == "body" and d["events_sent"] >= 2
    assert 0 <= d["at"] - closed_at < 0.1
    assert stats["clock"] >= d["at"]
    assert stats["open"] == 0


@pytest.mark.processes
@pytest.mark.timeout(15)
def test_cli_prints_listening_line():
    cmd = [sys.executable, "-m", "bench.fake_upstream", "--port", "0", "--mode", "gemini"]
    with subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("fake upstream listening on http://127.0.0.1:")
            assert line.rstrip().endswith("(gemini)")
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0
