"""A key's controls in process, set through the admin API and enforced from the next request:
expiry (401 saying when), the model allow-list (404 as for an unknown model), the token cap (402
naming it; an answer limited to what it holds) and the IP allow-list behind a trusted proxy (403)."""
from __future__ import annotations

import time

import orjson
import pytest

from app.billing.need import request_need
from bench.fakes.provider import usage_for
from tests.app.conftest import Customer, Gateway, error_of, guarded, user


async def controls(gateway: Gateway, customer: Customer, **changes) -> dict:
    response = await gateway.admin("PATCH", f"/admin/v1/keys/{customer.key_id}", changes)
    assert response.status_code == 200, response.text
    return orjson.loads(response.content)


async def test_an_expired_key_gets_a_401_saying_when(gateway, customer, monkeypatch):
    expires = time.time() + 60
    view = await controls(gateway, customer, expires_at=expires)
    assert view["expires_at"] == pytest.approx(expires) and view["status"] == "active"
    assert (await gateway.chat(customer, user("hi"))).status_code == 200
    monkeypatch.setattr(gateway.services.admission, "clock", lambda: expires + 1)
    response = await gateway.chat(customer, user("hi"))
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_api_key" and "expired at" in error["message"]
    sent = len(gateway.transport.requests)
    await controls(gateway, customer, expires_at=None)  # extending the expiry brings the key back
    assert (await gateway.chat(customer, user("hi"))).status_code == 200
    assert len(gateway.transport.requests) == sent + 1
    assert await gateway.ledger_count(customer.account_id) == 2


async def test_the_model_allow_list_answers_like_openai(gateway, customer):
    listed = orjson.loads((await gateway.request("GET", "/v1/models", headers=customer.auth)).content)
    assert [m["id"] for m in listed["data"]] == ["zowy-1", "zowy-1-pro", "zowy-2"]
    await controls(gateway, customer, models=["zowy-1"])
    listed = orjson.loads((await gateway.request("GET", "/v1/models", headers=customer.auth)).content)
    assert [m["id"] for m in listed["data"]] == ["zowy-1"]
    assert (await gateway.request("GET", "/v1/models/zowy-2", headers=customer.auth)).status_code == 404
    sent = len(gateway.transport.requests)
    refused = await gateway.chat(customer, user("hi", "zowy-1-pro"))
    unknown = await gateway.chat(customer, user("hi", "zowy-9"))
    streamed = await gateway.chat(customer, user("hi", "zowy-1-pro", stream=True))
    assert refused.status_code == unknown.status_code == streamed.status_code == 404
    assert error_of(refused)["code"] == error_of(unknown)["code"] == "model_not_found"
    assert error_of(refused)["param"] == "model"
    assert error_of(refused)["message"] == error_of(unknown)["message"].replace("zowy-9", "zowy-1-pro")
    assert len(gateway.transport.requests) == sent
    assert orjson.loads((await gateway.chat(customer, user("hi"))).content)["model"] == "zowy-1"
    assert await gateway.ledger_count(customer.account_id) == 1  # refusals are not billed


async def test_the_token_cap_is_a_402_naming_it_apart_from_the_package(gateway):
    customer = await gateway.customer(tokens=1_000_000)
    doc = user("hi", max_tokens=20)
    cost = usage_for(guarded(gateway.settings, *doc["messages"]), 8)["total_tokens"]
    need = request_need(len(orjson.dumps(doc)), 0, 0, gateway.services.guard_bytes, 20)
    assert cost < need
    left = need - 1  # what will be left after three answers: less than a fourth needs
    cap = 3 * cost + left
    await controls(gateway, customer, token_cap=cap)
    for _ in range(3):
        response = await gateway.chat(customer, doc)
        assert orjson.loads(response.content)["usage"]["total_tokens"] == cost
    await gateway.settle()
    sent = len(gateway.transport.requests)
    response = await gateway.chat(customer, doc)
    assert response.status_code == 402 and error_of(response)["code"] == "insufficient_quota"
    assert f"has {left} tokens left of its token cap of {cap} tokens ({3 * cost} used)" in error_of(response)["message"]
    assert len(gateway.transport.requests) == sent
    assert await gateway.store.key_tokens(customer.key_id) == 3 * cost
    # The package still has tokens: another key of the account works.
    other = await gateway.admin("POST", f"/admin/v1/accounts/{customer.account_id}/keys", {"name": "uncapped"})
    other_key = orjson.loads(other.content)["key"]
    response = await gateway.chat(None, doc, headers={"authorization": f"Bearer {other_key}"})
    assert response.status_code == 200
    # A request asking for more than the cap holds is served, its answer limited to what the cap holds
    # beyond its prompt, and ends for its length there.
    await controls(gateway, customer, token_cap=3 * cost + 600)
    big = user("hi [[fake:honor_max=1,chunks=20000]]", max_tokens=20_000)
    response = await gateway.chat(customer, big)
    answer = orjson.loads(response.content)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert gateway.transport.requests[-1].body["max_tokens"] < 600
    await gateway.settle()
    assert 3 * cost < await gateway.store.key_tokens(customer.key_id) == 3 * cost + answer["usage"]["total_tokens"] <= 3 * cost + 600


