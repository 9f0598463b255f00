"""The console over plain HTTP: its page and assets under a strict CSP, no markup built from data,
operators' session cookie in place of the admin token (CSRF, throttling, audit, tied to the token, on
both stores), the live-traffic summary, and demo mode's sign-in."""
from __future__ import annotations

import re
import uuid

import httpx2
import pytest

from app.http.console import CSP, STATIC
from tests import accounts_kit as kit
from tests import support
from tests.conftest import http, sdk_client
from tests.console.conftest import ENV, stop

ADMIN = {"Authorization": "Bearer admin-secret-token"}


def set_cookie(response: httpx2.Response, name: str) -> set[str]:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            return {part.strip().lower() for part in header.split(";")}
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def operator_sign_in(gateway, token: str = "admin-secret-token", ip: str | None = None, **headers) -> httpx2.Response:
    with http(gateway) as h:
        return h.post("/console/api/operator/session", json={"token": token},
                      headers={"X-Forwarded-For": ip or kit.fresh_ip(), **headers})


def test_page_and_assets_carry_strict_headers(console_gateway):
    with http(console_gateway) as h:
        page = h.get("/console")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CSP
        assert "script-src 'self';" in CSP and "unsafe" not in CSP and "frame-ancestors 'none'" in CSP
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-cache"
        again = h.get("/console", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

        script = h.get("/console/static/js/app.js")
        assert script.status_code == 200 and script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["content-security-policy"] == CSP and script.headers["cache-control"] == "no-cache"
        for path, got in (("/console", page), ("/console/static/js/app.js", script)):
            head = h.head(path)  # what a GET answers, without the body
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers["content-length"] == str(len(got.content)), path
            for name in ("content-type", "content-security-policy", "etag", "cache-control"):
                assert head.headers[name] == got.headers[name], (path, name)
        vendored = h.get("/console/static/vendor/uplot-1.6.32/uPlot.iife.min.js")
        assert vendored.status_code == 200 and "immutable" in vendored.headers["cache-control"]
        assert vendored.content.startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
        assert h.get("/console/static/vendor/uplot-1.6.32/LICENSE").text.startswith("The MIT License")

        for path in ("/console/static/nothing.js", "/console/static/index.html", "/console/static/%2e%2e/__init__.py",
                     "/console/static/..%2f..%2fconfig.py", "/console/static/vendor/../../__init__.py"):
            missing = h.get(path)
            assert missing.status_code == 404, path
            assert missing.json()["error"]["code"] == "not_found"


def test_no_inline_script_no_style_attributes_and_no_markup_from_data():
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in s for s in scripts)
    assert all(not body.strip() for body in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S))
    assert not re.search(r"\s(on\w+|style)=", html) and "<style" not in html
    for path in sorted((STATIC / "js").rglob("*.js")):
        code = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage"):
            assert sink not in code, f"{path.name} uses {sink}"
        assert ".setAttribute(\"style\"" not in code and "cssText" not in code, path.name


def test_config_names_models_plans_and_operator_sign_in(console_gateway):
    with http(console_gateway) as h:
        body = h.get("/console/api/config").json()
    assert body == {"models": ["zowy-1", "zowy-1-pro", "zowy-2"], "plans": {"pro": 2_000_000, "business": 10_000_000},
                    "operators": True, "demo": False}


