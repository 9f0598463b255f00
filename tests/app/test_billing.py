"""Money in process: one ledger entry per request that reached an upstream (exactly once, whatever
the outcome) with exactly what the upstream reported; packages debited until a 402 that says what
is left, spilling into the next; a small balance served with a completion limited to what it holds,
per choice; and what the caller sees of it at /v1/usage."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from app.billing.need import prompt_need, request_need
from app.store.contracts.ledger import LedgerQuery
from app.upstream.mock import MockRequest, MockResponse
from bench.fakes.provider import usage_for
from tests.app.conftest import Gateway, chunks, error_of, guarded, user


def prompt_of(gateway: Gateway, doc: dict) -> int:
    """What a request reserves for its prompt (and the guard prompt)."""
    return prompt_need(len(orjson.dumps(doc)), 0, 0, gateway.services.guard_bytes)


async def test_a_ledger_entry_is_the_request_as_it_happened(gateway, customer):
    response = await gateway.chat(customer, user("bill me", "zowy-1-pro", user="end-user-42"))
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    entry = await gateway.entry(request_id)
    want = usage_for(guarded(gateway.settings, {"role": "user", "content": "bill me"}), 8)
    assert (entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == tuple(want.values())
    assert orjson.loads(response.content)["usage"]["total_tokens"] == entry.total_tokens
    assert (entry.account_id, entry.key_id) == (customer.account_id, customer.key_id)
    assert (entry.model, entry.target, entry.api) == ("zowy-1-pro", "gpt-mini", "chat")
    assert (entry.outcome, entry.status, entry.attempts) == ("ok", 200, 1)
    assert not entry.estimated and not entry.stream and entry.user == "end-user-42" and entry.latency_ms > 0
    assert sum(tokens for _, tokens in entry.debits) == entry.total_tokens
    (package,) = await gateway.store.packages(customer.account_id)
    assert package.used == entry.total_tokens
    assert await gateway.store.reconcile() == []


async def test_every_request_that_reached_an_upstream_is_billed_exactly_once(gateway):
    """Whatever the outcome: answered, streamed, cut mid-stream, unreadable, failed after retries,
    refused by the upstream, timed out; and nothing for a request that never reached one."""
    customer = await gateway.customer()
    cases = [
        (user("whole"), "ok"), (user("streamed", stream=True, stream_options={"include_usage": True}), "ok"),
        (user("cut [[fake:chunks=10,cut=4]]", "zowy-1-pro", stream=True), "upstream_error"),
        (user("malformed [[fake:malformed=2]]", "zowy-1-pro", stream=True), "upstream_error"),
        (user("failed [[fake:status=500]]"), "upstream_error"),
        (user("refused [[fake:status=400]]", "zowy-1-pro"), "upstream_error"),
        (user("timed out", "zowy-2"), "upstream_timeout"),
    ]

    async def time_out(request: MockRequest) -> MockResponse:
        raise TimeoutError()

    billed = {}
    for body, outcome in cases:
        if body["model"] == "zowy-2":
            gateway.upstreams.targets.update({"gemini-pro": time_out, "gpt-mini": time_out})
        response = await gateway.chat(customer, body)
        billed[response.headers["x-request-id"]] = outcome
    for body in ({"model": "zowy-1", "messages": []}, user("hi", "gpt-4o"), user("hi", temperature=9)):
        assert (await gateway.chat(customer, body)).status_code in (400, 404)
    assert await gateway.ledger_count(customer.account_id) == len(billed)
    await gateway.settle()  # settling again writes nothing twice
    entries = await gateway.store.ledger_page(customer.account_id, LedgerQuery(limit=100))
    assert {e.request_id: e.outcome for e in entries} == billed
    packages = await gateway.store.packages(customer.account_id)
    assert sum(p.used for p in packages) == sum(e.total_tokens for e in entries)
    assert await gateway.store.reconcile() == []


async def test_a_package_is_consumed_until_402_and_never_overdrawn(gateway):
    customer = await gateway.customer(tokens=2000)
    used = served = 0
    for _ in range(60):
        response = await gateway.chat(customer, user("spend", max_tokens=20))
        if response.status_code == 402:
            error = error_of(response)
            assert error["type"] == error["code"] == "insufficient_quota"
            assert f"has {2000 - used} tokens left" in error["message"]
            break
        assert response.status_code == 200
        used += orjson.loads(response.content)["usage"]["total_tokens"]
        served += 1
        await gateway.settle()
    else:
        pytest.fail("the package was never exhausted")
    assert served >= 5 and used <= 2000
    (package,) = await gateway.store.packages(customer.account_id)
    assert package.used == used
    assert await gateway.ledger_count(customer.account_id) == served
    assert await gateway.store.reconcile() == []


async def test_debits_spill_into_the_next_package(gateway):
    from app.billing import packages

    customer = await gateway.customer(tokens=150)
    account = await gateway.store.account(customer.account_id)
    await packages.grant_package(gateway.store, gateway.settings, account, "pro", tokens=10_000)
    totals = []
    for _ in range(3):
        response = await gateway.chat(customer, user("x"))
        totals.append(orjson.loads(response.content)["usage"]["total_tokens"])
    await gateway.settle()
    first, second = await gateway.store.packages(customer.account_id)
    assert first.used == 150 and second.used == sum(totals) - 150


async def test_a_small_balance_serves_answers_limited_to_what_is_left_then_402(gateway):
    package = 3000  # less than one default answer (4,096 tokens)
    customer = await gateway.customer(tokens=package)
    left = package
    # A short answer, then a streamed one that runs into the limit: both served, their completion
    # limited to what the balance holds beyond the prompt.
    for i, (chunks_asked, finish, stream) in enumerate([(1000, "stop", False), (5000, "length", True)]):
        doc = user(f"small balance {i} [[fake:honor_max=1,chunks={chunks_asked}]]", stream=stream,
                   **({"stream_options": {"include_usage": True}} if stream else {}))
        response = await gateway.chat(customer, doc)
        assert response.status_code == 200, response.text
        limit = left - prompt_of(gateway, doc)  # the whole of what is left, less the prompt
        sent = gateway.transport.requests[-1].body
        assert sent["max_tokens"] == limit and "max_completion_tokens" not in sent
        if stream:
            answer = chunks(response)
            finishes = [c["choices"][0]["finish_reason"] for c in answer if c["choices"] and c["choices"][0].get("finish_reason")]
            usage = answer[-1]["usage"]
        else:
            answer = orjson.loads(response.content)
            finishes, usage = [answer["choices"][0]["finish_reason"]], answer["usage"]
        assert finishes == [finish] and usage["completion_tokens"] == min(chunks_asked, limit)
        left -= usage["total_tokens"]
        await gateway.settle()
        (stored,) = await gateway.store.packages(customer.account_id)
        assert stored.used == package - left
    # 402 only once what is left cannot hold the prompt and a useful answer; the message says so.
    sent = len(gateway.transport.requests)
    response = await gateway.chat(customer, doc)
    least = prompt_of(gateway, doc) + gateway.settings.min_completion_tokens
    assert response.status_code == 402 and 0 < left < least
    message = error_of(response)["message"]
    assert f"at least {least} tokens" in message and f"has {left} tokens left" in message
    assert len(gateway.transport.requests) == sent
    assert await gateway.store.reconcile() == []


async def test_a_larger_max_tokens_is_lowered_for_every_choice(gateway):
    customer = await gateway.customer(tokens=3000)
    doc = user("lowered 1 [[fake:honor_max=1]]", "zowy-1-pro", max_tokens=300)
    assert (await gateway.chat(customer, doc)).status_code == 200
    assert gateway.transport.requests[-1].body["max_completion_tokens"] == 300  # held by the balance: as asked
    await gateway.settle()
    (stored,) = await gateway.store.packages(customer.account_id)
    left = 3000 - stored.used
    doc = user("lowered 2 [[fake:honor_max=1,chunks=5000]]", "zowy-1-pro", n=2, max_tokens=10_000)
    response = await gateway.chat(customer, doc)
    assert response.status_code == 200, response.text
    limit = (left - prompt_of(gateway, doc)) // 2
    sent = gateway.transport.requests[-1].body
    assert sent["max_completion_tokens"] == limit and "max_tokens" not in sent
    answer = orjson.loads(response.content)
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "length"]
    assert answer["usage"]["completion_tokens"] == 2 * limit
    await gateway.settle()
    (stored,) = await gateway.store.packages(customer.account_id)
    assert stored.used == 3000 - left + answer["usage"]["total_tokens"] <= 3000


async def test_what_a_request_reserves_is_what_it_may_cost(gateway):
    """While a request is in flight its need is held: a second one the rest cannot cover is refused
    at once, and the hold is given back when the first ends."""
    doc = user("hold", max_tokens=400)
    need = request_need(len(orjson.dumps(doc)), 0, 0, gateway.services.guard_bytes, 400)
    customer = await gateway.customer(tokens=need + 100)
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: MockRequest) -> MockResponse:
        arrived.set()
        await release.wait()
        return await gateway.upstreams.gemini(request)

    gateway.upstreams.targets["gemini-flash"] = held
    first = asyncio.ensure_future(gateway.chat(customer, doc))
    await asyncio.wait_for(arrived.wait(), 10)
    second = await gateway.chat(customer, user("second", max_tokens=400))
    assert second.status_code == 402 and error_of(second)["code"] == "insufficient_quota"
    release.set()
    assert (await first).status_code == 200
    third = await gateway.chat(customer, user("third", max_tokens=50))
    assert third.status_code == 200


async def test_the_usage_endpoint_shows_what_was_spent(gateway):
    customer = await gateway.customer(tokens=5_000)
    spent = 0
    for _ in range(2):
        spent += orjson.loads((await gateway.chat(customer, user("x"))).content)["usage"]["total_tokens"]
    await gateway.settle()
    response = await gateway.request("GET", "/v1/usage", headers=customer.auth)
    body = orjson.loads(response.content)
    assert body["remaining_tokens"] == 5_000 - spent and body["active_package"]["plan"] == "pro"
    total = body["usage"]["total"]
    assert (total["requests"], total["completion_tokens"], total["total_tokens"], total["errors"]) == (2, 16, spent, 0)
    assert body["usage"]["by_model"][0]["model"] == "zowy-1"
    assert (await gateway.request("GET", "/v1/usage")).status_code == 401
