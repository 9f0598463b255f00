"""Per-key controls end to end with the OpenAI SDK on both backends: expiry, model allow-list, token
cap and IP allow-list, set on one instance and enforced on the other."""
from __future__ import annotations

import time

import openai
import pytest

from tests import accounts_kit as kit
from tests import support
from tests.conftest import sdk_client

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def pair(request, tmp_path_factory, models_path):
    pair = kit.start_pair(tmp_path_factory, models_path, kit.backend_env(request, tmp_path_factory), request.param)
    yield pair
    pair.stop()


def controls(gateway, key_id: str, **changes) -> dict:
    with kit.admin(gateway) as a:
        r = a.patch(f"/admin/v1/keys/{key_id}", json=changes)
    assert r.status_code == 200, r.text
    return r.json()


def settle_key_cache() -> None:
    time.sleep(0.6)  # the gateways cache a key record for 0.5 s (ZOWY_KEY_CACHE_TTL in tests)


def test_expired_key_gets_401_saying_so(pair):
    customer = support.new_customer(pair.first)
    expires = time.time() + 1.5
    view = controls(pair.first, customer.key_id, expires_at=expires)
    assert view["expires_at"] == pytest.approx(expires) and view["status"] == "active"
    with sdk_client(pair.second, customer.key) as client:
        settle_key_cache()
        client.chat.completions.create(model="zowy-1", messages=HI)
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="zowy-1", messages=HI)
    assert info.value.code == "invalid_api_key" and "expired at" in info.value.message
    with kit.admin(pair.first) as a:
        listed = a.get(f"/admin/v1/accounts/{customer.account_id}/keys").json()["data"]
    assert listed[0]["status"] == "expired"
    # Extending the expiry brings the key back.
    controls(pair.first, customer.key_id, expires_at=None)
    settle_key_cache()
    with sdk_client(pair.first, customer.key) as client:
        assert client.chat.completions.create(model="zowy-1", messages=HI).model == "zowy-1"


def test_model_allow_list_answers_like_openai(pair):
    customer = support.new_customer(pair.first)
    with sdk_client(pair.second, customer.key) as client:
        assert {m.id for m in client.models.list()} == {"zowy-1", "zowy-1-pro", "zowy-2"}
        controls(pair.first, customer.key_id, models=["zowy-1"])
        settle_key_cache()
        assert [m.id for m in client.models.list()] == ["zowy-1"]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("zowy-2")
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(model="zowy-1-pro", messages=HI)
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="zowy-9", messages=HI)
        assert refused.value.code == unknown.value.code == "model_not_found"
        assert refused.value.body["param"] == "model"
        assert refused.value.message == unknown.value.message.replace("zowy-9", "zowy-1-pro")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="zowy-1-pro", messages=HI, stream=True)
        assert client.chat.completions.create(model="zowy-1", messages=HI).model == "zowy-1"
    time.sleep(0.2)
    assert support.run_store(pair.first, lambda s: s.ledger_count(customer.account_id)) == 1  # refusals are not billed


