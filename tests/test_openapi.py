"""The OpenAPI document agrees with the running routes and with the request validators."""
from __future__ import annotations

import json
import re
import uuid

import jsonschema
import pytest
from pydantic_core import ValidationError

from app.config import Settings
from app.openapi import UNDOCUMENTED, document
from app.schemas import ADMIN_SCHEMAS, _admin_validators, _chat_validator
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


def test_every_route_is_documented_and_every_documented_route_exists(settings, tmp_path):
    from sanic import Sanic

    from app.server import create_app

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
    from app.openapi import json_schema

    schema = json_schema(ADMIN_SCHEMAS[kind])
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is ok
    try:
        _admin_validators[kind].validate_python(value)
        validated = True
    except ValidationError:
        validated = False
    assert validated is ok
