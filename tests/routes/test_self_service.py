"""The customer API end to end on both backends: invites, sign-in (throttled, audited), sessions as
a bearer token or a cookie with CSRF, an owner's keys within the account's rights, usage, the ledger
and its CSV export; two instances share one store."""
from __future__ import annotations

import csv
import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest

from tests import accounts_kit as kit
from tests import support
from tests.conftest import http, sdk_client


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def pair(request, tmp_path_factory, models_path):
    pair = kit.start_pair(tmp_path_factory, models_path, kit.backend_env(request, tmp_path_factory), request.param)
    yield pair
    pair.stop()


def cookie_attributes(response: httpx2.Response, name: str) -> set[str]:
    """The attributes of one Set-Cookie header, lowercased: ``httponly``, ``samesite=strict``, ..."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            return {part.strip().lower() for part in header.split(";")[1:]}
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def test_invite_accept_sign_in_and_balance(pair):
    gateway = pair.first
    customer = support.new_customer(gateway, tokens=5000)
    email = f"Ann-{uuid.uuid4().hex[:8]}@Example.com"
    with kit.admin(gateway) as a:
        r = a.post(f"/admin/v1/accounts/{customer.account_id}/invites", json={"email": email})
        assert r.status_code == 201
        token = r.json()["token"]
        assert token.startswith("zi-") and r.json()["email"] == email.lower()
        assert a.post("/admin/v1/accounts/nobody-here/invites", json={"email": email}).json()["error"]["code"] == "account_not_found"
        assert a.post(f"/admin/v1/accounts/{customer.account_id}/invites", json={"email": "not-an-email"}).json()["error"]["param"] == "email"
    with http(pair.second) as h:
        short = h.post("/api/v1/auth/invite/accept", json={"token": token, "password": "short"})
        assert short.status_code == 400 and short.json()["error"]["param"] == "password"
        r = h.post("/api/v1/auth/invite/accept", json={"token": token, "password": kit.PASSWORD})
        assert r.status_code == 201 and r.json()["owner"]["account_id"] == customer.account_id
        again = h.post("/api/v1/auth/invite/accept", json={"token": token, "password": kit.PASSWORD})
        assert again.status_code == 404 and again.json()["error"]["code"] == "invite_invalid"
        assert h.post("/api/v1/auth/invite/accept", json={"token": token}).json()["error"]["param"] == "password"

    signed = kit.sign_in(gateway, email.upper())
    assert signed.status_code == 201
    body = signed.json()
    assert body["token"].startswith("zs-") and len(body["csrf_token"]) == 32
    assert body["owner"]["email"] == email.lower()
    session = cookie_attributes(signed, "zowy_session")
    assert {"httponly", "path=/", "samesite=strict"} <= session and "secure" not in session
    assert "max-age=3600" in session
    assert "httponly" not in cookie_attributes(signed, "zowy_csrf")
    with http(gateway) as h:
        over_tls = h.post("/api/v1/auth/sessions", json={"email": email, "password": kit.PASSWORD},
                          headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": kit.fresh_ip()})
    assert "secure" in cookie_attributes(over_tls, "zowy_session")

    with http(pair.second) as h:  # a session made on one instance works on the other
        r = h.get("/api/v1/account", headers={"Authorization": f"Bearer {body['token']}"})
        assert r.status_code == 200
        assert r.json()["remaining_tokens"] == 5000 and r.json()["active_package"]["plan"] == "pro"
        assert h.get("/api/v1/account").json()["error"]["code"] == "invalid_session"
        assert h.get("/api/v1/account", headers={"Authorization": "Bearer zs-forged"}).status_code == 401
    with kit.admin(gateway) as a:
        owners = a.get(f"/admin/v1/accounts/{customer.account_id}/owners").json()["data"]
        assert [o["email"] for o in owners] == [email.lower()]
        events = a.get("/admin/v1/audit", params={"account": customer.account_id}).json()["data"]
        assert {"invite.create", "invite.accept", "package.grant", "key.create"} <= {e["action"] for e in events}


def test_sign_in_failures_are_audited_and_throttled(pair):
    support.wait_for_window(60, need=15)
    owner = kit.new_owner(pair.first)
    guesser = kit.fresh_ip()
    for i in range(3):  # 3 a minute per account and address (ZOWY_SIGNIN_ACCOUNT_IP_PER_MINUTE)
        r = kit.sign_in(pair.first if i % 2 else pair.second, owner.email, "wrong password!", ip=guesser)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    throttled = kit.sign_in(pair.second, owner.email, ip=guesser)  # even the right password waits there
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"]["code"] == "rate_limit_exceeded"
    assert kit.sign_in(pair.first, owner.email).status_code == 201  # another address is not held back
    unknown = kit.sign_in(pair.first, "nobody-" + owner.email, "whatever password")
    assert unknown.status_code == 401 and unknown.json()["error"]["message"] == "Incorrect email or password."

    ip = kit.fresh_ip()  # 30 a minute per address, whatever the email
    codes = [kit.sign_in(pair.first, f"n{i}-{owner.email}", "whatever password", ip=ip).status_code for i in range(31)]
    assert codes == [401] * 30 + [429]

    with kit.admin(pair.first) as a:
        events = a.get("/admin/v1/audit", params={"account": owner.customer.account_id, "action": "signin.failed"}).json()["data"]
    assert len(events) == 3
    assert all(e["actor"] == "anonymous" and e["target"] == owner.email and e["ip"] == guesser for e in events)
    assert "password" not in str(events).replace("wrong password", "")


def test_strangers_guessing_from_many_addresses_cannot_lock_the_owner_out(pair):
    support.wait_for_window(60, need=25)
    owner = kit.new_owner(pair.first)  # its sign-in is the first of this minute: 4 more fill the account's 5
    strangers = [kit.fresh_ip() for _ in range(12)]
    codes = [kit.sign_in(pair.first if i % 2 else pair.second, owner.email, "wrong password!", ip=ip).status_code
             for i, ip in enumerate(strangers)]
    # Past the account-wide ceiling (ZOWY_SIGNIN_PER_MINUTE) each address without failures still has
    # its password checked, once: these were all wrong.
    assert codes == [401] * 12
    again = [kit.sign_in(pair.second, owner.email, "wrong again!", ip=ip) for ip in strangers[:4]]
    assert [r.status_code for r in again] == [429] * 4  # an address that failed waits while the account is over
    assert all(int(r.headers["retry-after"]) >= 1 for r in again)
    assert kit.sign_in(pair.first, owner.email, ip=strangers[0]).status_code == 429  # even with the right password

    # The owner, from an address that has not failed, gets in with the right password.
    assert kit.sign_in(pair.second, owner.email).status_code == 201
    assert kit.sign_in(pair.first, owner.email, ip=owner.ip).status_code == 201

    # A burst from one fresh address past the ceiling gets a single password check.
    burst = kit.fresh_ip()
    with ThreadPoolExecutor(6) as pool:
        burst_codes = list(pool.map(lambda i: kit.sign_in(pair.first if i % 2 else pair.second, owner.email,
                                                          "burst of guesses", ip=burst).status_code, range(6)))
    assert sorted(burst_codes) == [401] + [429] * 5

    with kit.admin(pair.first) as a:
        failed = a.get("/admin/v1/audit", params={"account": owner.customer.account_id, "action": "signin.failed"}).json()["data"]
    assert len(failed) == 13  # every checked password is audited; refusals before the check cost nothing


def test_cookie_session_needs_the_csrf_token_for_changes(pair):
    owner = kit.new_owner(pair.first)
    cookies = {"zowy_session": owner.token}
    with httpx2.Client(base_url=pair.second.url, cookies=cookies, timeout=30) as browser:
        assert browser.get("/api/v1/keys").status_code == 200  # reading needs no CSRF token
        r = browser.post("/api/v1/keys", json={"name": "from the console"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
        r = browser.post("/api/v1/keys", json={"name": "from the console"}, headers={"X-CSRF-Token": "0" * 32})
        assert r.status_code == 403
        r = browser.post("/api/v1/keys", json={"name": "from the console"}, headers={"X-CSRF-Token": owner.csrf})
        assert r.status_code == 201 and r.json()["key"].startswith("zk-")
    with http(pair.first) as h:  # a bearer session is not a browser: no CSRF token needed
        assert h.post("/api/v1/keys", json={"name": "from a script"}, headers=owner.auth).status_code == 201
        wrong = h.get("/api/v1/keys", headers={"Authorization": f"Bearer {owner.customer.key}"})
        assert wrong.status_code == 401 and "not an API key" in wrong.json()["error"]["message"]

    with httpx2.Client(base_url=pair.first.url, cookies=cookies, timeout=30) as browser:
        assert browser.delete("/api/v1/auth/sessions/current").status_code == 403
        out = browser.delete("/api/v1/auth/sessions/current", headers={"X-CSRF-Token": owner.csrf})
        assert out.status_code == 200
        assert any(h.startswith("zowy_session=;") or 'zowy_session="";' in h for h in out.headers.get_list("set-cookie"))
    with http(pair.second) as h:  # signed out on one instance: gone on the other at once
        r = h.get("/api/v1/account", headers=owner.auth)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_session"


def test_owner_manages_keys_within_the_accounts_rights(pair):
    owner = kit.new_owner(pair.first)
    other = kit.new_owner(pair.first)
    with http(pair.second) as h:
        r = h.post("/api/v1/keys", headers=owner.auth, json={
            "name": "ci", "models": ["zowy-1"], "token_cap": 1000, "ips": ["10.0.0.0/8", "127.0.0.1"], "per_minute": 30,
        })
        assert r.status_code == 201
        made = r.json()
        assert made["key"].startswith("zk-") and made["models"] == ["zowy-1"] and made["ips"] == ["10.0.0.0/8", "127.0.0.1/32"]
        assert made["status"] == "active" and made["per_minute"] == 30

        def refused(method, path, body, param):
            r = h.request(method, path, headers=owner.auth, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            return r.json()["error"]

        assert refused("POST", "/api/v1/keys", {"per_minute": 61}, "per_minute")["code"] == "limit_above_allowed"
        assert refused("POST", "/api/v1/keys", {"models": ["zowy-9"]}, "models[0]")["code"] == "model_not_found"
        refused("POST", "/api/v1/keys", {"ips": ["10.0.0.1", "not-an-ip"]}, "ips[1]")
        refused("POST", "/api/v1/keys", {"expires_at": 1000}, "expires_at")
        refused("PATCH", f"/api/v1/keys/{made['id']}", {"token_cap": 0}, "token_cap")
        refused("PATCH", f"/api/v1/keys/{made['id']}", {"colour": "red"}, "colour")

        listed = h.get("/api/v1/keys", headers=owner.auth).json()["data"]
        assert {k["id"] for k in listed} == {owner.customer.key_id, made["id"]}
        assert all("key" not in k for k in listed)
        assert next(k for k in listed if k["id"] == made["id"])["used_tokens"] == 0

        r = h.patch(f"/api/v1/keys/{made['id']}", headers=owner.auth,
                    json={"name": "ci-2", "models": None, "expires_at": "2099-01-01T00:00:00Z"})
        assert r.status_code == 200 and r.json()["name"] == "ci-2" and r.json()["models"] is None
        assert r.json()["expires_at"] == 4070908800.0 and r.json()["token_cap"] == 1000
        # Another account's key does not exist for this owner.
        assert h.patch(f"/api/v1/keys/{other.customer.key_id}", headers=owner.auth, json={"name": "x"}).status_code == 404
        assert h.post(f"/api/v1/keys/{other.customer.key_id}/revoke", headers=owner.auth).status_code == 404

        r = h.post(f"/api/v1/keys/{owner.customer.key_id}/revoke", headers=owner.auth)
        assert r.status_code == 200 and r.json()["status"] == "revoked"
    support.wait_until(lambda: _refused(pair.first, owner.customer.key), timeout=5)

    with kit.admin(pair.first) as a:
        events = a.get("/admin/v1/audit", params={"account": owner.customer.account_id}).json()["data"]
    actor = f"owner:{events[0]['actor'].split(':', 1)[1]}"
    mine = [(e["action"], e["target"]) for e in events if e["actor"] == actor]
    assert ("key.create", made["id"]) in mine and ("key.revoke", owner.customer.key_id) in mine
    changed = next(e for e in events if e["action"] == "key.controls")
    assert changed["before"] == {"name": "ci", "models": ["zowy-1"], "expires_at": None}
    assert changed["after"] == {"name": "ci-2", "models": None, "expires_at": 4070908800.0}


def _refused(gateway, key: str) -> bool:
    with sdk_client(gateway, key) as client:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
    return False


def test_usage_ledger_pages_and_csv(pair):
    owner = kit.new_owner(pair.first, tokens=1_000_000)
    with http(pair.first) as h:
        second_key = h.post("/api/v1/keys", headers=owner.auth, json={"name": "second"}).json()
    sent = []
    for i, (gateway, key, model) in enumerate([
        (pair.first, owner.customer.key, "zowy-1"), (pair.second, owner.customer.key, "zowy-1-pro"),
        (pair.first, second_key["key"], "zowy-1"), (pair.second, second_key["key"], "zowy-1"),
        (pair.first, owner.customer.key, "zowy-1"),
    ]):
        with sdk_client(gateway, key) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"bill {i}"}], user="=HYPERLINK(\"x\")" if i == 0 else f"u{i}")
            sent.append(raw.headers["x-request-id"])
    support.wait_until(lambda: support.run_store(pair.first, lambda s: s.ledger_count(owner.customer.account_id)) == 5)

    with http(pair.second) as h:
        usage = h.get("/api/v1/usage", headers=owner.auth).json()
        assert usage["usage"]["total"]["requests"] == 5
        assert usage["remaining_tokens"] == 1_000_000 - usage["usage"]["total"]["total_tokens"]

        pages, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = h.get("/api/v1/ledger", headers=owner.auth, params=params).json()
            pages.append(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        seen = [e["request_id"] for page in pages for e in page]
        assert sorted(seen) == sorted(sent) and len(pages) == 3
        times = [e["created_at"] for page in pages for e in page]
        assert times == sorted(times, reverse=True)
        first = pages[0][0]
        assert set(first) >= {"request_id", "created_at", "key_id", "model", "total_tokens", "outcome", "status", "user"}
        assert "target" not in first and "debits" not in first

        by_key = h.get("/api/v1/ledger", headers=owner.auth, params={"key": second_key["id"]}).json()["data"]
        assert sorted(e["request_id"] for e in by_key) == sorted(sent[2:4])
        pro = h.get("/api/v1/ledger", headers=owner.auth, params={"model": "zowy-1-pro", "outcome": "ok"}).json()["data"]
        assert [e["request_id"] for e in pro] == [sent[1]]
        assert h.get("/api/v1/ledger", headers=owner.auth, params={"since": "2099-01-01"}).json()["data"] == []
        assert h.get("/api/v1/ledger", headers=owner.auth, params={"cursor": "garbage"}).json()["error"]["param"] == "cursor"
        assert h.get("/api/v1/ledger", headers=owner.auth, params={"limit": "0"}).json()["error"]["param"] == "limit"
        assert h.get("/api/v1/ledger", headers=owner.auth, params={"since": "yesterday"}).json()["error"]["param"] == "since"

        exported = h.get("/api/v1/ledger.csv", headers=owner.auth)
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert sorted(r["request_id"] for r in rows) == sorted(sent)
        first_request = next(r for r in rows if r["request_id"] == sent[0])
        assert first_request["user"].startswith("'=")  # never a live formula in a spreadsheet
        assert first_request["created_at"].endswith("+00:00")
        only = list(csv.DictReader(io.StringIO(h.get("/api/v1/ledger.csv", headers=owner.auth, params={"key": second_key["id"]}).text)))
        assert len(only) == 2
