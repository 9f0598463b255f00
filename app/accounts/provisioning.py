"""Accounts and their API keys as operators (CLI and admin API) and owners make and change them.

Every change to money or access is written to the audit log under the actor who made it.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Mapping

from ..access.keys import display_prefix, new_key, new_key_id
from ..core.config import Settings
from ..core.digests import key_hash
from ..core.errors import InvalidRequest, NotFound
from ..core.ids import new_id
from ..store import Store
from ..store.contracts.accounts import Account
from ..store.contracts.keys import KEY_CONTROLS, KeyRecord
from . import audit
from .audit import SYSTEM, Actor

MAX_IPS = 64


async def create_account(store: Store, name: str, actor: Actor = SYSTEM) -> Account:
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidRequest("An account name must be 1-128 characters.", param="name")
    account = await store.create_account(new_id("acct"), name, time.time())
    await audit.record(store, actor, "account.create", account.id, account.id, after={"name": account.name})
    return account


async def find_account(store: Store, id_or_name: str) -> Account:
    account = await store.account(id_or_name)
    if account is None:
        raise NotFound(f"No account '{id_or_name}'.", param="account", code="account_not_found")
    return account


async def create_key(
    store: Store, settings: Settings, account: Account, per_minute: int | None = None, per_hour: int | None = None,
    *, controls: Mapping[str, Any] | None = None, actor: Actor = SYSTEM, owner: bool = False,
) -> tuple[KeyRecord, str]:
    """A new key for ``account``; returns its record and the key itself (shown once).

    ``controls`` are the key's other ``KEY_CONTROLS``; ``owner`` holds them to the owner's rights.
    """
    changes = {**(controls or {}), "per_minute": per_minute, "per_hour": per_hour}
    checked = check_controls(settings, changes, None, owner=owner)
    key = new_key()
    record = KeyRecord(
        id=new_key_id(),
        account_id=account.id,
        prefix=display_prefix(key),
        created_at=time.time(),
        **checked,
    )
    await store.create_key(record, key_hash(key, settings.key_pepper))
    await audit.record(store, actor, "key.create", account.id, record.id, after=controls_view(record))
    return record, key


async def set_limits(store: Store, key_id: str, per_minute: int | None, per_hour: int | None, actor: Actor = SYSTEM) -> None:
    _check_limits(per_minute, per_hour)
    before = await store.key(key_id)
    if before is None or not await store.set_key_limits(key_id, per_minute, per_hour):
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")
    await audit.record(
        store, actor, "key.limits", before.account_id, key_id,
        before={"per_minute": before.per_minute, "per_hour": before.per_hour},
        after={"per_minute": per_minute, "per_hour": per_hour},
    )


async def revoke_key(store: Store, key_id: str, actor: Actor = SYSTEM, account_id: str | None = None) -> KeyRecord:
    """Revoke a key (of ``account_id`` only, when given); the key as it was."""
    before = await store.key(key_id)
    if before is None or (account_id is not None and before.account_id != account_id):
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")
    await store.revoke_key(key_id, time.time())
    if before.revoked_at is None:
        await audit.record(store, actor, "key.revoke", before.account_id, key_id,
                           before={"revoked_at": None}, after={"revoked_at": (await store.key(key_id)).revoked_at})
    return before


async def set_key_controls(
    store: Store, settings: Settings, key_id: str, changes: Mapping[str, Any], *,
    actor: Actor = SYSTEM, account_id: str | None = None, owner: bool = False,
) -> KeyRecord:
    """Change some of a key's controls (of ``account_id`` only, when given); the key as it is now."""
    before = await store.key(key_id)
    if before is None or (account_id is not None and before.account_id != account_id):
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")
    checked = check_controls(settings, changes, before, owner=owner)
    after = await store.update_key(key_id, checked)
    if after is None:
        raise NotFound(f"No key '{key_id}'.", param="key_id", code="key_not_found")
    old, new = controls_view(before), controls_view(after)
    changed = [name for name in checked if old[name] != new[name]]
    if changed:
        await audit.record(store, actor, "key.controls", after.account_id, key_id,
                           before={n: old[n] for n in changed}, after={n: new[n] for n in changed})
    return after


