"""The OpenAPI document agrees with the running routes and with the request validators."""
from __future__ import annotations

import json
import re
import uuid

import jsonschema
import orjson
import pytest
from pydantic_core import ValidationError

from app.core.config import Settings
from app.http.openapi import UNDOCUMENTED, document
from app.wire.bodies import ADMIN_SCHEMAS, _admin_validators
from app.wire.chat import _chat_validator
from tests import accounts_kit as kit
from tests import support
from tests.conftest import http
from tests.unit.test_schemas import ACCEPTED, REJECTED, body


@pytest.fixture(scope="module")
def settings(models_path) -> Settings:
    return Settings.from_env({"ZOWY_MODELS_FILE": str(models_path), "ZOWY_DEMO": "off"})


def test_served_document_is_the_generated_one(gateway):
    with http(gateway) as h:
        served = h.get("/openapi.json").json()
    assert served == json.loads(json.dumps(document(gateway.settings())))
    jsonschema.Draft202012Validator.check_schema(served["components"]["schemas"]["ChatCompletionRequest"])
    jsonschema.Draft202012Validator.check_schema(served["components"]["schemas"]["ResponsesRequest"])


def test_every_route_is_documented_and_every_documented_route_exists(settings, tmp_path):
    from sanic import Sanic

    from app.http.app import create_app

    Sanic.test_mode = True
    app = create_app(settings.with_(data_dir=tmp_path), name=f"openapi_{uuid.uuid4().hex[:6]}")
    routes = set()
    for route in app.router.routes:
        path = "/" + re.sub(r"<(\w+)(:\w+)?>", r"{\1}", route.path).lstrip("/")
        for method in route.methods:
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in document(settings)["paths"].items() for method in ops}
    assert {path for path, _ in routes} >= UNDOCUMENTED
    assert {r for r in routes if r[0] not in UNDOCUMENTED} == documented


def structurally_valid(raw: bytes) -> bool:
    try:
        _chat_validator.validate_json(raw)
        return True
    except ValidationError:
        return False


@pytest.mark.parametrize("raw", [body(**fields) for fields in ACCEPTED] + [raw for raw, _, _ in REJECTED])
def test_chat_schema_agrees_with_the_validator(settings, raw):
    schema = document(settings)["components"]["schemas"]["ChatCompletionRequest"]
    try:
        doc = json.loads(raw)
    except ValueError:
        return  # not JSON at all: nothing for a schema to say
    doc_valid = jsonschema.Draft202012Validator(schema).is_valid(doc)
    assert doc_valid == structurally_valid(raw), raw[:200]


@pytest.mark.parametrize("kind, value, ok", [
    ("account", {"name": "acme"}, True), ("account", {"name": ""}, False), ("account", {}, False),
    ("key", {}, True), ("key", {"per_minute": 5, "per_hour": None}, True), ("key", {"per_minute": 0}, False),
    ("limits", {"per_hour": "5"}, False), ("package", {"plan": "pro", "tokens": 10, "days": 3}, True),
    ("package", {"plan": "pro", "extra": 1}, False), ("package", {"tokens": 5}, False),
])
def test_admin_schemas_agree_with_the_validators(kind, value, ok):
    from app.http.openapi import json_schema

    schema = json_schema(ADMIN_SCHEMAS[kind])
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is ok
    try:
        _admin_validators[kind].validate_python(value)
        validated = True
    except ValidationError:
        validated = False
    assert validated is ok


# The statuses the document declares, against what the server answers: every operation is driven
# (success, missing and wrong credentials, bad bodies and queries, unknown ids, conflicts, limits,
# failing upstreams, oversized bodies and headers) and each answer's status must be declared for it;
# each operation's declared success status is the one it answered.

_LIMITS = {"ZOWY_MAX_BODY_BYTES": "20000", "ZOWY_MAX_HEADER_BYTES": "2048", "ZOWY_REDEEM_PER_MINUTE": "4",
           "ZOWY_SIGNIN_IP_PER_MINUTE": "5"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, models_path):
    gateway = support.start_gateway(tmp_path_factory.mktemp("openapi"), models_path, **kit.ENV, **_LIMITS)
    yield gateway
    gateway.stop()


