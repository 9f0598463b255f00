"""Account owners: scrypt passwords, one-time invites, throttled sign-in, and short-lived sessions.

A session token works as ``Authorization: Bearer <token>`` or as the HttpOnly ``zowy_session``
cookie; the store keeps only its hash, so signing out holds on every instance at once. Calls
authenticated by the cookie must carry ``X-CSRF-Token``, an HMAC of the session token.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from ..access.clientip import throttle_source
from ..core.config import Settings
from ..core.digests import key_hash
from ..core.errors import Conflict, InvalidCredentials, InvalidRequest, NotFound
from ..core.ids import new_id
from ..store import Store
from ..store.contracts.accounts import Account
from ..store.contracts.owners import Invite, Owner, Session
from . import audit
from .audit import Actor
from .signin import csrf_token, guard, throttle

SESSION_PREFIX = "zs-"
INVITE_PREFIX = "zi-"
SESSION_COOKIE = "zowy_session"
CSRF_COOKIE = "zowy_csrf"
MIN_PASSWORD, MAX_PASSWORD = 10, 256
_SCRYPT_R, _SCRYPT_P, _SALT_BYTES, _HASH_BYTES = 8, 1, 16, 32
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s.]{1,63}")


# passwords


def hash_password(password: str, cost: int) -> str:
    """``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64): the parameters travel with the hash."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, cost, _SCRYPT_R, _SCRYPT_P)
    return "$".join(("scrypt", str(cost), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of a password against its stored hash."""
    try:
        scheme, cost, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(cost), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=_HASH_BYTES)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# A hash of nobody's password: a sign-in for an unknown email takes as long as a wrong password.
_decoys: dict[int, str] = {}


def _decoy(cost: int) -> str:
    if cost not in _decoys:
        _decoys[cost] = hash_password(secrets.token_urlsafe(16), cost)
    return _decoys[cost]


def check_password(password: object) -> str:
    if type(password) is not str or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"'password' must be {MIN_PASSWORD}-{MAX_PASSWORD} characters.", param="password")
    return password


def normalize_email(email: object) -> str:
    if type(email) is not str or not _EMAIL.fullmatch(email.strip()):
        raise InvalidRequest("'email' must be an email address.", param="email")
    return email.strip().lower()


def owner_view(owner: Owner) -> dict:
    return {"id": owner.id, "account_id": owner.account_id, "email": owner.email, "created_at": owner.created_at}


# owners and invites


async def create_owner(store: Store, settings: Settings, account: Account, email: str, password: str, actor: Actor) -> Owner:
    """An owner with a password, made by the operator directly."""
    owner = Owner(new_id("usr"), account.id, normalize_email(email), time.time())
    encoded = await asyncio.to_thread(hash_password, check_password(password), settings.self_service.scrypt_cost)
    await store.create_owner(owner, encoded)
    await audit.record(store, actor, "owner.create", account.id, owner.id, after=owner_view(owner))
    return owner


async def invite(store: Store, settings: Settings, account: Account, email: str, actor: Actor) -> tuple[Invite, str]:
    """A one-time invite to become an owner of ``account``; the token is shown once."""
    email = normalize_email(email)
    if await store.owner_login(email) is not None:
        raise Conflict(f"An owner with email '{email}' already exists.", param="email")
    now = time.time()
    token = INVITE_PREFIX + secrets.token_urlsafe(32)
    made = Invite(new_id("inv"), account.id, email, now, now + settings.self_service.invite_days * 86400)
    await store.create_invite(made, key_hash(token, settings.key_pepper))
    await audit.record(store, actor, "invite.create", account.id, made.id,
                       after={"email": email, "expires_at": made.expires_at})
    return made, token


async def accept_invite(store: Store, settings: Settings, token: object, password: object, ip: str | None) -> Owner:
    """Turn an invite into an owner with this password; each invite works once, before it expires."""
    password = check_password(password)
    if type(token) is not str or not token.startswith(INVITE_PREFIX) or len(token) > 128:
        raise NotFound("This invite is not valid: it is unknown, used or expired.", param="token", code="invite_invalid")
    encoded = await asyncio.to_thread(hash_password, password, settings.self_service.scrypt_cost)
    claimed = await store.claim_invite(key_hash(token, settings.key_pepper), time.time())
    if claimed is None:
        raise NotFound("This invite is not valid: it is unknown, used or expired.", param="token", code="invite_invalid")
    owner = Owner("usr_" + claimed.id.removeprefix("inv_"), claimed.account_id, claimed.email, time.time())
    await store.create_owner(owner, encoded)
    await audit.record(store, Actor(f"owner:{owner.id}", ip), "invite.accept", owner.account_id, owner.id,
                       after=owner_view(owner))
    return owner


# sessions


@dataclass(frozen=True, slots=True)
class SignedIn:
    session: Session
    token: str
    csrf: str
    owner: Owner


async def sign_in(store: Store, settings: Settings, email: object, password: object, ip: str) -> SignedIn:
    """A new session for the owner with this email and password, within the sign-in rate windows."""
    limits = settings.self_service
    now = time.time()
    if type(email) is not str or type(password) is not str or len(password) > MAX_PASSWORD:
        raise InvalidCredentials()
    email = email.strip().lower()[:254]
    source = throttle_source(ip)
    await throttle(store, settings, f"signin:ip:{source}", limits.signin_ip_per_minute, limits.signin_ip_per_hour, now)
    found = await store.owner_login(email)
    subject = f"acct:{found[0].account_id}" if found else "email:" + hashlib.sha256(email.encode()).hexdigest()[:24]
    encoded = found[1] if found else _decoy(limits.scrypt_cost)
    matched = await guard(store, settings, subject, source, lambda: asyncio.to_thread(verify_password, password, encoded))
    if not (found and matched):
        await audit.record(store, Actor("anonymous", ip), "signin.failed", found[0].account_id if found else None,
                           email, after={"reason": "wrong password" if found else "unknown email"})
        raise InvalidCredentials()
    owner = found[0]
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    session = Session(key_hash(token, settings.key_pepper), owner.account_id, owner.id, now, now + limits.session_ttl)
    await store.create_session(session)
    await audit.record(store, Actor(f"owner:{owner.id}", ip), "signin", owner.account_id, owner.id,
                       after={"session_expires_at": session.expires_at})
    return SignedIn(session, token, csrf_token(settings, token), owner)


async def session_of(store: Store, settings: Settings, token: str | None) -> Session | None:
    """The live session of a token, or None."""
    if not token or not token.startswith(SESSION_PREFIX) or len(token) > 128:
        return None
    return await store.session(key_hash(token, settings.key_pepper), time.time())


async def sign_out(store: Store, settings: Settings, token: str) -> bool:
    return await store.delete_session(key_hash(token, settings.key_pepper))