def test_operator_session_stands_in_for_the_admin_token(console_gateway):
    gw = console_gateway
    ip = kit.fresh_ip()
    wrong = operator_sign_in(gw, "not-the-token", ip=ip)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_token"
    assert "set-cookie" not in wrong.headers

    signed = operator_sign_in(gw, ip=ip)
    assert signed.status_code == 201
    body = signed.json()
    assert set(body) == {"csrf_token", "expires_at"} and "admin-secret-token" not in signed.text
    session = set_cookie(signed, "zowy_operator")
    assert {"httponly", "path=/", "samesite=strict", "max-age=900"} <= session and "secure" not in session
    assert "httponly" not in set_cookie(signed, "zowy_operator_csrf")
    cookie = signed.cookies["zowy_operator"]
    assert cookie.startswith("zo-") and "admin-secret-token" not in cookie
    over_tls = operator_sign_in(gw, **{"X-Forwarded-Proto": "https"})
    assert "secure" in set_cookie(over_tls, "zowy_operator")

    with httpx2.Client(base_url=gw.url, cookies={"zowy_operator": cookie}, timeout=30) as browser:
        assert browser.get("/console/api/operator/session").json()["signed_in"] is True
        assert browser.get("/admin/v1/accounts").status_code == 200
        name = f"console-{uuid.uuid4().hex[:8]}"
        r = browser.post("/admin/v1/accounts", json={"name": name})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
        r = browser.post("/admin/v1/accounts", json={"name": name}, headers={"X-CSRF-Token": "0" * 32})
        assert r.status_code == 403
        r = browser.post("/admin/v1/accounts", json={"name": name}, headers={"X-CSRF-Token": body["csrf_token"]})
        assert r.status_code == 201
        # a wrong Authorization header is not rescued by the cookie; the cookie is no owner's session
        assert browser.get("/admin/v1/accounts", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert browser.get("/api/v1/account").status_code == 401
        assert browser.get("/metrics").status_code == 401
        assert browser.delete("/console/api/operator/session").status_code == 403
        out = browser.delete("/console/api/operator/session", headers={"X-CSRF-Token": body["csrf_token"]})
        assert out.status_code == 200 and "max-age=0" in set_cookie(out, "zowy_operator")
        browser.cookies.set("zowy_operator", cookie)
        assert browser.get("/admin/v1/accounts").status_code == 401  # ended on the server, not just in the browser
        assert browser.get("/console/api/operator/session").json()["error"]["code"] == "invalid_session"

    owner = kit.new_owner(gw)
    with httpx2.Client(base_url=gw.url, cookies={"zowy_session": owner.token}, timeout=30) as browser:
        assert browser.get("/admin/v1/accounts").status_code == 401  # an owner's session is no operator's
        assert browser.get("/console/api/operator/session").status_code == 401

    with http(gw) as h:
        events = h.get("/admin/v1/audit", params={"action": "operator.signin"}, headers=ADMIN).json()["data"]
        assert any(e["actor"] == "admin" and e["ip"] == ip for e in events)
        failed = h.get("/admin/v1/audit", params={"action": "operator.signin.failed"}, headers=ADMIN).json()["data"]
        assert any(e["ip"] == ip and e["actor"] == "anonymous" for e in failed)
        made = h.get("/admin/v1/audit", params={"action": "account.create"}, headers=ADMIN).json()["data"]
        assert any(e["after"] == {"name": name} and e["actor"] == "admin" for e in made)


def test_operator_sign_in_refuses_other_sites_and_is_throttled(console_gateway):
    gw = console_gateway
    cross = operator_sign_in(gw, **{"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_site_request"
    assert operator_sign_in(gw, **{"Sec-Fetch-Site": "same-origin"}).status_code == 201
    support.wait_for_window(60, need=10)
    ip = kit.fresh_ip()
    codes = [operator_sign_in(gw, "wrong-token", ip=ip).status_code for _ in range(5)]
    throttled = operator_sign_in(gw, ip=ip)  # even the right token waits out the minute
    assert codes == [401] * 5 and throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert operator_sign_in(gw).status_code == 201  # another address is not held back


def test_operators_are_throttled_as_an_account_is_without_being_locked_out(console_gateway):
    gw = console_gateway
    support.wait_for_window(60, need=15)
    guessers = [kit.fresh_ip() for _ in range(12)]  # past the operators' ceiling (ZOWY_SIGNIN_PER_MINUTE, 10)
    assert [operator_sign_in(gw, "wrong-token", ip=ip).status_code for ip in guessers] == [401] * 12
    held = operator_sign_in(gw, ip=guessers[0])  # an address that failed waits, even with the right token
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    assert operator_sign_in(gw).status_code == 201  # an address without failures gets in


def test_operator_sessions_end_when_the_admin_token_changes(console_gateway, models_path):
    signed = operator_sign_in(console_gateway)
    cookies = {"zowy_operator": signed.cookies["zowy_operator"]}
    rotated = support.start_gateway(console_gateway.data_dir, models_path, **{**ENV, "ZOWY_ADMIN_TOKEN": "a-new-admin-token"})
    try:
        with httpx2.Client(base_url=rotated.url, cookies=cookies, timeout=30) as browser:
            assert browser.get("/admin/v1/accounts").status_code == 401
        with httpx2.Client(base_url=console_gateway.url, cookies=cookies, timeout=30) as browser:
            assert browser.get("/admin/v1/accounts").status_code == 200  # the same store, the old token still set here
    finally:
        stop(rotated)


def test_traffic_sums_the_workers_counters_and_shows_breakers(console_gateway):
    gw = console_gateway
    with http(gw) as h:
        assert h.get("/admin/v1/traffic").status_code == 401
        before = h.get("/admin/v1/traffic", headers=ADMIN).json()
    customer = support.new_customer(gw)
    with sdk_client(gw, customer.key) as client:
        for i in range(12):
            client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=8)
        with pytest.raises(Exception):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])

    def grown():
        with http(gw) as h:
            now = h.get("/admin/v1/traffic", headers=ADMIN).json()
        return now if now["requests"] - before["requests"] >= 13 else None

    now = support.wait_until(grown, timeout=10)
    assert now["requests"] - before["requests"] == 13  # whichever of the two workers served them
    assert now["requests_by_status"]["200"] - before["requests_by_status"].get("200", 0) == 12
    assert now["requests_by_status"]["404"] - before["requests_by_status"].get("404", 0) == 1
    assert now["tokens"] > before["tokens"] and now["tokens"] == sum(now["tokens_by_kind"].values())
    assert now["latency_seconds"]["count"] >= 12 and now["at"] > before["at"]
    assert [b["target"] for b in now["breakers"]] == ["gemini-flash", "gemini-flash-lite", "gemini-pro", "gpt-mini"]
    assert {b["state"] for b in now["breakers"]} == {"closed"}
    assert now["ledger"] == {"queued": 0, "spool_bytes": 0}