async def test_the_ip_allow_list_holds_behind_a_trusted_proxy(make_gateway):
    gateway = await make_gateway(ZOWY_TRUSTED_PROXIES="127.0.0.1/32")
    customer = await gateway.customer()
    await controls(gateway, customer, ips=["203.0.113.0/24", "2001:db8::/32"])

    async def call(forwarded: str | None):
        return await gateway.chat(customer, user("hi"), headers={"x-forwarded-for": forwarded} if forwarded else None)

    for forwarded in ("203.0.113.7", "2001:db8::5", "203.0.113.7, 127.0.0.1"):  # our own proxy hop is skipped
        assert (await call(forwarded)).status_code == 200, forwarded
    sent = len(gateway.transport.requests)
    for forwarded, seen in (("198.51.100.1", "198.51.100.1"), ("203.0.113.7, 198.51.100.1", "198.51.100.1"), (None, "127.0.0.1")):
        response = await call(forwarded)
        assert response.status_code == 403, forwarded
        error = error_of(response)
        assert error["code"] == "ip_not_allowed" and f"address {seen}," in error["message"]
    assert len(gateway.transport.requests) == sent
    models = await gateway.request("GET", "/v1/models", headers={**customer.auth, "x-forwarded-for": "198.51.100.1"})
    assert models.status_code == 403
    await controls(gateway, customer, ips=None)
    assert (await call("198.51.100.1")).status_code == 200


async def test_key_controls_are_validated_naming_the_field_and_audited(gateway):
    customer = await gateway.customer()
    created = await gateway.admin("POST", f"/admin/v1/accounts/{customer.account_id}/keys",
                                  {"per_minute": 500, "token_cap": 5, "models": ["zowy-2"], "name": "vision"})
    assert created.status_code == 201 and orjson.loads(created.content)["per_minute"] == 500
    key_id = orjson.loads(created.content)["id"]
    for body, param in (({"models": []}, "models"), ({"models": ["gpt-4"]}, "models[0]"), ({"ips": ["300.1.1.1"]}, "ips[0]"),
                        ({"expires_at": "tomorrow"}, "expires_at"), ({"token_cap": -1}, "token_cap"), ({"name": ""}, "name")):
        response = await gateway.admin("PATCH", f"/admin/v1/keys/{key_id}", body)
        assert response.status_code == 400 and error_of(response)["param"] == param, (body, response.text)
    assert (await gateway.admin("PATCH", "/admin/v1/keys/key_nope", {"name": "x"})).status_code == 404
    changed = await gateway.admin("PATCH", f"/admin/v1/keys/{key_id}", {"token_cap": 50})
    assert orjson.loads(changed.content)["token_cap"] == 50
    audit = await gateway.admin("GET", f"/admin/v1/audit?account={customer.account_id}&action=key.controls")
    events = orjson.loads(audit.content)["data"]
    assert [(e["actor"], e["before"], e["after"], e["target"]) for e in events] == [
        ("admin", {"token_cap": 5}, {"token_cap": 50}, key_id)]
    assert events[0]["ip"] == "127.0.0.1"
