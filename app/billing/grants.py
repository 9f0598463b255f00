"""Packages granted exactly once: redemption codes sold in batches, and signed top-up events.

A grant's package id is derived from its code or event id, so a retry after a crash between
"claimed" and "granted" finishes the same grant instead of making a second one.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from ..accounts import audit
from ..accounts.audit import Actor
from ..accounts.provisioning import find_account
from ..core.config import Settings
from ..core.digests import key_hash
from ..core.errors import Conflict, InvalidRequest, NotFound
from ..core.ids import new_id
from ..store import Store
from ..store.contracts.accounts import Account
from ..store.contracts.grants import Code, Topup
from ..store.contracts.ledger import Package
from .packages import DAY, package_view

CODE_PREFIX = "ZOWY"
# Crockford's base32: no I, L, O or U, so a code read aloud or retyped survives.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GROUPS, _GROUP = 4, 5  # 20 symbols, 100 random bits
_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})
MAX_BATCH = 10_000
TOKENS_PLAN = "tokens"


def new_code() -> str:
    symbols = "".join(secrets.choice(_ALPHABET) for _ in range(_GROUPS * _GROUP))
    return "-".join([CODE_PREFIX] + [symbols[i:i + _GROUP] for i in range(0, len(symbols), _GROUP)])


def normalize_code(text: str) -> str | None:
    """The symbols of a code as typed (any case, dashes or spaces, with or without the prefix)."""
    if type(text) is not str or len(text) > 64:
        return None
    compact = re.sub(r"[\s-]", "", text).upper()
    if compact.startswith(CODE_PREFIX) and len(compact) == len(CODE_PREFIX) + _GROUPS * _GROUP:
        compact = compact[len(CODE_PREFIX):]
    compact = compact.translate(_TYPOS)
    if len(compact) != _GROUPS * _GROUP or any(c not in _ALPHABET for c in compact):
        return None
    return compact


def code_hash(text: str, pepper: str) -> str:
    return key_hash("code:" + text, pepper)


def grant_terms(settings: Settings, plan: str | None, tokens: int | None, days: int | None) -> tuple[str, int, int]:
    """(plan, tokens, days) of a grant given a plan, a token amount, or both."""
    if plan is None and tokens is None:
        raise InvalidRequest("Give a 'plan' or a 'tokens' amount.", param="plan", code="missing_required_parameter")
    if plan is not None and plan not in settings.plans:
        raise InvalidRequest(f"Unknown plan '{plan}'; expected one of {sorted(settings.plans)}.", param="plan")
    if tokens is not None and (type(tokens) is not int or tokens < 1):
        raise InvalidRequest("'tokens' must be a positive integer.", param="tokens")
    if days is not None and (type(days) is not int or days < 1):
        raise InvalidRequest("'days' must be a positive integer.", param="days")
    return plan or TOKENS_PLAN, tokens or settings.plans[plan], days or settings.package_days


async def grant_once(store: Store, package: Package) -> bool:
    """Grant ``package`` unless it was granted before; whether this call granted it."""
    try:
        await store.grant_package(package)
        return True
    except Conflict:
        if any(p.id == package.id for p in await store.packages(package.account_id)):
            return False
        raise


# redemption codes


async def create_batch(
    store: Store, settings: Settings, *, plan: str | None, tokens: int | None, days: int | None,
    count: int, expires_in_days: int | None = None, actor: Actor = audit.SYSTEM,
) -> dict:
    """A batch of ``count`` codes; the codes themselves are in the answer only (the store keeps hashes)."""
    plan, tokens, days = grant_terms(settings, plan, tokens, days)
    if type(count) is not int or not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"'count' must be an integer from 1 to {MAX_BATCH}.", param="count")
    if expires_in_days is not None and (type(expires_in_days) is not int or expires_in_days < 1):
        raise InvalidRequest("'expires_in_days' must be a positive integer.", param="expires_in_days")
    now = time.time()
    expires_at = now + (expires_in_days or settings.code_days) * DAY
    batch_id = new_id("batch")
    made: list[tuple[Code, str]] = []
    plain: list[str] = []
    for _ in range(count):
        text = new_code()
        made.append((Code(new_id("code"), batch_id, plan, tokens, days, now, expires_at), code_hash(normalize_code(text), settings.key_pepper)))
        plain.append(text)
    await store.create_codes(made)
    summary = {"batch_id": batch_id, "plan": plan, "tokens": tokens, "days": days, "count": count,
               "created_at": now, "expires_at": expires_at}
    await audit.record(store, actor, "codes.create", None, batch_id, after=summary)
    return {**summary, "codes": plain}


def code_view(code: Code) -> dict:
    return {
        "id": code.id, "batch_id": code.batch_id, "plan": code.plan, "tokens": code.tokens, "days": code.days,
        "created_at": code.created_at, "expires_at": code.expires_at,
        "redeemed_at": code.redeemed_at, "redeemed_by": code.redeemed_by,
    }


def code_package_id(code_id: str) -> str:
    return f"pkg_{code_id}"


async def redeem(store: Store, settings: Settings, account: Account, text: Any, actor: Actor) -> Package:
    """Redeem a code into a package on ``account``; exactly one redemption of a code ever succeeds."""
    normalized = normalize_code(text)
    if normalized is None:
        raise InvalidRequest("'code' is not a redemption code (ZOWY-XXXXX-XXXXX-XXXXX-XXXXX).", param="code", code="invalid_code")
    code = await store.code_by_hash(code_hash(normalized, settings.key_pepper))
    if code is None:
        raise NotFound("No such redemption code.", param="code", code="code_not_found")
    now = time.time()
    if code.redeemed_by is None:
        if code.expires_at <= now:
            raise InvalidRequest("This redemption code has expired.", param="code", code="code_expired")
        await store.claim_code(code.id, account.id, now)
        code = await store.code_by_hash(code_hash(normalized, settings.key_pepper))
        if code is None or code.redeemed_by is None:
            raise InvalidRequest("This redemption code has expired.", param="code", code="code_expired")
    if code.redeemed_by != account.id:
        raise Conflict("This redemption code has already been redeemed.", param="code", code="code_already_redeemed")
    package = Package(code_package_id(code.id), account.id, code.plan, code.tokens, 0,
                      code.redeemed_at, code.redeemed_at + code.days * DAY)
    # Whoever lands the package (the claimer, or a retry after it crashed) reports the redemption.
    if not await grant_once(store, package):
        raise Conflict("This redemption code has already been redeemed.", param="code", code="code_already_redeemed")
    await audit.record(store, actor, "code.redeem", account.id, code.id, after=package_view(package, now))
    return package


# top-ups


def topup_package_id(event_id: str) -> str:
    return "pkg_topup_" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


async def topup(store: Store, settings: Settings, event: dict, actor: Actor) -> tuple[Package, bool]:
    """Grant a verified top-up event once per ``event_id``; the package and whether it was granted before."""
    account = await find_account(store, event["account"])
    plan, tokens, days = grant_terms(settings, event.get("plan"), event.get("tokens"), event.get("days"))
    now = time.time()
    wanted = Topup(event["event_id"], account.id, topup_package_id(event["event_id"]), plan, tokens, days, now)
    stored, _ = await store.record_topup(wanted)
    if (stored.account_id, stored.plan, stored.tokens, stored.days) != (account.id, plan, tokens, days):
        raise Conflict(
            f"Event '{stored.event_id}' was already received with different contents; use a new event_id.",
            param="event_id", code="event_id_reused",
        )
    package = Package(stored.package_id, account.id, plan, tokens, 0, stored.received_at, stored.received_at + days * DAY)
    granted = await grant_once(store, package)
    if granted:
        await audit.record(store, actor, "topup", account.id, package.id,
                           after={"event_id": stored.event_id, **package_view(package, now)})
    return package, not granted
