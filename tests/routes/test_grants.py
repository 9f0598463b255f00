"""Money in, exactly once, on both backends: redemption codes (double redeem racing on two instances)
and the signed top-up webhook (replays, bad signatures, stale timestamps, unknown accounts)."""
from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import openai
import orjson
import pytest

from app.store.contracts.grants import Code
from tests import accounts_kit as kit
from tests import support
from tests.conftest import http, sdk_client

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def pair(request, tmp_path_factory, models_path):
    pair = kit.start_pair(tmp_path_factory, models_path, kit.backend_env(request, tmp_path_factory), request.param)
    yield pair
    pair.stop()


def batch(gateway, **body) -> dict:
    with kit.admin(gateway) as a:
        r = a.post("/admin/v1/codes", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def packages(gateway, account_id: str):
    return support.run_store(gateway, lambda s: s.packages(account_id))


def test_codes_batch_then_redeem_once(pair):
    made = batch(pair.first, plan="pro", count=3, days=10)
    assert made["count"] == 3 and len(set(made["codes"])) == 3 and made["tokens"] == 2_000_000
    assert all(c.startswith("ZOWY-") and len(c) == 28 for c in made["codes"])
    owner = kit.new_owner(pair.first, tokens=None)
    other = kit.new_owner(pair.first, tokens=None)
    with sdk_client(pair.second, owner.customer.key) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="zowy-1", messages=HI)
        assert info.value.status_code == 402

        typed = made["codes"][0].lower().replace("-", " ")  # as a person might type it
        with http(pair.second) as h:
            r = h.post("/api/v1/redeem", headers=owner.auth, json={"code": typed})
            assert r.status_code == 201, r.text
            package = r.json()["package"]
            assert package["plan"] == "pro" and package["tokens"] == 2_000_000
            assert package["expires_at"] - package["granted_at"] == pytest.approx(10 * 86400)
            assert r.json()["remaining_tokens"] == 2_000_000
            again = h.post("/api/v1/redeem", headers=owner.auth, json={"code": made["codes"][0]})
            assert again.status_code == 409 and again.json()["error"]["code"] == "code_already_redeemed"
            stolen = h.post("/api/v1/redeem", headers=other.auth, json={"code": made["codes"][0]})
            assert stolen.status_code == 409
            unknown = h.post("/api/v1/redeem", headers=other.auth, json={"code": "ZOWY-00000-00000-00000-00000"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "code_not_found"
            garbage = h.post("/api/v1/redeem", headers=other.auth, json={"code": "free tokens please"})
            assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "code"
            assert h.post("/api/v1/redeem", headers=other.auth, json={}).json()["error"]["param"] == "code"
            assert h.post("/api/v1/redeem", headers={"Authorization": f"Bearer {owner.customer.key}"},
                          json={"code": made["codes"][1]}).status_code == 401
        time.sleep(0.3)  # the balance cache lives 0.2 s in tests
        assert client.chat.completions.create(model="zowy-1", messages=HI).model == "zowy-1"
    assert [p.id for p in packages(pair.first, owner.customer.account_id)] == [package["id"]]

    with kit.admin(pair.first) as a:
        listed = a.get(f"/admin/v1/codes/{made['batch_id']}").json()
        assert listed["count"] == 3 and listed["redeemed"] == 1
        assert not any(code in str(listed) for code in made["codes"])  # only hashes are kept
        assert a.get("/admin/v1/codes/batch_nope").status_code == 404
        assert a.post("/admin/v1/codes", json={"count": 2}).json()["error"]["code"] == "missing_required_parameter"
        assert a.post("/admin/v1/codes", json={"plan": "gold", "count": 2}).json()["error"]["param"] == "plan"
        assert a.post("/admin/v1/codes", json={"plan": "pro", "count": 0}).json()["error"]["param"] == "count"
        events = a.get("/admin/v1/audit", params={"account": owner.customer.account_id, "action": "code.redeem"}).json()["data"]
        assert [(e["actor"].split(":")[0], e["after"]["id"]) for e in events] == [("owner", package["id"])]

    tokens_only = batch(pair.first, tokens=5000, count=1)
    assert tokens_only["plan"] == "tokens"
    with http(pair.first) as h:
        r = h.post("/api/v1/redeem", headers=other.auth, json={"code": tokens_only["codes"][0]})
    assert r.status_code == 201 and r.json()["package"]["tokens"] == 5000 and r.json()["package"]["plan"] == "tokens"


def test_expired_code_is_refused(pair):
    from app.billing.grants import code_hash, new_code, normalize_code

    text = new_code()
    settings = pair.first.settings()
    past = time.time() - 10
    stale = Code(f"code_{uuid.uuid4().hex[:16]}", "batch_old", "pro", 100, 30, past - 100, past)
    support.run_store(pair.first, lambda s: s.create_codes([(stale, code_hash(normalize_code(text), settings.key_pepper))]))
    owner = kit.new_owner(pair.first, tokens=None)
    with http(pair.first) as h:
        r = h.post("/api/v1/redeem", headers=owner.auth, json={"code": text})
    assert r.status_code == 400 and r.json()["error"]["code"] == "code_expired"
    assert packages(pair.first, owner.customer.account_id) == []


async def _redeem_all(calls: list[tuple[str, str, str]]) -> list[int]:
    async with aiohttp.ClientSession() as session:
        async def one(url: str, token: str, code: str) -> int:
            async with session.post(f"{url}/api/v1/redeem", json={"code": code},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one(*call) for call in calls))


def test_double_redeem_racing_on_two_instances(pair):
    code = batch(pair.first, plan="business", count=1)["codes"][0]
    owners = [kit.new_owner(pair.first, tokens=None) for _ in range(3)]
    calls = [((pair.first if i % 2 else pair.second).url, owners[i % 3].token, code) for i in range(24)]
    statuses = asyncio.run(_redeem_all(calls))
    assert sorted(statuses) == [201] + [409] * 23
    granted = [p for o in owners for p in packages(pair.first, o.customer.account_id)]
    assert len(granted) == 1 and granted[0].tokens == 10_000_000
    assert support.run_store(pair.first, lambda s: s.reconcile()) == []


def topup_event(account: str, **extra) -> bytes:
    return orjson.dumps({"event_id": f"evt_{uuid.uuid4().hex}", "account": account, **extra})


def post_topup(gateway, body: bytes, headers: dict[str, str]):
    with http(gateway) as h:
        return h.post("/webhooks/topup", content=body, headers=headers)


def test_topup_webhook_grants_once_per_event(pair):
    customer = support.new_customer(pair.first, tokens=None)
    body = topup_event(customer.account_id, plan="pro", metadata={"invoice": "inv_42"})
    headers = kit.signed(body)
    r = post_topup(pair.first, body, headers)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["duplicate"] is False and first["package"]["tokens"] == 2_000_000
    replay = post_topup(pair.second, body, headers)  # the same delivery again, on the other instance
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert replay.json()["package"]["id"] == first["package"]["id"]
    assert [p.id for p in packages(pair.first, customer.account_id)] == [first["package"]["id"]]
    with sdk_client(pair.second, customer.key) as client:
        time.sleep(0.3)
        client.chat.completions.create(model="zowy-1", messages=HI)

    def refused(body: bytes, headers: dict, status: int, code: str) -> None:
        r = post_topup(pair.second, body, headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text

    other = topup_event(customer.account_id, tokens=500)
    tampered = other.replace(b"500", b"900")
    refused(tampered, kit.signed(other), 401, "invalid_signature")
    refused(other, kit.signed(other, secret="someone else's secret"), 401, "invalid_signature")
    refused(other, kit.signed(other, at=time.time() - 360), 401, "stale_timestamp")
    refused(other, kit.signed(other, at=time.time() + 360), 401, "stale_timestamp")
    refused(other, {"Content-Type": "application/json"}, 401, "missing_signature")
    refused(other, {**kit.signed(other), "X-Zowy-Timestamp": "noon"}, 401, "invalid_timestamp")
    nobody = topup_event("acct_nobody", plan="pro")
    refused(nobody, kit.signed(nobody), 404, "account_not_found")
    negative = topup_event(customer.account_id, tokens=-5)
    refused(negative, kit.signed(negative), 400, "invalid_value")
    nothing = topup_event(customer.account_id)
    refused(nothing, kit.signed(nothing), 400, "missing_required_parameter")
    reused = orjson.dumps({**orjson.loads(body), "plan": "business"})
    refused(reused, kit.signed(reused), 409, "event_id_reused")
    assert len(packages(pair.first, customer.account_id)) == 1  # none of those changed anything
    # The unknown account's event id was not used up: it can still be applied to a real account.
    retried = orjson.dumps({**orjson.loads(nobody), "account": customer.account_id})
    assert post_topup(pair.first, retried, kit.signed(retried)).json()["duplicate"] is False
    # Signing with several secrets (a sender rotating its own) works when one matches.
    rotated = topup_event(customer.account_id, tokens=500)
    headers = kit.signed(rotated)
    headers["X-Zowy-Signature"] = "v1=" + "0" * 64 + "," + headers["X-Zowy-Signature"]
    assert post_topup(pair.first, rotated, headers).status_code == 200
    assert len(packages(pair.first, customer.account_id)) == 3

    with kit.admin(pair.first) as a:
        events = a.get("/admin/v1/audit", params={"account": customer.account_id, "action": "topup"}).json()["data"]
    assert len(events) == 3 and {e["actor"] for e in events} == {"webhook:topup"}


async def _deliver_all(urls: list[str], body: bytes, headers: dict) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async def one(url: str) -> dict:
            async with session.post(f"{url}/webhooks/topup", data=body, headers=headers) as r:
                return await r.json()

        return await asyncio.gather(*(one(u) for u in urls))


def test_concurrent_replays_grant_once(pair):
    customer = support.new_customer(pair.first, tokens=None)
    body = topup_event(customer.account_id, plan="business", days=7)
    answers = asyncio.run(_deliver_all([pair.first.url, pair.second.url] * 8, body, kit.signed(body)))
    assert [a["duplicate"] for a in answers].count(False) == 1
    assert len({a["package"]["id"] for a in answers}) == 1
    [granted] = packages(pair.first, customer.account_id)
    assert granted.tokens == 10_000_000 and granted.expires_at - granted.granted_at == pytest.approx(7 * 86400)


def test_topup_webhook_is_off_without_a_secret(tmp_path, models_path):
    from sanic import Sanic

    from app.core.config import Settings
    from app.http.app import create_app

    Sanic.test_mode = True
    settings = Settings.from_env({"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_MODELS_FILE": str(models_path), "ZOWY_DEMO": "off"})
    app = create_app(settings, name=f"topup_off_{uuid.uuid4().hex[:6]}")
    body = topup_event("acct_1", plan="pro")
    _, response = app.test_client.post("/webhooks/topup", content=body, headers=kit.signed(body))
    assert response.status == 403 and response.json["error"]["code"] == "webhook_disabled"