class Answers:
    """Statuses seen per documented operation."""

    def __init__(self, client, paths: dict) -> None:
        self.client = client
        self.operations = [(template, method) for template, ops in paths.items() for method in ops]
        self.seen: dict[tuple[str, str], dict[int, str]] = {op: {} for op in self.operations}

    def operation(self, method: str, path: str) -> tuple[str, str]:
        bare = path.split("?", 1)[0]
        for template, verb in self.operations:
            pattern = "^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template)) + "$"
            if verb == method.lower() and re.match(pattern, bare):
                return template, verb
        raise AssertionError(f"{method} {path} is not a documented operation")

    def __call__(self, method: str, path: str, expect: int | None = None, **kwargs):
        response = self.client.request(method, path, **kwargs)
        self.client.cookies.clear()  # each call sends what it names, no cookie from an earlier answer
        if expect is not None:
            assert response.status_code == expect, (method, path, response.status_code, response.text[:300])
        self.seen[self.operation(method, path)].setdefault(response.status_code, response.text[:200])
        return response


def test_every_status_served_is_declared(served):
    gateway = served
    doc = document(gateway.settings())
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    owner = kit.new_owner(gateway)
    broke = support.new_customer(gateway, tokens=None)
    slow = support.new_customer(gateway, per_minute=1)
    fenced = support.new_customer(gateway)
    hi = [{"role": "user", "content": "hi"}]
    with http(gateway) as h:
        call = Answers(h, doc["paths"])
        account, key_id = owner.customer.account_id, owner.customer.key_id
        key = {"Authorization": f"Bearer {owner.customer.key}"}

        # the public API
        for prefix in ("/api/v1", "/v1"):
            chat = f"{prefix}/chat/completions"
            call("POST", chat, 200, headers=key, json={"model": "zowy-1", "messages": hi})
            call("POST", chat, 200, headers=key, json={"model": "zowy-1", "messages": hi, "stream": True})
            call("POST", chat, 401, json={"model": "zowy-1", "messages": hi})
            call("POST", chat, 400, headers=key, json={"model": "zowy-1", "messages": hi, "temperature": 9})
            call("POST", chat, 400, headers=key, content=b"{not json")
            call("POST", chat, 404, headers=key, json={"model": "no-such-model", "messages": hi})
            call("POST", chat, 402, headers={"Authorization": f"Bearer {broke.key}"}, json={"model": "zowy-1", "messages": hi})
            for status in (500, 503, 429, 400):
                content = f"hi [[fake:status={status}]]"
                call("POST", chat, headers=key, json={"model": "zowy-1-pro", "messages": [{"role": "user", "content": content}]})
            responses = f"{prefix}/responses"
            made = call("POST", responses, 200, headers=key, json={"model": "zowy-1", "input": "hi"}).json()["id"]
            call("POST", responses, 200, headers=key, json={"model": "zowy-1", "input": "hi", "stream": True})
            call("POST", responses, 401, json={"model": "zowy-1", "input": "hi"})
            call("POST", responses, 400, headers=key, json={"model": "zowy-1", "input": [{"type": "bogus"}]})
            call("POST", responses, 400, headers=key, json={"model": "no-such-model", "input": "hi"})
            call("POST", responses, 402, headers={"Authorization": f"Bearer {broke.key}"}, json={"model": "zowy-1", "input": "hi"})
            for status in (500, 503, 429, 400):
                call("POST", responses, headers=key, json={"model": "zowy-1-pro", "input": f"hi [[fake:status={status}]]"})
            call("GET", f"{responses}/{made}", 200, headers=key)
            call("GET", f"{responses}/{made}", 401)
            call("GET", f"{responses}/resp_nobody", 404, headers=key)
            call("GET", f"{responses}/{made}/input_items", 200, headers=key)
            call("GET", f"{responses}/{made}/input_items?limit=0", 400, headers=key)
            call("GET", f"{responses}/resp_nobody/input_items", 404, headers=key)
            call("GET", f"{responses}/{made}/input_items", 401)
            call("DELETE", f"{responses}/{made}", 200, headers=key)
            call("DELETE", f"{responses}/{made}", 404, headers=key)
            call("DELETE", f"{responses}/{made}", 401)
            call("GET", f"{prefix}/models", 200, headers=key)
            call("GET", f"{prefix}/models", 401)
            call("GET", f"{prefix}/models/zowy-1", 200, headers=key)
            call("GET", f"{prefix}/models/no-such-model", 404, headers=key)
            call("GET", f"{prefix}/models/zowy-1", 401, headers={"Authorization": "Bearer zk-wrong"})
            call("GET", f"{prefix}/usage", 200, headers=key)
            call("GET", f"{prefix}/usage", 200, headers=owner.auth)
            call("GET", f"{prefix}/usage", 401)
            call("GET", f"{prefix}/usage?since=yesterday", 400, headers=key)
        slow_key = {"Authorization": f"Bearer {slow.key}"}
        call("POST", "/api/v1/chat/completions", 200, headers=slow_key, json={"model": "zowy-1", "messages": hi})
        call("POST", "/api/v1/chat/completions", 429, headers=slow_key, json={"model": "zowy-1", "messages": hi})
        with kit.admin(gateway) as a:
            assert a.patch(f"/admin/v1/keys/{fenced.key_id}", json={"ips": ["10.9.9.9"]}).status_code == 200
        fenced_key = {"Authorization": f"Bearer {fenced.key}"}
        support.wait_until(lambda: h.get("/api/v1/models", headers=fenced_key).status_code == 403, timeout=5)
        call("POST", "/api/v1/chat/completions", 403, headers=fenced_key, json={"model": "zowy-1", "messages": hi})
        call("GET", "/api/v1/models", 403, headers=fenced_key)
        call("GET", "/api/v1/models/zowy-1", 403, headers=fenced_key)
        call("GET", "/api/v1/usage", 403, headers=fenced_key)
        call("POST", "/api/v1/responses", 403, headers=fenced_key, json={"model": "zowy-1", "input": "hi"})
        call("GET", "/api/v1/responses/resp_x", 403, headers=fenced_key)
        call("DELETE", "/api/v1/responses/resp_x", 403, headers=fenced_key)
        call("GET", "/api/v1/responses/resp_x/input_items", 403, headers=fenced_key)
        call("POST", "/api/v1/responses", 429, headers=slow_key, json={"model": "zowy-1", "input": "hi"})

        # operations
        call("GET", "/healthz", 200)
        call("GET", "/readyz", 200)
        call("GET", "/openapi.json", 200)
        call("GET", "/metrics", 200, headers=admin)
        call("GET", "/metrics", 401)

        # the admin API
        name = f"openapi-{uuid.uuid4().hex[:8]}"
        other = call("POST", "/admin/v1/accounts", 201, headers=admin, json={"name": name}).json()["id"]
        call("POST", "/admin/v1/accounts", 409, headers=admin, json={"name": name})
        call("POST", "/admin/v1/accounts", 400, headers=admin, json={"name": ""})
        call("POST", "/admin/v1/accounts", 401, json={"name": "x"})
        call("POST", "/admin/v1/accounts", 401, headers={"Authorization": "Bearer wrong"}, json={"name": "x"})
        call("GET", "/admin/v1/accounts", 200, headers=admin)
        call("GET", "/admin/v1/accounts", 401)
        for sub in ("", "/keys", "/packages", "/usage", "/owners", "/alerts"):
            call("GET", f"/admin/v1/accounts/{other}{sub}", 200, headers=admin)
            call("GET", f"/admin/v1/accounts/acct_nobody{sub}", 404, headers=admin)
            call("GET", f"/admin/v1/accounts/{other}{sub}", 401)
        call("GET", f"/admin/v1/accounts/{other}/usage?until=never", 400, headers=admin)
        made = call("POST", f"/admin/v1/accounts/{other}/keys", 201, headers=admin, json={"per_minute": 5}).json()
        call("POST", f"/admin/v1/accounts/{other}/keys", 400, headers=admin, json={"per_minute": 0})
        call("POST", "/admin/v1/accounts/acct_nobody/keys", 404, headers=admin, json={})
        call("POST", f"/admin/v1/accounts/{other}/keys", 401, json={})
        call("PUT", f"/admin/v1/keys/{made['id']}/limits", 200, headers=admin, json={"per_minute": 7})
        call("PUT", f"/admin/v1/keys/{made['id']}/limits", 400, headers=admin, json={"per_minute": "7"})
        call("PUT", "/admin/v1/keys/key_nobody/limits", 404, headers=admin, json={"per_minute": 7})
        call("PUT", f"/admin/v1/keys/{made['id']}/limits", 401, json={})
        call("PATCH", f"/admin/v1/keys/{made['id']}", 200, headers=admin, json={"name": "renamed"})
        call("PATCH", f"/admin/v1/keys/{made['id']}", 400, headers=admin, json={"token_cap": 0})
        call("PATCH", "/admin/v1/keys/key_nobody", 404, headers=admin, json={"name": "x"})
        call("PATCH", f"/admin/v1/keys/{made['id']}", 401, json={})
        call("POST", f"/admin/v1/keys/{made['id']}/revoke", 200, headers=admin)
        call("POST", "/admin/v1/keys/key_nobody/revoke", 404, headers=admin)
        call("POST", f"/admin/v1/keys/{made['id']}/revoke", 401)
        call("POST", f"/admin/v1/accounts/{other}/packages", 201, headers=admin, json={"plan": "pro"})
        call("POST", f"/admin/v1/accounts/{other}/packages", 400, headers=admin, json={"plan": "gold"})
        call("POST", "/admin/v1/accounts/acct_nobody/packages", 404, headers=admin, json={"plan": "pro"})
        call("POST", f"/admin/v1/accounts/{other}/packages", 401, json={"plan": "pro"})
        email = f"o-{uuid.uuid4().hex[:8]}@example.com"
        call("POST", f"/admin/v1/accounts/{other}/owners", 201, headers=admin, json={"email": email, "password": kit.PASSWORD})
        call("POST", f"/admin/v1/accounts/{other}/owners", 409, headers=admin, json={"email": email, "password": kit.PASSWORD})
        call("POST", f"/admin/v1/accounts/{other}/owners", 400, headers=admin, json={"email": "nobody", "password": "x"})
        call("POST", "/admin/v1/accounts/acct_nobody/owners", 404, headers=admin, json={"email": "a@b.co", "password": kit.PASSWORD})
        call("POST", f"/admin/v1/accounts/{other}/owners", 401, json={})
        invited = f"i-{uuid.uuid4().hex[:8]}@example.com"
        token = call("POST", f"/admin/v1/accounts/{other}/invites", 201, headers=admin, json={"email": invited}).json()["token"]
        call("POST", f"/admin/v1/accounts/{other}/invites", 409, headers=admin, json={"email": email})
        call("POST", f"/admin/v1/accounts/{other}/invites", 400, headers=admin, json={"email": "nobody"})
        call("POST", "/admin/v1/accounts/acct_nobody/invites", 404, headers=admin, json={"email": "a@b.co"})
        call("POST", f"/admin/v1/accounts/{other}/invites", 401, json={})
        batch = call("POST", "/admin/v1/codes", 201, headers=admin, json={"plan": "pro", "count": 2}).json()
        call("POST", "/admin/v1/codes", 400, headers=admin, json={"plan": "pro", "count": 0})
        call("POST", "/admin/v1/codes", 401, json={})
        call("GET", f"/admin/v1/codes/{batch['batch_id']}", 200, headers=admin)
        call("GET", "/admin/v1/codes/batch_nobody", 404, headers=admin)
        call("GET", f"/admin/v1/codes/{batch['batch_id']}", 401)
        call("PUT", f"/admin/v1/accounts/{other}/alerts", 200, headers=admin, json={"url": None})
        call("PUT", f"/admin/v1/accounts/{other}/alerts", 400, headers=admin, json={"url": "ftp://x"})
        call("PUT", "/admin/v1/accounts/acct_nobody/alerts", 404, headers=admin, json={"url": None})
        call("PUT", f"/admin/v1/accounts/{other}/alerts", 401, json={})
        call("GET", "/admin/v1/reconcile", 200, headers=admin)
        call("GET", "/admin/v1/reconcile", 401)
        call("GET", "/admin/v1/traffic", 200, headers=admin)
        call("GET", "/admin/v1/traffic", 401)
        call("GET", f"/admin/v1/audit?account={other}", 200, headers=admin)
        call("GET", "/admin/v1/audit?account=acct_nobody", 404, headers=admin)
        call("GET", "/admin/v1/audit?limit=0", 400, headers=admin)
        call("GET", "/admin/v1/audit", 401)

        # the customer API
        call("POST", "/api/v1/auth/invite/accept", 201, json={"token": token, "password": kit.PASSWORD})
        call("POST", "/api/v1/auth/invite/accept", 404, json={"token": token, "password": kit.PASSWORD})
        call("POST", "/api/v1/auth/invite/accept", 400, json={"token": token})
        ip = {"X-Forwarded-For": kit.fresh_ip()}
        session = call("POST", "/api/v1/auth/sessions", 201, headers=ip, json={"email": email, "password": kit.PASSWORD})
        cookie = {"Cookie": f"zowy_session={session.json()['token']}"}
        call("POST", "/api/v1/auth/sessions", 400, headers=ip, json={"email": email})
        for _ in range(7):  # throttled (429) on the way
            call("POST", "/api/v1/auth/sessions", headers=ip, json={"email": email, "password": "wrong password 123"})
        for path in ("/api/v1/account", "/api/v1/account/alerts", "/api/v1/keys", "/api/v1/ledger", "/api/v1/ledger.csv"):
            call("GET", path, 200, headers=owner.auth)
            call("GET", path, 200, headers=cookie)
            call("GET", path, 401)
            call("GET", path, 401, headers={"Authorization": "Bearer zs-wrong"})
        call("GET", "/api/v1/ledger?cursor=nonsense", 400, headers=owner.auth)
        call("GET", "/api/v1/ledger.csv?since=nonsense", 400, headers=owner.auth)
        call("PUT", "/api/v1/account/alerts", 200, headers=owner.auth, json={"url": None})
        call("PUT", "/api/v1/account/alerts", 400, headers=owner.auth, json={"url": "ftp://x"})
        call("PUT", "/api/v1/account/alerts", 401, json={"url": None})
        call("PUT", "/api/v1/account/alerts", 403, headers=cookie, json={"url": None})
        own = call("POST", "/api/v1/keys", 201, headers=owner.auth, json={"name": "mine"}).json()
        call("POST", "/api/v1/keys", 400, headers=owner.auth, json={"per_minute": 0})
        call("POST", "/api/v1/keys", 401, json={})
        call("POST", "/api/v1/keys", 403, headers=cookie, json={})
        call("PATCH", f"/api/v1/keys/{own['id']}", 200, headers=owner.auth, json={"name": "ours"})
        call("PATCH", f"/api/v1/keys/{own['id']}", 400, headers=owner.auth, json={"token_cap": -1})
        call("PATCH", f"/api/v1/keys/{key_id}", 404, headers=cookie | {"X-CSRF-Token": session.json()["csrf_token"]}, json={})
        call("PATCH", f"/api/v1/keys/{own['id']}", 401, json={})
        call("PATCH", f"/api/v1/keys/{own['id']}", 403, headers=cookie, json={})
        call("POST", f"/api/v1/keys/{own['id']}/revoke", 200, headers=owner.auth)
        call("POST", "/api/v1/keys/key_nobody/revoke", 404, headers=owner.auth)
        call("POST", f"/api/v1/keys/{own['id']}/revoke", 401)
        call("POST", f"/api/v1/keys/{own['id']}/revoke", 403, headers=cookie)
        code = batch["codes"][0]
        call("POST", "/api/v1/redeem", 201, headers=owner.auth, json={"code": code})
        call("POST", "/api/v1/redeem", 409, headers=owner.auth, json={"code": code})
        call("POST", "/api/v1/redeem", 404, headers=owner.auth, json={"code": "ZOWY-AAAAA-AAAAA-AAAAA-AAAAA"})
        call("POST", "/api/v1/redeem", 400, headers=owner.auth, json={"code": "nonsense"})
        call("POST", "/api/v1/redeem", 401, json={"code": code})
        call("POST", "/api/v1/redeem", 403, headers=cookie, json={"code": code})
        for _ in range(int(_LIMITS["ZOWY_REDEEM_PER_MINUTE"])):
            call("POST", "/api/v1/redeem", headers=owner.auth, json={"code": code})
        call("POST", "/api/v1/redeem", 429, headers=owner.auth, json={"code": code})
        call("DELETE", "/api/v1/auth/sessions/current", 401)
        call("DELETE", "/api/v1/auth/sessions/current", 403, headers=cookie)
        call("DELETE", "/api/v1/auth/sessions/current", 200, headers=cookie | {"X-CSRF-Token": session.json()["csrf_token"]})

        # the console
        call("GET", "/console/api/config", 200)
        signin = "/console/api/operator/session"
        operator = call("POST", signin, 201, headers={"X-Forwarded-For": kit.fresh_ip()}, json={"token": gateway.admin_token})
        jar = {"Cookie": f"zowy_operator={operator.cookies['zowy_operator']}"}
        call("POST", signin, 400, headers={"X-Forwarded-For": kit.fresh_ip()}, json={})
        call("POST", signin, 403, headers={"Sec-Fetch-Site": "cross-site"}, json={"token": gateway.admin_token})
        ip = {"X-Forwarded-For": kit.fresh_ip()}
        for _ in range(7):  # throttled (429) on the way
            call("POST", signin, headers=ip, json={"token": "wrong"})
        call("GET", signin, 200, headers=jar)
        call("GET", signin, 401)
        call("DELETE", signin, 401)
        call("DELETE", signin, 403, headers=jar)
        call("DELETE", signin, 200, headers=jar | {"X-CSRF-Token": operator.json()["csrf_token"]})

        # the top-up webhook
        event = orjson.dumps({"event_id": uuid.uuid4().hex, "account": account, "plan": "pro"})
        call("POST", "/webhooks/topup", 200, content=event, headers=kit.signed(event))
        call("POST", "/webhooks/topup", 200, content=event, headers=kit.signed(event))
        call("POST", "/webhooks/topup", 401, content=event, headers=kit.signed(event, secret="not the secret"))
        unknown = orjson.dumps({"event_id": uuid.uuid4().hex, "account": "acct_nobody", "plan": "pro"})
        call("POST", "/webhooks/topup", 404, content=unknown, headers=kit.signed(unknown))
        bad = orjson.dumps({"event_id": uuid.uuid4().hex})
        call("POST", "/webhooks/topup", 400, content=bad, headers=kit.signed(bad))

        # what any request can meet: a body or headers over the limits
        for template, method in call.operations:
            path = re.sub(r"\{\w+\}", "x", template)
            close = {"Connection": "close"}  # a GET whose body is not read closes its connection
            call(method.upper(), path, headers=close | {"Content-Length": "30000"}, content=b"x" * 30000)
            call(method.upper(), path, 431, headers=close | {"X-Padding": "p" * 3000})

    undeclared, unseen = [], []
    for (template, method), statuses in call.seen.items():
        declared = {int(s) for s in doc["paths"][template][method]["responses"]}
        for status, text in sorted(statuses.items()):
            if status not in declared:
                undeclared.append(f"{method.upper()} {template} answered {status}, not declared: {text}")
        successes = {s for s in declared if s < 300}
        if successes != {s for s in statuses if s < 300}:
            unseen.append(f"{method.upper()} {template} declares success {sorted(successes)}, answered {sorted(statuses)}")
    assert not undeclared, "\n".join(undeclared)
    assert not unseen, "\n".join(unseen)

