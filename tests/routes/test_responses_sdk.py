"""The Responses API through openai-python against the gateway and the fake upstreams: create, stream,
the stream helper, parse, a function-tool loop (Gemini's thought signatures carried across it),
stored responses (retrieve, input_items, delete, previous_response_id chains) kept per account, and
the ledger: one entry per response, api "responses", billed what the response reports."""
from __future__ import annotations

import json
import urllib.request

import openai
import pydantic
import pytest

from bench.fake_upstream import THOUGHT_SIGNATURE, reply_text
from tests import support
from tests.conftest import http, sdk_client

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


def upstream_requests(upstream: support.Process, n: int | None = None) -> list[dict]:
    url = f"{upstream.url}/_fake/requests" + (f"?n={n}" if n else "")
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def ledger_entry(gateway, response_id: str):
    request_id = response_id.removeprefix("resp_")
    return support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)), timeout=10)


@pytest.fixture
def other(gateway):
    """A second account with a key of its own."""
    with sdk_client(gateway, support.new_customer(gateway).key) as c:
        yield c


def test_create_text(client, gateway, customer):
    r = client.responses.create(model="zowy-1", instructions="Be brief.", input="Hello!")
    assert r.object == "response" and r.status == "completed"
    assert r.id.startswith("resp_") and r.model == "zowy-1"
    assert r.output_text == reply_text(8)
    assert r.output[0].id.startswith("msg_") and r.output[0].status == "completed"
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > 0
    assert r.instructions == "Be brief." and r.store is True
    entry = ledger_entry(gateway, r.id)
    assert entry.account_id == customer.account_id and entry.total_tokens == r.usage.total_tokens
    assert entry.api == "responses"
    request_id = r.id.removeprefix("resp_")
    line = support.wait_until(lambda: next((json.loads(l) for l in gateway.process.log().splitlines()
                                            if request_id in l and l.startswith("{") and '"outcome"' in l), None))
    assert line["api"] == "responses" and line["total_tokens"] == r.usage.total_tokens


