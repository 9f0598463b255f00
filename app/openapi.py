"""The OpenAPI 3.1 document of the public and admin API, generated from the request validators so
the two cannot drift apart."""
from __future__ import annotations

from typing import Any

from .config import Settings
from .schemas import ADMIN_SCHEMAS, CHAT_REQUEST_SCHEMA


def json_schema(core: dict) -> dict[str, Any]:
    """A pydantic-core schema as JSON Schema (the subset of types the validators use)."""
    kind = core["type"]
    if kind == "function-before":
        return json_schema(core["schema"])
    if kind == "typed-dict":
        fields = core["fields"]
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: json_schema(f["schema"]) for name, f in fields.items()},
        }
        required = [name for name, f in fields.items() if f.get("required", True)]
        if required:
            out["required"] = required
        if core.get("extra_behavior") == "forbid":
            out["additionalProperties"] = False
        return out
    if kind == "list":
        out = {"type": "array", "items": json_schema(core["items_schema"]) if "items_schema" in core else {}}
        _copy(core, out, min_length="minItems", max_length="maxItems")
        return out
    if kind == "dict":
        out = {"type": "object", "additionalProperties": json_schema(core["values_schema"])}
        keys = core.get("keys_schema")
        if keys and keys.get("pattern"):
            out["propertyNames"] = {"pattern": keys["pattern"]}
        _copy(core, out, max_length="maxProperties")
        return out
    if kind == "str":
        out = {"type": "string"}
        _copy(core, out, min_length="minLength", max_length="maxLength", pattern="pattern")
        return out
    if kind in ("int", "float"):
        out = {"type": "integer" if kind == "int" else "number"}
        _copy(core, out, ge="minimum", le="maximum")
        return out
    if kind == "bool":
        return {"type": "boolean"}
    if kind == "literal":
        return {"enum": list(core["expected"])}
    if kind == "nullable":
        return {"anyOf": [json_schema(core["schema"]), {"type": "null"}]}
    if kind == "union":
        return {"anyOf": [json_schema(c[0] if isinstance(c, tuple) else c) for c in core["choices"]]}
    if kind == "tagged-union":
        return {"oneOf": [json_schema(c) for c in core["choices"].values()]}
    if kind == "any":
        return {}
    raise ValueError(f"no JSON Schema for core schema type {kind!r}")


def _copy(core: dict, out: dict, **names: str) -> None:
    for ours, theirs in names.items():
        if core.get(ours) is not None:
            out[theirs] = core[ours]


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_JSON = "application/json"