def controls_view(record: KeyRecord) -> dict:
    return {name: list(v) if isinstance(v := getattr(record, name), tuple) else v for name in KEY_CONTROLS}


def check_controls(settings: Settings, changes: Mapping[str, Any], current: KeyRecord | None, *, owner: bool) -> dict:
    """Validated, normalised key controls; InvalidRequest naming the field otherwise.

    An owner may set rate limits up to the gateway's defaults, or up to what the operator already
    gave the key; every other control is the owner's to set.
    """
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in KEY_CONTROLS:
            raise InvalidRequest(f"Unrecognized parameter: '{name}'.", param=name, code="unknown_parameter")
        out[name] = _CHECKS[name](settings, value, name)
    _check_limits(out.get("per_minute"), out.get("per_hour"))
    if owner:
        defaults = settings.rate_limits
        for name in ("per_minute", "per_hour"):
            if name not in out:
                continue
            ceiling = max(getattr(defaults, name), (getattr(current, name) if current else None) or 0)
            effective = out[name] or getattr(defaults, name)
            if effective > ceiling:
                raise InvalidRequest(
                    f"'{name}' may be at most {ceiling} for a key you manage; ask the operator for more.",
                    param=name, code="limit_above_allowed",
                )
    return out


def _name(settings: Settings, value: Any, param: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not 1 <= len(value.strip()) <= 64:
        raise InvalidRequest("'name' must be 1-64 characters.", param=param)
    return value.strip()


def _expires_at(settings: Settings, value: Any, param: str) -> float | None:
    if value is None:
        return None
    if type(value) is str:
        value = parse_time(value, param)
    if type(value) not in (int, float) or value != value:
        raise InvalidRequest(f"'{param}' must be epoch seconds or an ISO datetime.", param=param)
    if value <= time.time():
        raise InvalidRequest(f"'{param}' must be in the future.", param=param)
    return float(value)


def _models(settings: Settings, value: Any, param: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) not in (list, tuple) or not value:
        raise InvalidRequest("'models' must be a non-empty array of model ids, or null for every model.", param=param)
    for i, model in enumerate(value):
        if model not in settings.models:
            raise InvalidRequest(
                f"Invalid 'models[{i}]': unknown model {model!r}; expected one of {sorted(settings.models)}.",
                param=f"{param}[{i}]", code="model_not_found",
            )
    return tuple(dict.fromkeys(value))


def _token_cap(settings: Settings, value: Any, param: str) -> int | None:
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidRequest("'token_cap' must be a positive integer, or null for no cap.", param=param)
    return value


def _ips(settings: Settings, value: Any, param: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) not in (list, tuple) or not value or len(value) > MAX_IPS:
        raise InvalidRequest(f"'ips' must be an array of 1-{MAX_IPS} addresses or CIDRs, or null for any.", param=param)
    out = []
    for i, text in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except (ValueError, AttributeError):
            raise InvalidRequest(f"Invalid 'ips[{i}]': {text!r} is not an IP address or CIDR.", param=f"{param}[{i}]") from None
    return tuple(dict.fromkeys(out))


def _limit(settings: Settings, value: Any, param: str) -> int | None:
    return value


_CHECKS = {
    "name": _name, "expires_at": _expires_at, "models": _models, "token_cap": _token_cap, "ips": _ips,
    "per_minute": _limit, "per_hour": _limit,
}


def _check_limits(per_minute: int | None, per_hour: int | None) -> None:
    for name, value in (("per_minute", per_minute), ("per_hour", per_hour)):
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)


def key_view(record: KeyRecord, now: float | None = None) -> dict:
    view = asdict(record)
    now = time.time() if now is None else now
    if record.revoked_at is not None:
        view["status"] = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        view["status"] = "expired"
    else:
        view["status"] = "active"
    return view


def parse_time(text: str | None, param: str) -> float | None:
    """An ISO date/datetime (UTC unless it says otherwise) or epoch seconds; None when absent."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be an ISO date or datetime, or epoch seconds.", param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
