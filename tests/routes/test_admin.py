"""The operator API: accounts, keys, packages, usage and reconcile, behind the admin token."""
from __future__ import annotations

import time
import uuid

import openai
import pytest

from tests import support
from tests.conftest import http, sdk_client


@pytest.fixture
def admin(gateway):
    with http(gateway) as h:
        h.headers["Authorization"] = f"Bearer {gateway.admin_token}"
        yield h


def test_admin_needs_the_token(gateway):
    with http(gateway) as h:
        assert h.get("/admin/v1/accounts").status_code == 401
        r = h.get("/admin/v1/accounts", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"


def test_account_key_package_lifecycle(gateway, admin):
    name = f"acme-{uuid.uuid4().hex[:8]}"
    r = admin.post("/admin/v1/accounts", json={"name": name})
    assert r.status_code == 201
    account = r.json()
    assert admin.post("/admin/v1/accounts", json={"name": name}).status_code == 409
    assert admin.post("/admin/v1/accounts", json={"name": ""}).json()["error"]["param"] == "name"
    assert any(a["name"] == name for a in admin.get("/admin/v1/accounts").json()["data"])

    r = admin.post(f"/admin/v1/accounts/{name}/keys", json={"per_minute": 5})
    assert r.status_code == 201
    key = r.json()
    assert key["key"].startswith("zk-") and key["per_minute"] == 5 and key["account_id"] == account["id"]
    listed = admin.get(f"/admin/v1/accounts/{account['id']}/keys").json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]

    with sdk_client(gateway, key["key"]) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 402

        r = admin.post(f"/admin/v1/accounts/{name}/packages", json={"plan": "business"})
        assert r.status_code == 201 and r.json()["tokens"] == 10_000_000
        assert admin.post(f"/admin/v1/accounts/{name}/packages", json={"plan": "gold"}).json()["error"]["param"] == "plan"
        time.sleep(0.3)
        r = client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
        spent = r.usage.total_tokens

        support.wait_until(lambda: admin.get(f"/admin/v1/accounts/{name}/usage").json()["total"]["requests"] == 1)
        usage = admin.get(f"/admin/v1/accounts/{name}/usage").json()
        assert usage["total"]["total_tokens"] == spent
        assert usage["by_model"] == [{"model": "zowy-1", "requests": 1, "prompt_tokens": r.usage.prompt_tokens,
                                      "completion_tokens": r.usage.completion_tokens, "total_tokens": spent, "errors": 0}]
        assert len(usage["by_day"]) == 1
        assert usage["by_day_model"] == [{"day": usage["by_day"][0]["day"], **usage["by_model"][0]}]
        balance = admin.get(f"/admin/v1/accounts/{name}/packages").json()
        assert balance["remaining_tokens"] == 10_000_000 - spent

        r = admin.put(f"/admin/v1/keys/{key['id']}/limits", json={"per_minute": 1000, "per_hour": None})
        assert r.status_code == 200
        assert admin.put("/admin/v1/keys/key_missing/limits", json={"per_minute": 1}).status_code == 404
        assert admin.put(f"/admin/v1/keys/{key['id']}/limits", json={"per_minute": 0}).json()["error"]["param"] == "per_minute"

        assert admin.post(f"/admin/v1/keys/{key['id']}/revoke").status_code == 200
        time.sleep(0.7)  # the key cache lives 0.5 s in tests
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hi"}])
    assert admin.post("/admin/v1/keys/key_missing/revoke").status_code == 404
    assert admin.get("/admin/v1/accounts/no-such-account").status_code == 404


def test_reconcile_endpoint(admin):
    r = admin.get("/admin/v1/reconcile")
    assert r.status_code == 200 and r.json()["mismatches"] == []


def test_admin_api_off_without_token(tmp_path, models_path):
    from sanic import Sanic

    from app.core.config import Settings
    from app.http.app import create_app

    Sanic.test_mode = True
    settings = Settings.from_env({"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_MODELS_FILE": str(models_path), "ZOWY_DEMO": "off"})
    app = create_app(settings, name=f"admin_off_{uuid.uuid4().hex[:6]}")
    _, response = app.test_client.get("/admin/v1/accounts", headers={"Authorization": "Bearer anything"})
    assert response.status == 403
    assert response.json["error"]["code"] == "admin_disabled"
