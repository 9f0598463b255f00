"""A request's objects are freed by their reference counts when it ends, whole or streamed, in every
client API: none is left in a reference cycle for the cycle collector, whose scans of the young
generation a worker would otherwise pay for every few hundred requests."""
from __future__ import annotations

import pytest

from tests.app.conftest import user
from tests.support import cyclic_garbage

KEPT_BY_CYCLES = {"Exchange", "UpstreamStream", "StreamRewriter", "Reservation", "Usage", "_JournaledAttempts"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_chat_request_leaves_nothing_to_the_cycle_collector(gateway, customer, stream):
    await gateway.chat(customer, user("warm up", stream=stream))
    with cyclic_garbage() as found:
        for _ in range(3):
            body = user("hello", stream=stream, stream_options={"include_usage": True}) if stream else user("hello")
            response = await gateway.chat(customer, body)
            assert response.status_code == 200
    assert KEPT_BY_CYCLES.isdisjoint(found), sorted(set(found))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_responses_and_messages_requests_leave_nothing_to_the_cycle_collector(gateway, customer, stream):
    responses = {"model": "zowy-1", "input": "hello", "stream": stream, "store": False}
    messages = {"model": "zowy-1", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}
    await gateway.post("/v1/responses", responses, customer)
    await gateway.post("/v1/messages", messages, customer)
    with cyclic_garbage() as found:
        for _ in range(3):
            assert (await gateway.post("/v1/responses", responses, customer)).status_code == 200
            assert (await gateway.post("/v1/messages", messages, customer)).status_code == 200
    assert KEPT_BY_CYCLES.isdisjoint(found), sorted(set(found))
