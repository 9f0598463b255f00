"""What the self-service tests share: two gateway instances on one store per backend, owners made
through the admin API and the invite flow, and signing of webhooks as a provider would."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import time
import uuid
from dataclasses import dataclass

import httpx2

from tests import support
from tests.conftest import http

TOPUP_SECRET = "topup-secret-for-tests-0123456789"
ALERT_SECRET = "alert-secret-for-tests-0123456789"
PASSWORD = "correct horse battery staple"

ENV = {
    "ZOWY_TOPUP_SECRET": TOPUP_SECRET,
    "ZOWY_ALERT_SECRET": ALERT_SECRET,
    "ZOWY_ALERT_PRIVATE_URLS": "true",  # the test receivers listen on 127.0.0.1
    "ZOWY_ALERT_CHECK_INTERVAL": "0.05",
    "ZOWY_ALERT_POLL_INTERVAL": "0.05",
    "ZOWY_ALERT_RETRY_BASE": "0.2",
    "ZOWY_ALERT_RETRY_MAX": "0.5",
    "ZOWY_ALERT_TIMEOUT": "2",
    "ZOWY_TRUSTED_PROXIES": "127.0.0.1/32",
    "ZOWY_SCRYPT_COST": "12",
    "ZOWY_SIGNIN_PER_MINUTE": "5",
    "ZOWY_SIGNIN_ACCOUNT_IP_PER_MINUTE": "3",
}

_addresses = itertools.count(1)


def fresh_ip() -> str:
    """A client address of its own (sent as X-Forwarded-For through the trusted 127.0.0.1), so each
    test's sign-ins count in their own per-IP window."""
    n = next(_addresses) + (os.getpid() % 200) * 1000
    return f"198.18.{n // 250 % 250}.{n % 250 + 1}"


def backend_env(request, tmp_path_factory) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    url = os.environ.get("TEST_MONGO_URL") or request.getfixturevalue("nx_server").url
    return {"ZOWY_MONGO_URL": url, "ZOWY_MONGO_DB": f"zowy_{uuid.uuid4().hex[:10]}"}


@dataclass
class Pair:
    """Two gateway instances sharing one store."""

    first: support.Gateway
    second: support.Gateway
    backend: str

    def stop(self) -> None:
        self.second.stop()
        self.first.stop()


def start_pair(tmp_path_factory, models_path, env: dict[str, str], backend: str, **extra: str) -> Pair:
    data = tmp_path_factory.mktemp(f"pair-{backend}")
    first = support.start_gateway(data, models_path, **{**ENV, **env, **extra})
    try:
        second = support.start_gateway(data, models_path, **{**ENV, **env, **extra})
    except Exception:
        first.stop()
        raise
    return Pair(first, second, backend)


def admin(gateway: support.Gateway, recorded: bool = True) -> httpx2.Client:
    """An admin API client; ``recorded=False`` for answers that echo a test receiver's 127.0.0.1 URL,
    which the session's leak check would take for an upstream host."""
    client = http(gateway) if recorded else httpx2.Client(base_url=gateway.url, timeout=30.0)
    client.headers["Authorization"] = f"Bearer {gateway.admin_token}"
    return client


@dataclass
class Owner:
    customer: support.Customer
    email: str
    token: str
    csrf: str
    ip: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Forwarded-For": self.ip}


def invite_and_accept(gateway: support.Gateway, account: str, email: str, password: str = PASSWORD) -> dict:
    with admin(gateway) as a:
        r = a.post(f"/admin/v1/accounts/{account}/invites", json={"email": email})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    with http(gateway) as h:
        r = h.post("/api/v1/auth/invite/accept", json={"token": token, "password": password})
        assert r.status_code == 201, r.text
    return r.json()["owner"]


def sign_in(gateway: support.Gateway, email: str, password: str = PASSWORD, ip: str | None = None) -> httpx2.Response:
    with http(gateway) as h:
        return h.post("/api/v1/auth/sessions", json={"email": email, "password": password},
                      headers={"X-Forwarded-For": ip or fresh_ip()})


def new_owner(gateway: support.Gateway, tokens: int | None = 2_000_000) -> Owner:
    """An account (with a package unless tokens is None) and a key, whose owner is signed in."""
    customer = support.new_customer(gateway, tokens=tokens)
    email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
    invite_and_accept(gateway, customer.account_id, email)
    ip = fresh_ip()
    r = sign_in(gateway, email, ip=ip)
    assert r.status_code == 201, r.text
    return Owner(customer, email, r.json()["token"], r.json()["csrf_token"], ip)


def signed(body: bytes, secret: str = TOPUP_SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Zowy-Timestamp": timestamp, "X-Zowy-Signature": f"v1={digest}", "Content-Type": "application/json"}