@pytest.mark.parametrize("model", ["zowy-1", "zowy-1-pro"])
def test_stream_events_in_order(client, model):
    stream = client.responses.create(model=model, input="Tell me something", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reply_text(8)
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens > 0 and final.model == model


def test_stream_helper_final_response(client):
    with client.responses.stream(model="zowy-1-pro", input="Stream please") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == reply_text(8)


class Answer(pydantic.BaseModel):
    answer: str


def test_parse_json_schema(client, upstreams):
    parsed = client.responses.parse(model="zowy-1-pro", input="Answer in JSON", text_format=Answer)
    assert parsed.output_parsed == Answer(answer=reply_text(8))
    sent = upstream_requests(upstreams["openai"], 1)[-1]["body"]
    assert sent["response_format"]["type"] == "json_schema" and sent["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize("model, upstream", [("zowy-1", "gemini"), ("zowy-1-pro", "openai")])
def test_function_tool_loop(client, upstreams, model, upstream):
    first = client.responses.create(model=model, input="What's the weather in Tashkent? call a tool", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Tashkent"}
    assert calls[0].call_id.startswith("call_") and calls[0].id.startswith("fc_")
    carriers = [item for item in first.output if item.type == "reasoning"]
    assert len(carriers) == (1 if upstream == "gemini" else 0)
    follow = client.responses.create(
        model=model, tools=[WEATHER],
        input=[{"role": "user", "content": "What's the weather in Tashkent? call a tool"}, *first.output,
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 30C"}],
    )
    assert follow.output_text == reply_text(8)
    sent = upstream_requests(upstreams[upstream], 1)[-1]["body"]["messages"]
    assistant, tool = sent[-2:]
    assert tool == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "Sunny, 30C"}
    call = assistant["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": calls[0].arguments}
    if upstream == "gemini":
        assert call["extra_content"] == {"google": {"thought_signature": THOUGHT_SIGNATURE}}
    else:
        assert "extra_content" not in call


def test_streamed_tool_call_and_previous_response_chain(client, upstreams):
    with client.responses.stream(model="zowy-1-pro", input="Weather in Tashkent? call a tool", tools=[WEATHER]) as stream:
        first = stream.get_final_response()
    call = next(item for item in first.output if item.type == "function_call")
    follow = client.responses.create(model="zowy-1-pro", previous_response_id=first.id, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Rain"}])
    assert follow.previous_response_id == first.id and follow.output_text == reply_text(8)
    third = client.responses.create(model="zowy-1-pro", previous_response_id=follow.id, input="And tomorrow?")
    sent = upstream_requests(upstreams["openai"], 1)[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["content"] == "Weather in Tashkent? call a tool" and sent[4]["content"] == reply_text(8)
    assert third.output_text == reply_text(8)


def test_retrieve_input_items_delete(client):
    r = client.responses.create(model="zowy-1", input=[{"role": "user", "content": "one"},
                                                       {"role": "user", "content": [{"type": "input_text", "text": "two"}]}])
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    items = client.responses.input_items.list(r.id, order="asc")
    assert [[(part.type, part.text) for part in i.content] for i in items.data] == [[("input_text", "one")], [("input_text", "two")]]
    assert all(i.id for i in items.data)
    newest = client.responses.input_items.list(r.id, limit=1)
    assert len(newest.data) == 1 and newest.has_more and newest.data[0].id == items.data[-1].id
    assert client.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_another_account_sees_nothing(client, other):
    r = client.responses.create(model="zowy-1", input="secret")
    for call in (lambda: other.responses.retrieve(r.id), lambda: other.responses.input_items.list(r.id),
                 lambda: other.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert "secret" not in str(caught.value.body)
    with pytest.raises(openai.BadRequestError) as caught:
        other.responses.create(model="zowy-1", previous_response_id=r.id, input="continue")
    assert caught.value.body["param"] == "previous_response_id" and caught.value.body["code"] == "previous_response_not_found"
    assert client.responses.retrieve(r.id).id == r.id


def test_store_false_keeps_nothing(client):
    r = client.responses.create(model="zowy-1", input="ephemeral", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="zowy-1", previous_response_id=r.id, input="more")


@pytest.mark.parametrize("body, param", [
    ({"model": "zowy-1", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "bogus"}]}]},
     "input[0].content[1].type"),
    ({"model": "zowy-1", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "zowy-1", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input[0].call_id"),
    ({"model": "zowy-1", "input": "x", "temperature": 9}, "temperature"),
    ({"model": "zowy-9", "input": "x"}, "model"),
    ({"model": "zowy-1", "input": "x", "unknown_field": 1}, "unknown_field"),
    ({"model": "zowy-1", "input": "x", "stream": True, "background": True}, "background"),
])
def test_bad_input_is_a_400_naming_the_field_and_costs_nothing(gateway, upstreams, body, param):
    customer = support.new_customer(gateway)
    before = len(upstream_requests(upstreams["gemini"]))
    with http(gateway) as h:
        r = h.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {customer.key}"})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert len(upstream_requests(upstreams["gemini"])) == before
    assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 0


def test_unauthenticated_and_both_prefixes(gateway, customer):
    with http(gateway) as h:
        assert h.post("/v1/responses", json={"model": "zowy-1", "input": "x"}).status_code == 401
        for path in ("/v1/responses", "/api/v1/responses"):
            r = h.post(path, json={"model": "zowy-1", "input": "x"}, headers={"Authorization": f"Bearer {customer.key}"})
            assert r.status_code == 200 and r.json()["object"] == "response"
        assert h.get("/v1/responses/resp_nope", headers={"Authorization": f"Bearer {customer.key}"}).status_code == 404


def test_stored_on_one_instance_read_on_another_on_both_stores(cluster):
    """Two instances of two workers on one store (SQLite, and MongoDB over the wire): a response
    stored through one is retrieved, listed, continued and deleted through the other at once."""
    first, second = cluster
    customer = support.new_customer(first)
    with sdk_client(first, customer.key) as a, sdk_client(second, customer.key) as b:
        made = a.responses.create(model="zowy-1", input=[{"role": "user", "content": "remember 42"}])
        assert b.responses.retrieve(made.id).output_text == made.output_text
        assert [i.id for i in b.responses.input_items.list(made.id).data] == [i.id for i in a.responses.input_items.list(made.id).data]
        follow = b.responses.create(model="zowy-1", previous_response_id=made.id, input="what number?")
        assert a.responses.retrieve(follow.id).previous_response_id == made.id
        b.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(made.id)
        with pytest.raises(openai.BadRequestError):
            a.responses.create(model="zowy-1", previous_response_id=made.id, input="again")