def test_console_can_be_turned_off(tmp_path, models_path):
    from sanic import Sanic

    from app.core.config import Settings
    from app.http.openapi import document
    from app.http.app import create_app

    Sanic.test_mode = True
    settings = Settings.from_env({"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_MODELS_FILE": str(models_path), "ZOWY_DEMO": "off",
                                  "ZOWY_CONSOLE": "false", "ZOWY_ADMIN_TOKEN": "t"})
    app = create_app(settings, name=f"console_off_{uuid.uuid4().hex[:6]}")
    _, response = app.test_client.get("/console")
    assert response.status == 404
    _, response = app.test_client.get("/console/api/config")
    assert response.status == 404
    assert not [p for p in document(settings)["paths"] if p.startswith("/console")]


def test_demo_mode_prints_a_console_sign_in_that_works(tmp_path, models_path):
    env = {"ZOWY_DEMO": "on", "ZOWY_ADMIN_TOKEN": "", "ZOWY_SCRYPT_COST": "12"}
    seen = []
    for _ in range(2):  # the second start shows the same sign-in, kept in the data directory
        gw = support.start_gateway(tmp_path, models_path, **env)
        try:
            log = gw.process.log()
            url = re.search(r"Console: (\S+)", log).group(1)
            email, password = re.search(r"sign in as (\S+) with password (\S+)", log).groups()
            token = re.search(r"operators: admin token (\S+)", log).group(1)
            seen.append((email, password, token))
            assert url == f"{gw.url}/console"
            with http(gw) as h:
                assert h.get("/console").status_code == 200
                signed = h.post("/api/v1/auth/sessions", json={"email": email, "password": password})
                assert signed.status_code == 201
                balance = h.get("/api/v1/account", headers={"Authorization": f"Bearer {signed.json()['token']}"}).json()
                assert balance["account"]["name"] == "demo" and balance["active_package"]["plan"] == "pro"
                assert h.get("/admin/v1/accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
                assert h.post("/console/api/operator/session", json={"token": token}).status_code == 201
        finally:
            stop(gw)
    assert seen[0] == seen[1] and seen[0][0] == "demo@example.com"
    assert (tmp_path / "demo-owner").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "demo-admin-token").stat().st_mode & 0o777 == 0o600


def test_operator_sessions_live_in_mongodb_too(tmp_path, models_path, nx_server):
    env = {**ENV, "ZOWY_MONGO_URL": nx_server.url, "ZOWY_MONGO_DB": f"zowy_{uuid.uuid4().hex[:10]}"}
    first = support.start_gateway(tmp_path / "first", models_path, **env)
    second = support.start_gateway(tmp_path / "second", models_path, **env)
    try:
        signed = operator_sign_in(first)
        assert signed.status_code == 201
        csrf = {"X-CSRF-Token": signed.json()["csrf_token"]}
        with httpx2.Client(base_url=second.url, cookies={"zowy_operator": signed.cookies["zowy_operator"]}, timeout=30) as browser:
            assert browser.post("/admin/v1/accounts", json={"name": f"mongo-{uuid.uuid4().hex[:6]}"}, headers=csrf).status_code == 201
            assert browser.delete("/console/api/operator/session", headers=csrf).status_code == 200
        with httpx2.Client(base_url=first.url, cookies={"zowy_operator": signed.cookies["zowy_operator"]}, timeout=30) as browser:
            assert browser.get("/admin/v1/accounts").status_code == 401  # signed out on one instance, gone on the other
    finally:
        stop(second)
        stop(first)
