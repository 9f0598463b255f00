"""Money end to end: packages are debited by exactly what the upstream reported, 402 when empty,
and the caller can see what is left."""
from __future__ import annotations

import time
import urllib.request

import openai
import pytest

from bench.fake_upstream import usage_for
from tests import support
from tests.conftest import http, sdk_client


def upstream_requests(upstream: support.Process) -> int:
    import json

    with urllib.request.urlopen(f"{upstream.url}/_fake/stats") as r:
        return json.loads(r.read())["requests"]


def ledger_settled(gateway, account_id: str, expected: int) -> int:
    return support.wait_until(
        lambda: (n := support.run_store(gateway, lambda s: s.ledger_count(account_id))) == expected and n or None,
        timeout=10,
    )


def test_package_is_consumed_until_402(gateway):
    """Sequential requests: each reserves its prompt and max_tokens; the one that cannot be covered
    gets 402 saying what is left, before any upstream call; nothing is overdrawn."""
    customer = support.new_customer(gateway, tokens=2000)
    used = 0
    successes = 0
    with sdk_client(gateway, customer.key) as client:
        for _ in range(60):
            try:
                r = client.chat.completions.create(model="zowy-1", max_tokens=20, messages=[{"role": "user", "content": "spend"}])
            except openai.APIStatusError as exc:
                assert exc.status_code == 402
                assert exc.body["type"] == "insufficient_quota" and exc.body["code"] == "insufficient_quota"
                assert f"has {2000 - used} tokens left" in exc.body["message"]
                break
            used += r.usage.total_tokens
            successes += 1
            ledger_settled(gateway, customer.account_id, successes)
        else:
            pytest.fail("the package was never exhausted")
    assert successes >= 5 and used <= 2000
    packages = support.run_store(gateway, lambda s: s.packages(customer.account_id))
    assert [p.used for p in packages] == [used]
    assert support.run_store(gateway, lambda s: s.reconcile()) == []


def test_debits_spill_into_the_next_package(gateway):
    customer = support.new_customer(gateway, tokens=150)

    async def grant(store):
        from app.billing import packages

        account = await store.account(customer.account_id)
        await packages.grant_package(store, gateway.settings(), account, "pro", tokens=10_000)

    support.run_store(gateway, grant)
    with sdk_client(gateway, customer.key) as client:
        totals = [client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "x"}]).usage.total_tokens for _ in range(3)]
    ledger_settled(gateway, customer.account_id, 3)
    first, second = support.run_store(gateway, lambda s: s.packages(customer.account_id))
    assert first.used == 150
    assert second.used == sum(totals) - 150


def test_no_package_is_402_before_any_upstream_call(gateway, upstreams):
    customer = support.new_customer(gateway, tokens=None)
    before = upstream_requests(upstreams["gemini"]) + upstream_requests(upstreams["openai"])
    with sdk_client(gateway, customer.key) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 402
    after = upstream_requests(upstreams["gemini"]) + upstream_requests(upstreams["openai"])
    assert after == before
    time.sleep(0.1)
    assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 0


def test_ledger_entry_matches_the_request(gateway):
    customer = support.new_customer(gateway)
    with sdk_client(gateway, customer.key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="zowy-1-pro", messages=[{"role": "user", "content": "bill me"}], user="end-user-42",
        )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    entry = support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_entry(request_id)))
    want = usage_for({"messages": [{"role": "system", "content": gateway.settings().persona_prompt}, {"role": "user", "content": "bill me"}]}, 8)
    assert (entry.prompt_tokens, entry.completion_tokens, entry.total_tokens) == (
        want["prompt_tokens"], want["completion_tokens"], want["total_tokens"],
    )
    assert completion.usage.total_tokens == entry.total_tokens
    assert entry.account_id == customer.account_id and entry.key_id == customer.key_id
    assert entry.model == "zowy-1-pro" and entry.target == "gpt-mini"
    assert entry.outcome == "ok" and entry.status == 200 and not entry.estimated and not entry.stream
    assert entry.user == "end-user-42"
    assert entry.latency_ms > 0
    assert sum(tokens for _, tokens in entry.debits) == entry.total_tokens


def test_rejected_requests_are_not_billed(gateway):
    customer = support.new_customer(gateway)
    with sdk_client(gateway, customer.key) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "x"}], top_p=7)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    time.sleep(0.2)
    assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 0


def test_customer_usage_endpoint(gateway):
    customer = support.new_customer(gateway, tokens=5_000)
    with sdk_client(gateway, customer.key) as client:
        spent = sum(client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "x"}]).usage.total_tokens for _ in range(2))
    ledger_settled(gateway, customer.account_id, 2)
    with http(gateway) as h:
        body = h.get("/api/v1/usage", headers={"Authorization": f"Bearer {customer.key}"}).json()
        assert h.get("/api/v1/usage").status_code == 401
    assert body["remaining_tokens"] == 5_000 - spent
    assert body["active_package"]["plan"] == "pro"
    assert body["usage"]["total"] == {"requests": 2, "prompt_tokens": body["usage"]["total"]["prompt_tokens"],
                                      "completion_tokens": 16, "total_tokens": spent, "errors": 0}
    assert body["usage"]["by_model"][0]["model"] == "zowy-1"
