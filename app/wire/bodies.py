"""The JSON bodies of the customer API (an owner's session), the admin API and the top-up webhook,
validated as chat requests are (one pydantic-core pass, errors naming the field)."""
from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from .validation import ANY_OBJECT, STRING, array, integer, invalid, number, obj, opt, req

_limit = cs.nullable_schema(integer(1, 10**12))
_moment = cs.union_schema([(number(0, 1e11), "@epoch"), (cs.str_schema(strict=True, min_length=1, max_length=64), "@iso")])
_short = cs.str_schema(strict=True, min_length=1, max_length=256)
# A key's controls: null clears one (no expiry, every model, no cap, any address, default limits).
_KEY_CONTROLS = {
    "name": opt(cs.str_schema(strict=True, min_length=1, max_length=64)),
    "expires_at": opt(_moment),
    "models": opt(array(cs.str_schema(strict=True, min_length=1, max_length=128), min_length=1, max_length=64)),
    "token_cap": opt(integer(1, 10**15)),
    "ips": opt(array(cs.str_schema(strict=True, min_length=1, max_length=64), min_length=1, max_length=64)),
    "per_minute": cs.typed_dict_field(_limit, required=False),
    "per_hour": cs.typed_dict_field(_limit, required=False),
}
_grant = {"plan": opt(STRING), "tokens": opt(integer(1, 10**15)), "days": opt(integer(1, 36500))}
_email = cs.str_schema(strict=True, min_length=3, max_length=254)
_password = cs.str_schema(strict=True, min_length=1, max_length=1024)
_alerts = obj({
    "url": cs.typed_dict_field(cs.nullable_schema(cs.str_schema(strict=True, min_length=1, max_length=2048)), required=True),
    "thresholds": opt(array(integer(0, 100), min_length=1, max_length=8)),
})

ADMIN_SCHEMAS = {
    "account": obj({"name": req(cs.str_schema(strict=True, min_length=1, max_length=128))}),
    "key": obj(_KEY_CONTROLS),
    "limits": obj({"per_minute": cs.typed_dict_field(_limit, required=False), "per_hour": cs.typed_dict_field(_limit, required=False)}),
    "package": obj({
        "plan": req(STRING),
        "tokens": opt(integer(1, 10**15)),
        "days": opt(integer(1, 36500)),
    }),
    "key_controls": obj(_KEY_CONTROLS),
    "invite": obj({"email": req(_email)}),
    "owner": obj({"email": req(_email), "password": req(_password)}),
    "codes": obj({**_grant, "count": req(integer(1, 10_000)), "expires_in_days": opt(integer(1, 36500))}),
    "alerts": _alerts,
}
# Bodies of the customer API (an owner's session) and of the top-up webhook.
ACCOUNT_SCHEMAS = {
    "accept_invite": obj({"token": req(_short), "password": req(_password)}),
    "sign_in": obj({"email": req(_email), "password": req(_password)}),
    "operator_sign_in": obj({"token": req(_short)}),
    "redeem": obj({"code": req(cs.str_schema(strict=True, min_length=1, max_length=64))}),
    "topup": obj({
        "event_id": req(cs.str_schema(strict=True, min_length=1, max_length=200)),
        "account": req(cs.str_schema(strict=True, min_length=1, max_length=128)),
        **_grant,
        "metadata": opt(ANY_OBJECT),
    }),
}
_SCHEMAS = {**ADMIN_SCHEMAS, **ACCOUNT_SCHEMAS}
_admin_validators = {name: SchemaValidator(schema) for name, schema in _SCHEMAS.items()}


def parse_body(kind: str, body: bytes) -> dict[str, Any]:
    """Validate a JSON API body of the admin or customer API (an empty body is an empty object)."""
    try:
        return _admin_validators[kind].validate_json(body or b"{}")
    except ValidationError as exc:
        raise invalid(_SCHEMAS[kind], exc) from None


parse_admin_body = parse_body
