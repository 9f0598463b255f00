"""Recorded Gemini and OpenAI traffic replayed through the gateway to the official OpenAI Python SDK:
every chunk parses, text and tool calls reassemble exactly, the stream helper agrees, no upstream
identity reaches the caller, usage appears only when asked (and then always, last: the billed
estimate when the upstream reported none) and is exact, and so is the ledger."""
from __future__ import annotations

import json

import httpx2
import openai
import pytest

from tests import support
from tests.conformance import corpus
from tests.conformance.conftest import PUBLIC
from tests.conftest import RecordingTransport

EXCHANGES = corpus.load()
STREAMS = [e for e in EXCHANGES if e.status == 200 and e.stream]
COMPLETIONS = [e for e in EXCHANGES if e.status == 200 and not e.stream]
ERRORS = [e for e in EXCHANGES if e.status != 200]


class Capture(RecordingTransport):
    """Records every byte the SDK receives (and feeds the session-wide leak check)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: list[bytes] = []

    def handle_request(self, request):
        response = super().handle_request(request)
        inner = response.stream
        captured = self.bytes

        class Stream(httpx2.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    captured.append(chunk)
                    yield chunk

            def close(self):
                inner.close()

        captured.append(b"\n".join(k + b": " + v for k, v in response.headers.raw))
        response.stream = Stream()
        return response

    def received(self) -> bytes:
        return b"".join(self.bytes)


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def client(replay_gateway, replay_customer, capture):
    with openai.OpenAI(base_url=replay_gateway.base_url, api_key=replay_customer.key, max_retries=0, timeout=30,
                       http_client=httpx2.Client(transport=capture)) as c:
        yield c


def kwargs_of(exchange: corpus.Exchange) -> dict:
    request = exchange.request or {}
    kw = {"messages": request.get("messages") or [{"role": "user", "content": "Say hello!"}]}
    for name in ("tools", "tool_choice", "response_format"):
        if name in request:
            kw[name] = request[name]
    return kw


def ledger(gateway, request_id: str):
    return support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)))


def assert_no_upstream_identity(exchange: corpus.Exchange, received: bytes) -> None:
    leaked = [value for value in exchange.upstream_identity() if value.encode() in received]
    assert not leaked, f"upstream identity reached the caller: {leaked}"


def sse_events(raw: bytes) -> list[dict]:
    out = []
    for event in raw.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def assert_usage_matches(entry, usage: dict) -> None:
    assert (entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    )
    assert entry.reasoning_tokens == (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    assert entry.cached_tokens == (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    assert not entry.estimated


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize("exchange", STREAMS, ids=lambda e: e.id)
def test_stream(exchange, include_usage, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    model = PUBLIC[exchange.provider]
    raw = client.chat.completions.with_raw_response.create(
        model=model, stream=True, stream_options={"include_usage": include_usage}, **kwargs_of(exchange)
    )
    request_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())  # every chunk parsed by the SDK's own types

    assert chunks and all(c.id == "chatcmpl-" + request_id and c.model == model for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text, calls, firsts = "", {}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                assert isinstance(call.index, int)
                if call.index not in calls:
                    assert call.id and call.type == "function"  # a call's first delta names it
                    firsts[call.index] = call.id
                    calls[call.index] = ["", ""]
                calls[call.index][0] += call.function.name or "" if call.function else ""
                calls[call.index][1] += call.function.arguments or "" if call.function else ""
    assert text == (exchange.text() or "")
    assert [tuple(calls[i]) for i in sorted(calls)] == exchange.tool_calls()
    assert len(set(firsts.values())) == len(firsts)  # one id per call

    usage = exchange.final_usage()
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:  # one usage chunk, last, whether the upstream reported usage or not
        assert len(with_usage) == 1 and chunks[-1] is with_usage[0] and chunks[-1].choices == []
        if usage is not None:
            (sent,) = [e for e in sse_events(capture.received()) if e.get("usage")]
            assert sent["usage"] == usage  # details included, total as reported
    else:
        assert with_usage == []
    assert_no_upstream_identity(exchange, capture.received())

    entry = ledger(replay_gateway, request_id)
    assert entry.outcome == "ok" and entry.stream
    if usage is not None:
        assert_usage_matches(entry, usage)
    else:  # the upstream never said: an estimate no larger than the text relayed, and not zero
        relayed = len(text) + sum(len(arguments) for _, arguments in calls.values())
        assert entry.estimated and 1 <= entry.completion_tokens <= relayed
        if include_usage:  # the usage chunk shows what is billed
            shown = chunks[-1].usage
            assert (shown.prompt_tokens, shown.completion_tokens, shown.total_tokens) == (
                entry.prompt_tokens, entry.completion_tokens, entry.total_tokens,
            )


@pytest.mark.parametrize("exchange", STREAMS, ids=lambda e: e.id)
def test_stream_helper(exchange, client, replay):
    """``client.chat.completions.stream(...)`` (the SDK's ChatCompletionStreamState) accumulates
    the chunks into the same message."""
    replay.queue(exchange)
    finish = [c.get("finish_reason") for chunk in exchange.chunks for c in chunk["choices"] if c.get("finish_reason")]
    if finish == ["length"]:  # the helper refuses a cut answer, as it does against OpenAI
        with pytest.raises(openai.LengthFinishReasonError):
            with client.chat.completions.stream(model=PUBLIC[exchange.provider], **kwargs_of(exchange)) as stream:
                stream.get_final_completion()
        return
    with client.chat.completions.stream(model=PUBLIC[exchange.provider], **kwargs_of(exchange)) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert (message.content or "") == (exchange.text() or "")
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert calls == exchange.tool_calls()
    assert all(c.id for c in message.tool_calls or [])


@pytest.mark.parametrize("exchange", COMPLETIONS, ids=lambda e: e.id)
def test_completion(exchange, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    model = PUBLIC[exchange.provider]
    raw = client.chat.completions.with_raw_response.create(model=model, **kwargs_of(exchange))
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.id == "chatcmpl-" + request_id and completion.model == model
    assert completion.system_fingerprint is None
    message = completion.choices[0].message
    assert message.content == exchange.text()
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == exchange.tool_calls()
    assert all(c.id and c.type == "function" for c in message.tool_calls or [])
    usage = exchange.final_usage()
    assert completion.usage.model_dump(exclude_none=True) == usage
    assert_no_upstream_identity(exchange, capture.received())
    assert_usage_matches(ledger(replay_gateway, request_id), usage)


# What a caller sees for each recorded upstream failure.
EXPECTED_STATUS = {400: 400, 401: 502, 403: 502, 404: 502, 429: 503, 500: 502, 503: 502}


@pytest.mark.parametrize("exchange", ERRORS, ids=lambda e: e.id)
def test_error(exchange, client, capture, replay, replay_gateway):
    replay.queue(exchange)
    request = exchange.request or {}
    stream = bool(request.get("stream"))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=PUBLIC[exchange.provider], stream=stream, **kwargs_of(exchange))
    error = info.value
    # Gemini answers our invalid key with a 400: the caller is told the backend is misconfigured.
    expected = 502 if "invalid-api-key-is-400" in exchange.shows else EXPECTED_STATUS[exchange.status]
    assert error.status_code == expected
    body = error.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    received = capture.received().lower()
    for marker in (b"googleapis", b"api.openai.com", b"generativelanguage", b"sk-", b"aiza"):
        assert marker not in received
    if exchange.status == 429:
        assert error.response.headers["retry-after"]
    assert_no_upstream_identity(exchange, capture.received())
    request_id = error.response.headers["x-request-id"]
    entry = ledger(replay_gateway, request_id)
    assert entry.outcome == "upstream_error" and entry.total_tokens == 0


def turns(name: str) -> list[corpus.Exchange]:
    return [e for e in EXCHANGES if e.file == name]


def test_gemini_tool_loop_sends_thought_signatures_back(client, replay):
    """The assistant message the SDK hands back carries Gemini's vendor fields; the next request
    must deliver them upstream unchanged, with the tool call id the caller was given."""
    first, second = turns("gemini-tool-loop-thought-signature-nonstream")
    replay.queue(first)
    replay.queue(second)
    kw = kwargs_of(first)
    completion = client.chat.completions.create(model="zowy-1", **kw)
    message = completion.choices[0].message
    (call,) = message.tool_calls
    assert call.id  # Gemini sent "" as the id; callers get a usable one
    messages = [*kw["messages"], message, {"role": "tool", "tool_call_id": call.id, "content": "Noon"}]
    final = client.chat.completions.create(model="zowy-1", messages=messages, tools=kw["tools"])
    assert final.choices[0].message.content == second.text()
    sent = replay.received[-1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    recorded = first.document["choices"][0]["message"]
    assert assistant["extra_content"] == recorded["extra_content"]
    assert assistant["thought_signature"] == recorded["thought_signature"]
    assert assistant["tool_calls"][0]["id"] == call.id
    assert sent[0]["role"] == "system"  # the persona prompt is still first


def test_streamed_gemini_tool_call_round_trips_its_signature(client, replay):
    """A Gemini 3 tool call streamed through the SDK's stream helper, sent back on the next turn
    with its thought signature (Gemini 3 refuses a call without it)."""
    (call_turn,) = turns("gemini-stream-tool-call-thought-signature-chunk")
    answer = turns("gemini-stream-text-two-chunks")[0]
    replay.queue(call_turn)
    replay.queue(answer)
    tools = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object", "properties": {"filePath": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Read gateway.go"}]
    with client.chat.completions.stream(model="zowy-2", messages=messages, tools=tools) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    (call,) = message.tool_calls
    signature = call_turn.chunks[0]["choices"][0]["delta"]["tool_calls"][0]["extra_content"]
    assert call.model_extra.get("extra_content") == signature
    # The message object itself, as SDK users append it: it carries the SDK's own extras too.
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "package main"}]
    with client.chat.completions.stream(model="zowy-2", messages=messages, tools=tools) as stream:
        text = stream.get_final_completion().choices[0].message.content
    assert text == answer.text()
    sent = replay.received[-1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["extra_content"] == signature
    assert assistant["tool_calls"][0]["id"] == call.id


@pytest.mark.parametrize("name", ["openai-tool-loop-parallel-nonstream", "openai-tool-loop-stream"])
def test_openai_tool_loops(name, client, replay):
    first, second = turns(name)
    replay.queue(first)
    replay.queue(second)
    kw = kwargs_of(first)
    if first.stream:
        with client.chat.completions.stream(model="zowy-1-pro", **kw) as stream:
            message = stream.get_final_completion().choices[0].message
    else:
        message = client.chat.completions.create(model="zowy-1-pro", **kw).choices[0].message
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == first.tool_calls()
    results = [{"role": "tool", "tool_call_id": c.id, "content": "done"} for c in message.tool_calls]
    follow = {**kw, "messages": [*kw["messages"], message, *results]}
    if second.stream:
        with client.chat.completions.stream(model="zowy-1-pro", **follow) as stream:
            text = stream.get_final_completion().choices[0].message.content
    else:
        text = client.chat.completions.create(model="zowy-1-pro", **follow).choices[0].message.content
    assert text == second.text()
    sent = replay.received[-1]["messages"]
    assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == [c.id for c in message.tool_calls]
    assert all("extra_content" not in m for m in sent)  # no vendor field reaches OpenAI
