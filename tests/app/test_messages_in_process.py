"""The Messages API in process (``create_app`` with the mock transport and the demo model as every
upstream, sanic-testing's ASGI client): a message and a stream from the key to the ledger (recorded
as ``api: "messages"``), written by the plain ``send`` fallback, and failures in Anthropic's envelope
on every route of the API, a wrong method included."""
from __future__ import annotations

import orjson

from app.store.contracts.ledger import LedgerQuery
from app.upstream import demo
from tests.app.test_chat_in_process import gateway, ledger_page  # noqa: F401 (the fixture)
from tests.conformance.messages.events import check_grammar, events, message

BODY = {"model": "zowy-1", "max_tokens": 128, "system": "Be brief.", "messages": [{"role": "user", "content": "Hello!"}]}


def anthropic_headers(auth: dict) -> dict:
    return {"x-api-key": auth["authorization"].removeprefix("Bearer "), "anthropic-version": "2023-06-01",
            "content-type": "application/json"}


async def test_a_message_goes_from_the_key_to_the_ledger(gateway):  # noqa: F811
    client, transport, settings, account, auth = gateway
    _, response = await client.post("/v1/messages", content=orjson.dumps(BODY), headers=anthropic_headers(auth))
    assert response.status_code == 200, response.text
    answer = orjson.loads(response.content)
    request_id = response.headers["x-request-id"]
    assert answer["id"] == "msg_" + request_id and response.headers["request-id"] == request_id
    assert answer["content"] == [{"type": "text", "text": demo.REPLY}] and answer["stop_reason"] == "end_turn"
    sent = transport.requests[-1].body
    assert sent["messages"][:2] == [{"role": "system", "content": settings.persona_prompt},
                                    {"role": "system", "content": "Be brief."}]
    assert sent["max_tokens"] == 128
    (entry,) = await ledger_page(settings, account.id, LedgerQuery(api="messages"))
    assert entry.request_id == request_id and entry.api == "messages" and not entry.stream
    assert (entry.prompt_tokens, entry.completion_tokens) == (answer["usage"]["input_tokens"], answer["usage"]["output_tokens"])


async def test_a_stream_is_anthropics_events_and_billed(gateway):  # noqa: F811
    client, transport, settings, account, auth = gateway
    _, response = await client.post("/v1/messages?beta=true", content=orjson.dumps({**BODY, "stream": True}),
                                    headers=anthropic_headers(auth))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    got = events(response.content)
    check_grammar(got)
    answer = message(got)
    assert answer["content"] == [{"type": "text", "text": demo.REPLY}]
    (entry,) = await ledger_page(settings, account.id, LedgerQuery(api="messages"))
    assert entry.stream and entry.completion_tokens == answer["usage"]["output_tokens"]


async def test_failures_are_in_anthropics_envelope(gateway):  # noqa: F811
    client, transport, _, _, auth = gateway
    headers = anthropic_headers(auth)
    cases = [
        ("post", "/v1/messages", {"x-api-key": "zk-nobody", "content-type": "application/json"}, BODY, 401, "authentication_error"),
        ("post", "/v1/messages", headers, {**BODY, "model": "nope"}, 404, "not_found_error"),
        ("post", "/v1/messages", headers, {**BODY, "messages": []}, 400, "invalid_request_error"),
        ("post", "/v1/messages/count_tokens", headers, {"model": "zowy-1"}, 400, "invalid_request_error"),
        ("get", "/v1/messages", headers, None, 405, "invalid_request_error"),
        ("get", "/v1/models/nope", headers, None, 404, "not_found_error"),
    ]
    for method, path, sent_headers, body, status, kind in cases:
        kwargs = {"headers": sent_headers}
        if body is not None:
            kwargs["content"] = orjson.dumps(body)
        _, response = await getattr(client, method)(path, **kwargs)
        assert response.status_code == status, (path, response.text)
        doc = orjson.loads(response.content)
        assert doc["type"] == "error" and doc["error"]["type"] == kind, (path, doc)
        assert doc["request_id"] == response.headers["x-request-id"]
    assert transport.requests == []


async def test_count_tokens_and_models(gateway):  # noqa: F811
    client, transport, settings, account, auth = gateway
    headers = anthropic_headers(auth)
    _, response = await client.post("/v1/messages/count_tokens", content=orjson.dumps({"model": "zowy-1", "messages": BODY["messages"]}),
                                    headers=headers)
    assert response.status_code == 200 and orjson.loads(response.content)["input_tokens"] > 0
    _, response = await client.get("/v1/models", headers=headers)
    page = orjson.loads(response.content)
    assert [m["id"] for m in page["data"]] == list(settings.models) and page["has_more"] is False
    assert transport.requests == [] and await ledger_page(settings, account.id, LedgerQuery()) == []
