"""Recorded Gemini and OpenAI traffic (tests/conformance/recordings) replayed in process, through
the replay handler and the mock transport: every chunk is one the OpenAI SDK's types accept, text
and tool calls reassemble exactly, no upstream identity reaches the caller, usage appears only when
asked (and then once, last) and the ledger bills what the upstream reported. (The same recordings
through a real socket and the SDKs themselves: tests/conformance/.)"""
from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.app.conftest import Gateway, chunks, error_of, start_gateway
from tests.conformance import corpus
from tests.conformance.conftest import PUBLIC, replay_models
from tests.conformance.replay import Replay

EXCHANGES = corpus.load()
STREAMS = [e for e in EXCHANGES if e.status == 200 and e.stream]
COMPLETIONS = [e for e in EXCHANGES if e.status == 200 and not e.stream]
ERRORS = [e for e in EXCHANGES if e.status != 200]
EXPECTED_STATUS = {400: 400, 401: 502, 403: 502, 404: 502, 429: 503, 500: 502, 503: 502}


@pytest.fixture(scope="module")
async def replayed(tmp_path_factory):
    """A gateway whose every target is the replay handler, one attempt per request."""
    directory = tmp_path_factory.mktemp("replayed")
    gateway = await start_gateway(directory, replay_models(directory / "models.toml", "https://replay.upstream.test"),
                                  ZOWY_UPSTREAM_ATTEMPTS="1")
    gateway.replay = Replay()
    gateway.transport.handler = gateway.replay
    yield gateway
    await gateway.stop()


@pytest.fixture
async def customer(replayed):
    replayed.replay.reset()
    yield await replayed.customer()
    assert replayed.replay.pending() == 0, "a queued recording was not asked for"


def body_of(exchange: corpus.Exchange, **extra) -> dict:
    request = exchange.request or {}
    body = {"model": PUBLIC[exchange.provider],
            "messages": request.get("messages") or [{"role": "user", "content": "Say hello!"}], **extra}
    for name in ("tools", "tool_choice", "response_format"):
        if name in request:
            body[name] = request[name]
    return body


def assert_no_upstream_identity(exchange: corpus.Exchange, received: bytes) -> None:
    leaked = [value for value in exchange.upstream_identity() if value.encode() in received]
    assert not leaked, f"upstream identity reached the caller: {leaked}"


def assert_billed_as_reported(entry, usage: dict) -> None:
    assert (entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert entry.reasoning_tokens == (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    assert entry.cached_tokens == (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    assert not entry.estimated


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize("exchange", STREAMS, ids=lambda e: e.id)
async def test_stream(replayed: Gateway, customer, exchange, include_usage):
    replayed.replay.queue(exchange)
    response = await replayed.chat(customer, body_of(exchange, stream=True, stream_options={"include_usage": include_usage}))
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    stream = [ChatCompletionChunk.model_validate(c) for c in chunks(response)]
    model = PUBLIC[exchange.provider]
    assert stream and all(c.id == "chatcmpl-" + request_id and c.model == model for c in stream)
    text, calls = "", {}
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.index not in calls:
                    assert call.id and call.type == "function"  # a call's first delta names it
                    calls[call.index] = ["", ""]
                calls[call.index][0] += call.function.name or "" if call.function else ""
                calls[call.index][1] += call.function.arguments or "" if call.function else ""
    assert text == (exchange.text() or "")
    assert [tuple(calls[i]) for i in sorted(calls)] == exchange.tool_calls()
    usage = exchange.final_usage()
    with_usage = [c for c in stream if c.usage is not None]
    if include_usage:  # one usage chunk, last, whether the upstream reported usage or not
        assert len(with_usage) == 1 and stream[-1] is with_usage[0] and stream[-1].choices == []
        if usage is not None:
            assert chunks(response)[-1]["usage"] == usage  # details included, total as reported
    else:
        assert with_usage == []
    assert_no_upstream_identity(exchange, response.content)
    entry = await replayed.entry(request_id)
    assert entry.outcome == "ok" and entry.stream
    if usage is not None:
        assert_billed_as_reported(entry, usage)
    else:  # the upstream never said: an estimate no larger than the text relayed, and not zero
        relayed = len(text) + sum(len(arguments) for _, arguments in calls.values())
        assert entry.estimated and 1 <= entry.completion_tokens <= relayed


@pytest.mark.parametrize("exchange", COMPLETIONS, ids=lambda e: e.id)
async def test_completion(replayed: Gateway, customer, exchange):
    replayed.replay.queue(exchange)
    response = await replayed.chat(customer, body_of(exchange))
    assert response.status_code == 200, response.text
    completion = ChatCompletion.model_validate(orjson.loads(response.content))
    assert completion.id == "chatcmpl-" + response.headers["x-request-id"] and completion.model == PUBLIC[exchange.provider]
    assert completion.system_fingerprint is None
    message = completion.choices[0].message
    assert message.content == exchange.text()
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == exchange.tool_calls()
    assert all(c.id and c.type == "function" for c in message.tool_calls or [])
    assert completion.usage.model_dump(exclude_none=True) == exchange.final_usage()
    assert_no_upstream_identity(exchange, response.content)
    assert_billed_as_reported(await replayed.entry(response.headers["x-request-id"]), exchange.final_usage())


@pytest.mark.parametrize("exchange", ERRORS, ids=lambda e: e.id)
async def test_error(replayed: Gateway, customer, exchange):
    replayed.replay.queue(exchange)
    stream = bool((exchange.request or {}).get("stream"))
    response = await replayed.chat(customer, body_of(exchange, stream=stream))
    # Gemini answers our invalid key with a 400: the caller is told the backend is misconfigured.
    expected = 502 if "invalid-api-key-is-400" in exchange.shows else EXPECTED_STATUS[exchange.status]
    assert response.status_code == expected
    error = error_of(response)
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    for marker in (b"googleapis", b"api.openai.com", b"generativelanguage", b"sk-", b"aiza"):
        assert marker not in response.content.lower()
    if exchange.status == 429:
        assert response.headers["retry-after"]
    assert_no_upstream_identity(exchange, response.content)
    entry = await replayed.entry(response.headers["x-request-id"])
    assert entry.outcome == "upstream_error" and entry.total_tokens == 0


async def test_a_gemini_tool_loop_sends_the_thought_signatures_back(replayed: Gateway, customer):
    first, second = [e for e in EXCHANGES if e.file == "gemini-tool-loop-thought-signature-nonstream"]
    replayed.replay.queue(first)
    replayed.replay.queue(second)
    body = body_of(first)
    message = orjson.loads((await replayed.chat(customer, body)).content)["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["id"]  # Gemini sent "" as the id; callers get a usable one
    follow = {**body, "messages": [*body["messages"], message, {"role": "tool", "tool_call_id": call["id"], "content": "Noon"}]}
    final = orjson.loads((await replayed.chat(customer, follow)).content)
    assert final["choices"][0]["message"]["content"] == second.text()
    sent = replayed.replay.received[-1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    recorded = first.document["choices"][0]["message"]
    assert assistant["extra_content"] == recorded["extra_content"]
    assert assistant["thought_signature"] == recorded["thought_signature"]
    assert assistant["tool_calls"][0]["id"] == call["id"] and sent[0]["role"] == "system"