def test_token_cap_is_402_naming_the_cap_and_apart_from_the_package(pair):
    customer = support.new_customer(pair.first, tokens=1_000_000)
    # A "hi" with max_tokens 20 reserves its prompt (and the guard prompt) and 20 tokens, about 225, and
    # costs 110: three fit in the cap, and then what is left (150) cannot hold a fourth.
    cap = 3 * 110 + 150
    controls(pair.first, customer.key_id, token_cap=cap)
    settle_key_cache()
    for gateway in (pair.first, pair.second, pair.first):
        with sdk_client(gateway, customer.key) as client:
            assert client.chat.completions.create(model="zowy-1", messages=HI, max_tokens=20).usage.total_tokens == 110
    for gateway in (pair.second, pair.first):
        with sdk_client(gateway, customer.key) as client:
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="zowy-1", messages=HI, max_tokens=20)
        assert info.value.status_code == 402 and info.value.code == "insufficient_quota"
        assert f"has 150 tokens left of its token cap of {cap} tokens (330 used)" in info.value.message
    assert support.run_store(pair.first, lambda s: s.key_tokens(customer.key_id)) == 330
    # The package still has tokens: another key of the account works.
    with kit.admin(pair.first) as a:
        other = a.post(f"/admin/v1/accounts/{customer.account_id}/keys", json={"name": "uncapped"}).json()
        balance = a.get(f"/admin/v1/accounts/{customer.account_id}").json()
    assert balance["remaining_tokens"] == 1_000_000 - 330
    with sdk_client(pair.second, other["key"]) as client:
        client.chat.completions.create(model="zowy-1", messages=HI)
    controls(pair.first, customer.key_id, token_cap=1000)
    settle_key_cache()
    with sdk_client(pair.second, customer.key) as client:
        client.chat.completions.create(model="zowy-1", messages=HI)
    # A request naming more completion tokens than the cap has left is served with its answer
    # limited to what the cap holds beyond its prompt, and ends for its length there.
    with sdk_client(pair.first, customer.key) as client:
        answer = client.chat.completions.create(
            model="zowy-1", max_tokens=20_000, messages=[{"role": "user", "content": "hi [[fake:honor_max=1,chunks=20000]]"}]
        )
    assert answer.choices[0].finish_reason == "length"
    support.wait_until(lambda: support.run_store(pair.first, lambda s: s.key_tokens(customer.key_id)) == 440 + answer.usage.total_tokens)
    assert 440 + answer.usage.total_tokens <= 1000


def test_ip_allow_list_behind_a_trusted_proxy(pair):
    customer = support.new_customer(pair.first)
    controls(pair.first, customer.key_id, ips=["203.0.113.0/24", "2001:db8::/32"])
    settle_key_cache()

    def call(forwarded: str | None):
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        with sdk_client(pair.second, customer.key, default_headers=headers) as client:
            return client.chat.completions.create(model="zowy-1", messages=HI)

    assert call("203.0.113.7").model == "zowy-1"
    assert call("2001:db8::5").model == "zowy-1"
    assert call("203.0.113.7, 127.0.0.1").model == "zowy-1"  # our own proxy hop is skipped
    for forwarded in ("198.51.100.1", "203.0.113.7, 198.51.100.1", None):
        with pytest.raises(openai.PermissionDeniedError) as info:
            call(forwarded)
        assert info.value.code == "ip_not_allowed"
    assert "198.51.100.1" in info.value.message or "127.0.0.1" in info.value.message
    with sdk_client(pair.first, customer.key, default_headers={"X-Forwarded-For": "198.51.100.1"}) as client:
        with pytest.raises(openai.PermissionDeniedError):
            client.models.list()
    controls(pair.first, customer.key_id, ips=None)
    settle_key_cache()
    assert call("198.51.100.1").model == "zowy-1"


def test_admin_key_controls_are_validated_and_audited(pair):
    customer = support.new_customer(pair.first)
    with kit.admin(pair.first) as a:
        r = a.post(f"/admin/v1/accounts/{customer.account_id}/keys",
                   json={"per_minute": 500, "token_cap": 5, "models": ["zowy-2"], "name": "vision"})
        assert r.status_code == 201 and r.json()["per_minute"] == 500  # operators are not held to the defaults
        key_id = r.json()["id"]
        for body, param in (({"models": []}, "models"), ({"models": ["gpt-4"]}, "models[0]"), ({"ips": ["300.1.1.1"]}, "ips[0]"),
                            ({"expires_at": "tomorrow"}, "expires_at"), ({"token_cap": -1}, "token_cap"), ({"name": ""}, "name")):
            r = a.patch(f"/admin/v1/keys/{key_id}", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
        assert a.patch("/admin/v1/keys/key_nope", json={"name": "x"}).status_code == 404
        assert a.patch(f"/admin/v1/keys/{key_id}", json={"token_cap": 50}).json()["token_cap"] == 50
        events = a.get("/admin/v1/audit", params={"account": customer.account_id, "action": "key.controls"}).json()["data"]
    assert [(e["actor"], e["before"], e["after"]) for e in events] == [("admin", {"token_cap": 5}, {"token_cap": 50})]
    assert events[0]["ip"] == "127.0.0.1" and events[0]["target"] == key_id
