"""The OpenAI Agents SDK (Responses API, its default) against the gateway and a scripted upstream:
an agent with a function tool calls it and answers after its result, plain and streamed."""
from __future__ import annotations

import asyncio
import json

import pytest
from openai import AsyncOpenAI

from tests import support
from tests.clients.scripted import SCRIPTED_MODEL, Answer, ScriptedUpstream, last_tool_output, models_file

agents = pytest.importorskip("agents")


def script(body: dict) -> Answer:
    result = last_tool_output(body)
    if result is not None:
        return Answer(text=f"It is {result} in Paris.")
    return Answer(calls=[("get_weather", json.dumps({"city": "Paris"}))])


@pytest.fixture(scope="module")
def scripted_gateway(tmp_path_factory):
    upstream = ScriptedUpstream(script).start()
    tmp = tmp_path_factory.mktemp("agents")
    gateway = support.start_gateway(tmp / "data", models_file(tmp / "models.toml", upstream.url))
    try:
        yield gateway, upstream
    finally:
        gateway.stop()
        upstream.stop()


@pytest.mark.parametrize("streamed", [False, True])
def test_agent_with_a_function_tool(scripted_gateway, streamed):
    gateway, upstream = scripted_gateway
    customer = support.new_customer(gateway)
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny, 21C"

    async def go() -> str:
        client = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=customer.key, max_retries=0)
        agents.set_tracing_disabled(True)
        model = agents.OpenAIResponsesModel(model="zowy-1", openai_client=client)
        agent = agents.Agent(name="weather", instructions="Answer with the tool.", model=model, tools=[get_weather])
        try:
            if streamed:
                run = agents.Runner.run_streamed(agent, "What's the weather in Paris?")
                async for _ in run.stream_events():
                    pass
                return run.final_output
            return (await agents.Runner.run(agent, "What's the weather in Paris?")).final_output
        finally:
            await client.close()

    before = len(upstream.received)
    answer = asyncio.run(go())
    assert seen == ["Paris"]
    assert answer == "It is sunny, 21C in Paris."
    turns = upstream.received[before:]
    assert len(turns) == 2 and turns[1]["messages"][-1]["content"] == "sunny, 21C"
    assert turns[0]["messages"][1] == {"role": "system", "content": "Answer with the tool."}
    assert SCRIPTED_MODEL not in answer
    entries = support.wait_until(
        lambda: (n := support.run_store(gateway, lambda s: s.ledger_count(customer.account_id))) == 2 and n, timeout=10)
    assert entries == 2