def _responses(ok: str, *errors: int, stream: bool = False) -> dict:
    content: dict[str, Any] = {_JSON: {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string", "description": "data: {chat.completion.chunk} events, then data: [DONE]"}}
    out = {"200": {"description": ok, "content": content}}
    for status in errors:
        out[str(status)] = {"description": "error", "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def _body(name: str) -> dict:
    return {"required": True, "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(operation_id: str, summary: str, responses: dict, *, body: str | None = None, admin: bool = False,
        public: bool = False, params: list[str] = ()) -> dict:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if body:
        op["requestBody"] = _body(body)
    if public:
        op["security"] = []
    elif admin:
        op["security"] = [{"admin": []}]
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    return op


def document(settings: Settings) -> dict:
    """The whole document; the chat request's model field lists this deployment's public models."""
    chat_request = json_schema(CHAT_REQUEST_SCHEMA)
    chat_request["properties"]["model"] = {"type": "string", "enum": list(settings.models)}
    paths: dict[str, dict] = {}
    for prefix, suffix in (("/api/v1", ""), ("/v1", "_v1")):
        paths[f"{prefix}/chat/completions"] = {"post": _op(
            f"createChatCompletion{suffix}", "Create a chat completion (stream: true for SSE)",
            _responses("a chat.completion, or an SSE stream of chat.completion.chunk", 400, 401, 402, 404, 408, 413, 429, 500, 502, 503, 504, stream=True),
            body="ChatCompletionRequest")}
        paths[f"{prefix}/models"] = {"get": _op(f"listModels{suffix}", "List the public models", _responses("a list of models", 401))}
        paths[f"{prefix}/models/{{model_id}}"] = {"get": _op(
            f"retrieveModel{suffix}", "Retrieve a public model", _responses("a model", 401, 404), params=["model_id"])}
        paths[f"{prefix}/usage"] = {"get": _op(f"getUsage{suffix}", "The caller's balance and usage", _responses("balance and usage", 401))}
    paths["/healthz"] = {"get": _op("healthz", "The process answers", _responses("ok"), public=True)}
    paths["/readyz"] = {"get": _op("readyz", "Ready to serve (details with the admin token)", _responses("ready", 503), public=True)}
    paths["/metrics"] = {"get": _op("metrics", "Prometheus metrics", _responses("text exposition format", 401, 404), admin=True)}
    paths["/openapi.json"] = {"get": _op("openapi", "This document", _responses("OpenAPI 3.1"), public=True)}
    admin = "/admin/v1"
    paths[f"{admin}/accounts"] = {
        "post": _op("createAccount", "Create an account", _responses("the account", 400, 401, 403, 409), body="AdminAccount", admin=True),
        "get": _op("listAccounts", "List accounts", _responses("accounts", 401, 403), admin=True),
    }
    paths[f"{admin}/accounts/{{account}}"] = {"get": _op(
        "getAccount", "An account's balance and packages", _responses("balance", 401, 403, 404), admin=True, params=["account"])}
    paths[f"{admin}/accounts/{{account}}/keys"] = {
        "post": _op("createKey", "Create a key (returned once)", _responses("the key", 400, 401, 403, 404), body="AdminKey", admin=True, params=["account"]),
        "get": _op("listKeys", "List an account's keys", _responses("keys", 401, 403, 404), admin=True, params=["account"]),
    }
    paths[f"{admin}/keys/{{key_id}}/revoke"] = {"post": _op(
        "revokeKey", "Revoke a key", _responses("revoked", 401, 403, 404), admin=True, params=["key_id"])}
    paths[f"{admin}/keys/{{key_id}}/limits"] = {"put": _op(
        "setKeyLimits", "Override a key's rate limits", _responses("limits", 400, 401, 403, 404), body="AdminLimits", admin=True, params=["key_id"])}
    paths[f"{admin}/accounts/{{account}}/packages"] = {
        "post": _op("grantPackage", "Grant a token package", _responses("the package", 400, 401, 403, 404), body="AdminPackage", admin=True, params=["account"]),
        "get": _op("listPackages", "An account's packages", _responses("packages", 401, 403, 404), admin=True, params=["account"]),
    }
    paths[f"{admin}/accounts/{{account}}/usage"] = {"get": _op(
        "accountUsage", "Usage totals by day and model", _responses("usage", 400, 401, 403, 404), admin=True, params=["account"])}
    paths[f"{admin}/reconcile"] = {"get": _op(
        "reconcile", "Bill what crashed workers left, then packages against the ledger",
        _responses("ok, ledger_entries, worker_lost, recovered, journal, mismatches", 401, 403), admin=True)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Zowy Gateway", "version": "1", "description": "OpenAI-compatible chat completions"},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key: zk-..."},
                "admin": {"type": "http", "scheme": "bearer", "description": "ZOWY_ADMIN_TOKEN"},
            },
            "schemas": {
                "ChatCompletionRequest": chat_request,
                "AdminAccount": json_schema(ADMIN_SCHEMAS["account"]),
                "AdminKey": json_schema(ADMIN_SCHEMAS["key"]),
                "AdminLimits": json_schema(ADMIN_SCHEMAS["limits"]),
                "AdminPackage": json_schema(ADMIN_SCHEMAS["package"]),
                "Error": _ERROR,
            },
        },
    }
