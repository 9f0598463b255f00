"""The OpenAPI 3.1 document of the public, customer and admin API and the top-up webhook, generated
from the request validators so the two cannot drift apart."""
from __future__ import annotations

from typing import Any

from ..core.config import Settings
from ..wire.bodies import ACCOUNT_SCHEMAS, ADMIN_SCHEMAS
from ..wire.chat import CHAT_REQUEST_SCHEMA
from ..wire.responses.request import RESPONSES_REQUEST_SCHEMA


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


# What each error status means, on whichever route answers it.
_ERRORS = {
    400: "invalid request: error.param names the field",
    401: "missing or invalid credentials",
    402: "insufficient quota: the balance or the key's cap cannot cover the request",
    403: "not allowed (the key's addresses, a missing X-CSRF-Token, another site, or turned off)",
    404: "not found",
    408: "the request's head or body did not arrive in time",
    409: "conflicts with what exists",
    413: "the request body is too large",
    429: "too many requests: retry after Retry-After",
    431: "the request headers are too large",
    500: "server error",
    502: "the upstream failed",
    503: "unavailable for now (the store does not answer, overloaded, or stopping): retry",
    504: "the upstream did not answer in time",
}
# Any request may get these, whatever its route: its head or body too slow or too large, a failure.
_ANY = (408, 413, 431, 500)


def _responses(ok: str, *errors: int, status: int = 200, stream: bool | str = False, store: bool = True,
               content: dict | None = None) -> dict:
    """An operation's responses: its success ``status`` and every error status it answers (503 when
    it needs the store)."""
    content = content or {_JSON: {"schema": {"type": "object"}}}
    if stream:
        events = stream if isinstance(stream, str) else "data: {chat.completion.chunk} events, then data: [DONE]"
        content["text/event-stream"] = {"schema": {"type": "string", "description": events}}
    out = {str(status): {"description": ok, "content": content}}
    for error in sorted({*errors, *_ANY, *((503,) if store else ())}):
        out[str(error)] = {"description": _ERRORS[error], "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def _body(name: str) -> dict:
    return {"required": True, "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(operation_id: str, summary: str, responses: dict, *, body: str | None = None, admin: bool = False,
        public: bool = False, session: bool = False, params: list[str] = (), query: list[str] = (),
        security: list[dict] | None = None) -> dict:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if body:
        op["requestBody"] = _body(body)
    if security is not None:
        op["security"] = security
    elif public:
        op["security"] = []
    elif admin:
        op["security"] = [{"admin": []}, {"operatorCookie": [], "csrf": []}]
    elif session:
        op["security"] = [{"session": []}, {"sessionCookie": [], "csrf": []}]
    parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    parameters += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in query]
    if parameters:
        op["parameters"] = parameters
    return op


_LEDGER_QUERY = ["cursor", "limit", "model", "api", "key", "since", "until", "outcome"]
_CSV = {"text/csv": {"schema": {"type": "string"}}}


