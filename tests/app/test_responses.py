"""The Responses API in process: POST /v1/responses on the chat pipeline, answered whole and as
Responses events, stored and read back, continued with previous_response_id, deleted; refusals,
upstream failures (before and after the stream began) and billing (one ledger entry, api
"responses", matching the usage the caller was told)."""
from __future__ import annotations

import orjson
import pytest

from app.upstream.mock import MockTransport
from tests.app.conftest import error_of, start_gateway
from tests.clients.scripted import Answer, Scripted, last_tool_output

TOOLS = [{"type": "function", "name": "lookup",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]


def respond(gateway, customer, **body):
    return gateway.post("/v1/responses", {"model": "zowy-1-pro", **body}, customer)


def response_events(response) -> list[dict]:
    """The JSON events of a streamed Responses answer, in order (each block's ``data:`` line)."""
    got = []
    for block in response.content.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data:
            got.append(orjson.loads(data[0]))
    return got


def message_text(response: dict) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


async def test_a_whole_answer_is_a_response_object_and_one_ledger_entry(gateway, customer):
    r = await respond(gateway, customer, instructions="Answer briefly.", input="hello [[fake:chunks=3]]")
    assert r.status_code == 200, r.text
    answer = orjson.loads(r.content)
    assert answer["object"] == "response" and answer["status"] == "completed" and answer["model"] == "zowy-1-pro"
    assert answer["id"].startswith("resp_") and message_text(answer) == "t0 t1 t2 "
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["output_tokens"] == 3
    (sent,) = gateway.sent("hello")
    messages = sent.body["messages"]
    assert messages[0] == {"role": "system", "content": gateway.settings.persona_prompt}
    assert messages[1:] == [{"role": "system", "content": "Answer briefly."},
                            {"role": "user", "content": "hello [[fake:chunks=3]]"}]
    entry = await gateway.entry(r.headers["x-request-id"])
    assert entry is not None and entry.api == "responses" and entry.outcome == "ok" and entry.stream is False
    assert (entry.prompt_tokens, entry.total_tokens) == (usage["input_tokens"], usage["total_tokens"])


@pytest.mark.parametrize("model", ["zowy-1", "zowy-1-pro"])  # Gemini's dialect and OpenAI's
async def test_a_stream_is_responses_events_in_order(gateway, customer, model):
    r = await respond(gateway, customer, model=model, stream=True, input="stream me [[fake:chunks=4]]")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = response_events(r)
    types = [e["type"] for e in got]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    deltas = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    final = got[-1]["response"]
    assert deltas == message_text(final) == "t0 t1 t2 t3 " and final["model"] == model
    assert not r.content.rstrip().endswith(b"[DONE]")
    entry = await gateway.entry(final["id"].removeprefix("resp_"))
    assert entry is not None and entry.stream is True and entry.api == "responses"
    assert entry.total_tokens == final["usage"]["total_tokens"]


async def test_a_tool_call_is_a_function_call_item(gateway, customer):
    r = await respond(gateway, customer, stream=True, tools=TOOLS, input="please call a tool")
    final = response_events(r)[-1]["response"]
    (call,) = [item for item in final["output"] if item["type"] == "function_call"]
    assert call["name"] == "lookup" and orjson.loads(call["arguments"]) == {"city": "Tashkent"}
    (sent,) = gateway.sent("please call a tool")
    assert sent.body["tools"][0]["function"]["name"] == "lookup"


async def test_stored_read_back_continued_and_deleted(gateway, customer):
    first = orjson.loads((await respond(gateway, customer, input="first turn")).content)
    stored = await gateway.request("GET", f"/v1/responses/{first['id']}", headers=customer.auth)
    assert stored.status_code == 200 and orjson.loads(stored.content)["output"] == first["output"]
    items = orjson.loads((await gateway.request("GET", f"/v1/responses/{first['id']}/input_items",
                                                headers=customer.auth)).content)
    # A string input is listed as OpenAI lists it: a message with one input_text part.
    assert [(item["role"], item["content"]) for item in items["data"]] == [("user", [{"type": "input_text", "text": "first turn"}])]

    second = await respond(gateway, customer, previous_response_id=first["id"], input="second turn")
    assert second.status_code == 200, second.text
    (sent,) = gateway.sent("second turn")
    said = [(m["role"], m["content"]) for m in sent.body["messages"][1:]]
    assert said == [("user", "first turn"), ("assistant", message_text(first)), ("user", "second turn")]

    other = await gateway.customer()
    assert (await gateway.request("GET", f"/v1/responses/{first['id']}", headers=other.auth)).status_code == 404
    gone = await gateway.request("DELETE", f"/v1/responses/{first['id']}", headers=customer.auth)
    assert gone.status_code == 200 and orjson.loads(gone.content)["deleted"] is True
    assert (await gateway.request("GET", f"/v1/responses/{first['id']}", headers=customer.auth)).status_code == 404


async def test_refusals_name_the_field_and_reach_no_upstream(gateway, customer):
    bad = await respond(gateway, customer, input="refused", temperature="hot")
    assert bad.status_code == 400 and error_of(bad)["param"] == "temperature"
    unknown = await respond(gateway, customer, model="gpt-4o", input="refused")
    assert unknown.status_code == 400 and error_of(unknown)["code"] == "model_not_found"
    missing = await respond(gateway, customer, previous_response_id="resp_nothing", input="refused")
    assert missing.status_code == 400 and error_of(missing)["code"] == "previous_response_not_found"
    assert error_of(missing)["param"] == "previous_response_id"
    nobody = await gateway.post("/v1/responses", {"model": "zowy-1", "input": "refused"}, headers={"authorization": "Bearer zk-nobody"})
    assert nobody.status_code == 401
    broke = await gateway.customer(tokens=None)
    assert (await respond(gateway, broke, input="refused")).status_code == 402
    assert gateway.sent("refused") == []
    assert await gateway.ledger_count(customer.account_id) == 0


@pytest.mark.parametrize("directive", ["[[fake:cut=3]]", "[[fake:error_event=2]]", "[[fake:malformed=2]]"])
async def test_a_failure_after_the_stream_began_is_response_failed_and_billed(gateway, customer, directive):
    r = await respond(gateway, customer, stream=True, input=f"go {directive}")
    assert r.status_code == 200
    got = response_events(r)
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert got[-1]["response"]["status"] == "failed" and got[-1]["response"]["error"]["code"] == "server_error"
    entry = await gateway.entry(got[-1]["response"]["id"].removeprefix("resp_"))
    assert entry is not None and entry.api == "responses" and entry.outcome != "ok"


async def test_an_upstream_refusal_before_any_byte_is_an_error_status(gateway, customer):
    r = await respond(gateway, customer, input="[[fake:status=503]]")
    assert r.status_code >= 500 and set(error_of(r)) >= {"message", "type", "code"}
    r = await respond(gateway, customer, stream=True, input="[[fake:status=400]]")
    assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_loop_through_previous_response_id(tmp_path, stream):
    """As the Agents SDK runs a function tool: the model calls it, the caller sends its output
    against the previous response, the model answers from it (the scripted upstream, in process)."""

    def script(body: dict) -> Answer:
        result = last_tool_output(body)
        if result is not None:
            return Answer(text=f"It is {result} in Paris.")
        return Answer(calls=[("get_weather", orjson.dumps({"city": "Paris"}).decode())])

    upstream = Scripted(script)
    gateway = await start_gateway(tmp_path, transport=MockTransport(upstream))
    try:
        customer = await gateway.customer()
        tools = [{"type": "function", "name": "get_weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]

        async def turn(**body) -> dict:
            r = await respond(gateway, customer, stream=stream, tools=tools, **body)
            assert r.status_code == 200, r.text
            return response_events(r)[-1]["response"] if stream else orjson.loads(r.content)

        first = await turn(input="weather in Paris?")
        (call,) = [item for item in first["output"] if item["type"] == "function_call"]
        assert call["name"] == "get_weather" and orjson.loads(call["arguments"]) == {"city": "Paris"}
        second = await turn(previous_response_id=first["id"],
                            input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}])
        assert message_text(second) == "It is sunny in Paris."
        asked, answered = upstream.received
        assert asked["messages"][0] == {"role": "system", "content": gateway.settings.persona_prompt}
        assert answered["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert answered["messages"][-1] == {"role": "tool", "tool_call_id": answered["messages"][-2]["tool_calls"][0]["id"],
                                            "content": "sunny"}
        assert await gateway.ledger_count(customer.account_id) == 2
    finally:
        await gateway.stop()
