"""The whole gateway in process: ``create_app(settings, transport)`` with the mock transport as every
upstream, driven through sanic-testing's ASGI client (no socket, no subprocess): the chat path from
the key to the ledger, answered whole and streamed (by the plain ``send`` fallback writer)."""
from __future__ import annotations

import uuid

import orjson
import pytest

from app.accounts import provisioning
from app.billing import packages
from app.core.config import Settings
from app.http.app import create_app
from app.store import open_store
from app.store.contracts.ledger import LedgerQuery
from app.upstream import demo
from app.upstream.mock import MockTransport


@pytest.fixture
async def gateway(tmp_path):
    settings = Settings.from_env({
        "ZOWY_DATA_DIR": str(tmp_path), "GEMINI_API_KEY": "upstream-key", "OPENAI_API_KEY": "upstream-key",
        "ZOWY_ACCESS_LOG": "false",
    })
    store = open_store(settings)
    await store.init()
    account = await provisioning.create_account(store, "in-process")
    await packages.grant_package(store, settings, account, "pro")
    _, key = await provisioning.create_key(store, settings, account)
    await store.close()
    transport = MockTransport(demo.answer)
    app = create_app(settings, transport, name=f"in_process_{uuid.uuid4().hex[:8]}")
    yield app.asgi_client, transport, settings, account, {"authorization": f"Bearer {key}"}


async def ledger_page(settings: Settings, account_id: str, query: LedgerQuery) -> list:
    store = open_store(settings)
    await store.init()
    try:
        return await store.ledger_page(account_id, query)
    finally:
        await store.close()


async def ledger_count(settings: Settings, account_id: str) -> int:
    store = open_store(settings)
    await store.init()
    try:
        return await store.ledger_count(account_id)
    finally:
        await store.close()


async def test_a_chat_completion_goes_from_the_key_to_the_ledger(gateway):
    client, transport, settings, account, auth = gateway
    body = {"model": "zowy-1", "messages": [{"role": "user", "content": "Hello!"}]}
    _, response = await client.post("/v1/chat/completions", content=orjson.dumps(body),
                                    headers={**auth, "content-type": "application/json"})
    assert response.status_code == 200, response.text
    answer = orjson.loads(response.content)
    assert answer["model"] == "zowy-1" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"][0]["message"]["content"] == demo.REPLY
    assert response.headers["x-request-id"] and response.headers["x-ratelimit-limit-requests"]
    sent = transport.requests[-1]
    assert sent.target.name == "gemini-flash" and sent.body["model"] == "gemini-2.5-flash"
    assert sent.body["messages"][0] == {"role": "system", "content": settings.persona_prompt}
    assert sent.headers["Authorization"] == "Bearer upstream-key"
    assert await ledger_count(settings, account.id) == 1
    (entry,) = await ledger_page(settings, account.id, LedgerQuery(api="chat"))
    assert entry.request_id == response.headers["x-request-id"] and entry.api == "chat"
    assert await ledger_page(settings, account.id, LedgerQuery(api="responses")) == []


async def test_a_stream_is_sent_event_by_event_and_billed(gateway):
    client, transport, settings, account, auth = gateway
    body = {"model": "zowy-1", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Hello!"}]}
    _, response = await client.post("/v1/chat/completions", content=orjson.dumps(body),
                                    headers={**auth, "content-type": "application/json"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"zowy-1"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == demo.REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert transport.requests[-1].stream
    assert await ledger_count(settings, account.id) == 1


async def test_a_refused_key_reaches_no_upstream(gateway):
    client, transport, _, _, _ = gateway
    _, response = await client.post("/v1/chat/completions", content=b"{}",
                                    headers={"authorization": "Bearer zk-nobody", "content-type": "application/json"})
    assert response.status_code == 401 and orjson.loads(response.content)["error"]["code"] == "invalid_api_key"
    assert transport.requests == []