def _customer_paths(paths: dict) -> None:
    """The customer API: an account owner's session, as a bearer token or a cookie (with X-CSRF-Token)."""
    api = "/api/v1"
    paths[f"{api}/auth/invite/accept"] = {"post": _op(
        "acceptInvite", "Become an account owner with a one-time invite token and a password",
        _responses("the new owner", 400, 404, 409, status=201), body="AcceptInvite", public=True)}
    paths[f"{api}/auth/sessions"] = {"post": _op(
        "signIn", "Sign in: a session token (also set as the zowy_session cookie) and its CSRF token",
        _responses("the session", 400, 401, 429, status=201), body="SignIn", public=True)}
    paths[f"{api}/auth/sessions/current"] = {"delete": _op(
        "signOut", "Sign out (the session ends on every instance)", _responses("signed out", 401, 403), session=True)}
    paths[f"{api}/account"] = {"get": _op(
        "getOwnAccount", "The account's balance: tokens left, active package and its expiry",
        _responses("balance", 401), session=True)}
    paths[f"{api}/account/alerts"] = {
        "get": _op("getOwnAlerts", "Low-balance alert settings and recent deliveries", _responses("alert settings", 401), session=True),
        "put": _op("setOwnAlerts", "Set the alert receiver URL and thresholds", _responses("alert settings", 400, 401, 403),
                   body="AlertSettings", session=True),
    }
    paths[f"{api}/keys"] = {
        "get": _op("listOwnKeys", "The account's keys with their controls", _responses("keys", 401), session=True),
        "post": _op("createOwnKey", "Create a key (returned once in 'key')", _responses("the key", 400, 401, 403, status=201),
                    body="KeyControls", session=True),
    }
    paths[f"{api}/keys/{{key_id}}"] = {"patch": _op(
        "updateOwnKey", "Change a key's controls (null clears one)", _responses("the key", 400, 401, 403, 404),
        body="KeyControls", session=True, params=["key_id"])}
    paths[f"{api}/keys/{{key_id}}/revoke"] = {"post": _op(
        "revokeOwnKey", "Revoke a key", _responses("the key", 401, 403, 404), session=True, params=["key_id"])}
    paths[f"{api}/redeem"] = {"post": _op(
        "redeemCode", "Redeem a code into a package", _responses("the package and balance", 400, 401, 403, 404, 409, 429, status=201),
        body="Redeem", session=True)}
    paths[f"{api}/ledger"] = {"get": _op(
        "ownLedger", "The account's requests, newest first, a page at a time",
        _responses("a page of ledger entries and next_cursor", 400, 401), session=True, query=_LEDGER_QUERY)}
    paths[f"{api}/ledger.csv"] = {"get": _op(
        "ownLedgerCsv", "The account's requests as CSV", _responses("the ledger as CSV, newest first", 400, 401, content=_CSV),
        session=True, query=_LEDGER_QUERY[2:])}


# The console's page and its static files are not API.
UNDOCUMENTED = frozenset({"/console", "/console/static/{path}"})


def _console_paths(paths: dict) -> None:
    """What the web console adds: the facts its pages need, and operators' session cookie."""
    paths["/console/api/config"] = {"get": _op(
        "consoleConfig", "The public models, the plans, and whether operators can sign in", _responses("facts", store=False), public=True)}
    paths["/console/api/operator/session"] = {
        "post": _op("operatorSignIn", "Trade the admin token for an operator session cookie (zowy_operator) and its CSRF token",
                    _responses("the session's CSRF token and expiry", 400, 401, 403, 429, status=201), body="OperatorSignIn", public=True),
        "get": _op("operatorSession", "The operator session of the cookie", _responses("signed in", 401),
                   security=[{"operatorCookie": []}]),
        "delete": _op("operatorSignOut", "End the operator session", _responses("signed out", 401, 403),
                      security=[{"operatorCookie": [], "csrf": []}]),
    }


def _admin_self_service_paths(paths: dict, admin: str) -> None:
    paths[f"{admin}/keys/{{key_id}}"] = {"patch": _op(
        "setKeyControls", "Change a key's controls: name, expiry, models, token cap, IPs, rate limits",
        _responses("the key", 400, 401, 403, 404), body="KeyControls", admin=True, params=["key_id"])}
    paths[f"{admin}/accounts/{{account}}/owners"] = {
        "post": _op("createOwner", "Create an account owner with a password", _responses("the owner", 400, 401, 403, 404, 409, status=201),
                    body="AdminOwner", admin=True, params=["account"]),
        "get": _op("listOwners", "An account's owners", _responses("owners", 401, 403, 404), admin=True, params=["account"]),
    }
    paths[f"{admin}/accounts/{{account}}/invites"] = {"post": _op(
        "inviteOwner", "A one-time invite token for a new owner", _responses("the invite and its token", 400, 401, 403, 404, 409, status=201),
        body="AdminInvite", admin=True, params=["account"])}
    paths[f"{admin}/accounts/{{account}}/alerts"] = {
        "get": _op("getAlerts", "An account's alert settings and deliveries", _responses("alert settings", 401, 403, 404),
                   admin=True, params=["account"]),
        "put": _op("setAlerts", "Set an account's alert receiver and thresholds", _responses("alert settings", 400, 401, 403, 404),
                   body="AlertSettings", admin=True, params=["account"]),
    }
    paths[f"{admin}/codes"] = {"post": _op(
        "createCodes", "A batch of redemption codes (returned once)", _responses("the batch and its codes", 400, 401, 403, status=201),
        body="AdminCodes", admin=True)}
    paths[f"{admin}/codes/{{batch_id}}"] = {"get": _op(
        "listCodes", "A batch's codes and who redeemed them", _responses("codes", 401, 403, 404), admin=True, params=["batch_id"])}
    paths[f"{admin}/traffic"] = {"get": _op(
        "liveTraffic", "This instance's counters summed over its workers, and each upstream target's breaker state",
        _responses("counters at 'at'; rates come from successive samples", 401, 403), admin=True)}
    paths[f"{admin}/audit"] = {"get": _op(
        "auditLog", "Changes to money and access, newest first", _responses("a page of events and next_cursor", 400, 401, 403, 404),
        admin=True, query=["account", "action", "since", "until", "cursor", "limit"])}


def document(settings: Settings) -> dict:
    """The whole document; the chat request's model field lists this deployment's public models."""
    chat_request = json_schema(CHAT_REQUEST_SCHEMA)
    chat_request["properties"]["model"] = {"type": "string", "enum": list(settings.models)}
    responses_request = json_schema(RESPONSES_REQUEST_SCHEMA)
    responses_request["properties"]["model"] = {"type": "string", "enum": list(settings.models)}
    paths: dict[str, dict] = {}
    for prefix, suffix in (("/api/v1", ""), ("/v1", "_v1")):
        paths[f"{prefix}/chat/completions"] = {"post": _op(
            f"createChatCompletion{suffix}", "Create a chat completion (stream: true for SSE)",
            _responses("a chat.completion, or an SSE stream of chat.completion.chunk", 400, 401, 402, 403, 404, 408, 413, 429, 500, 502, 503, 504, stream=True),
            body="ChatCompletionRequest")}
        paths[f"{prefix}/responses"] = {"post": _op(
            f"createResponse{suffix}", "Create a response (Responses API; stream: true for SSE)",
            _responses("a response, or an SSE stream of Responses events", 400, 401, 402, 403, 408, 413, 429, 500, 502, 503, 504,
                       stream="event: <type> / data: {response event} pairs, sequence_number from 0, ending with "
                              "response.completed, response.incomplete or response.failed"),
            body="ResponsesRequest")}
        paths[f"{prefix}/responses/{{response_id}}"] = {
            "get": _op(f"retrieveResponse{suffix}", "A stored response of the caller's account",
                       _responses("the response", 401, 403, 404), params=["response_id"]),
            "delete": _op(f"deleteResponse{suffix}", "Delete a stored response",
                          _responses("{id, object: response.deleted, deleted: true}", 401, 403, 404), params=["response_id"]),
        }
        paths[f"{prefix}/responses/{{response_id}}/input_items"] = {"get": _op(
            f"listResponseInputItems{suffix}", "A stored response's input items (a list page)",
            _responses("a list of input items", 400, 401, 403, 404), params=["response_id"], query=["limit", "order", "after"])}
        paths[f"{prefix}/models"] = {"get": _op(f"listModels{suffix}", "List the public models the key may use", _responses("a list of models", 401, 403))}
        paths[f"{prefix}/models/{{model_id}}"] = {"get": _op(
            f"retrieveModel{suffix}", "Retrieve a public model", _responses("a model", 401, 403, 404), params=["model_id"])}
        paths[f"{prefix}/usage"] = {"get": _op(
            f"getUsage{suffix}", "The caller's balance and usage (an API key or an owner's session)", _responses("balance and usage", 400, 401, 403),
            query=["since", "until"])}
    paths["/healthz"] = {"get": _op("healthz", "The process answers", _responses("ok", store=False), public=True)}
    paths["/readyz"] = {"get": _op("readyz", "Ready to serve (details with the admin token)", _responses("ready", 503), public=True)}
    paths["/metrics"] = {"get": _op("metrics", "Prometheus metrics", _responses("text exposition format", 401, 404, store=False),
                                   security=[{"admin": []}])}
    paths["/openapi.json"] = {"get": _op("openapi", "This document", _responses("OpenAPI 3.1", store=False), public=True)}
    admin = "/admin/v1"
    paths[f"{admin}/accounts"] = {
        "post": _op("createAccount", "Create an account", _responses("the account", 400, 401, 403, 409, status=201), body="AdminAccount", admin=True),
        "get": _op("listAccounts", "List accounts", _responses("accounts", 401, 403), admin=True),
    }
    paths[f"{admin}/accounts/{{account}}"] = {"get": _op(
        "getAccount", "An account's balance and packages", _responses("balance", 401, 403, 404), admin=True, params=["account"])}
    paths[f"{admin}/accounts/{{account}}/keys"] = {
        "post": _op("createKey", "Create a key (returned once) with its controls", _responses("the key", 400, 401, 403, 404, status=201), body="AdminKey", admin=True, params=["account"]),
        "get": _op("listKeys", "List an account's keys", _responses("keys", 401, 403, 404), admin=True, params=["account"]),
    }
    paths[f"{admin}/keys/{{key_id}}/revoke"] = {"post": _op(
        "revokeKey", "Revoke a key", _responses("revoked", 401, 403, 404), admin=True, params=["key_id"])}
    paths[f"{admin}/keys/{{key_id}}/limits"] = {"put": _op(
        "setKeyLimits", "Override a key's rate limits", _responses("limits", 400, 401, 403, 404), body="AdminLimits", admin=True, params=["key_id"])}
    paths[f"{admin}/accounts/{{account}}/packages"] = {
        "post": _op("grantPackage", "Grant a token package", _responses("the package", 400, 401, 403, 404, status=201), body="AdminPackage", admin=True, params=["account"]),
        "get": _op("listPackages", "An account's packages", _responses("packages", 401, 403, 404), admin=True, params=["account"]),
    }
    paths[f"{admin}/accounts/{{account}}/usage"] = {"get": _op(
        "accountUsage", "Usage totals by day and model", _responses("usage", 400, 401, 403, 404), admin=True, params=["account"])}
    paths[f"{admin}/reconcile"] = {"get": _op(
        "reconcile", "Bill what crashed workers left, then packages against the ledger and stale reservations",
        _responses("ok, ledger_entries, worker_lost, recovered, journal, mismatches, expired_reservations", 401, 403), admin=True)}
    _admin_self_service_paths(paths, admin)
    _customer_paths(paths)
    if settings.console.enabled:
        _console_paths(paths)
    paths["/webhooks/topup"] = {"post": _op(
        "topupWebhook", "A signed top-up event (X-Zowy-Timestamp, X-Zowy-Signature: v1=HMAC-SHA256); grants once per event_id",
        _responses("the package granted, or duplicate: true for a replay", 400, 401, 403, 404, 409), body="TopupEvent", public=True)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Zowy Gateway", "version": "1", "description": "OpenAI-compatible chat completions and Responses API"},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key: zk-..."},
                "admin": {"type": "http", "scheme": "bearer", "description": "ZOWY_ADMIN_TOKEN"},
                "session": {"type": "http", "scheme": "bearer", "description": "An owner's session token: zs-..."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "zowy_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                         "description": "With the cookie, on every call that changes something"},
                "operatorCookie": {"type": "apiKey", "in": "cookie", "name": "zowy_operator",
                                   "description": "The web console's operator session, in place of the admin token"},
            },
            "schemas": {
                "ChatCompletionRequest": chat_request,
                "ResponsesRequest": responses_request,
                "AdminAccount": json_schema(ADMIN_SCHEMAS["account"]),
                "AdminKey": json_schema(ADMIN_SCHEMAS["key"]),
                "AdminLimits": json_schema(ADMIN_SCHEMAS["limits"]),
                "AdminPackage": json_schema(ADMIN_SCHEMAS["package"]),
                "KeyControls": json_schema(ADMIN_SCHEMAS["key_controls"]),
                "AdminOwner": json_schema(ADMIN_SCHEMAS["owner"]),
                "AdminInvite": json_schema(ADMIN_SCHEMAS["invite"]),
                "AdminCodes": json_schema(ADMIN_SCHEMAS["codes"]),
                "AlertSettings": json_schema(ADMIN_SCHEMAS["alerts"]),
                "AcceptInvite": json_schema(ACCOUNT_SCHEMAS["accept_invite"]),
                "SignIn": json_schema(ACCOUNT_SCHEMAS["sign_in"]),
                "OperatorSignIn": json_schema(ACCOUNT_SCHEMAS["operator_sign_in"]),
                "Redeem": json_schema(ACCOUNT_SCHEMAS["redeem"]),
                "TopupEvent": json_schema(ACCOUNT_SCHEMAS["topup"]),
                "Error": _ERROR,
            },
        },
    }
