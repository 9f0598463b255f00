"""Sign-in throttling on a real SQLite store: the refusals that come before the password check, the
account-wide ceiling that a right password from an address without failures passes, an IPv6 /64 as
one address, and the operators' sign-in under the same rule."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from app.access.clientip import throttle_source
from app.accounts import operators, owners
from app.core.config import SelfService, Settings
from app.core.errors import AdminUnauthorized, InvalidCredentials, RateLimited
from app.store.contracts.owners import Owner
from app.store.sqlite import SqliteStore
from tests import support

PASSWORD = "correct horse battery staple"
ADMIN_TOKEN = "operator-token-0123456789"
LIMITS = SelfService(
    scrypt_cost=10, signin_per_minute=3, signin_per_hour=100, signin_account_ip_per_minute=2,
    signin_account_ip_per_hour=100, signin_ip_per_minute=50, signin_ip_per_hour=500,
)
SETTINGS = Settings(self_service=LIMITS, admin_token=ADMIN_TOKEN)


@pytest.fixture
async def store(tmp_path):
    support.wait_for_window(60, need=10)  # every test here counts in one minute's windows
    store = SqliteStore(tmp_path / "zowy.db", timeout=1)
    await store.init()
    await store.create_account("acct_1", "acme", time.time())
    await store.create_owner(Owner("usr_1", "acct_1", "ann@example.com", time.time()), owners.hash_password(PASSWORD, 10))
    yield store
    await store.close()


@pytest.fixture
def checked(monkeypatch) -> list[str]:
    """The passwords that reached the (costly) check."""
    seen: list[str] = []
    real = owners.verify_password

    def counting(password: str, encoded: str) -> bool:
        seen.append(password)
        return real(password, encoded)

    monkeypatch.setattr(owners, "verify_password", counting)
    return seen


async def attempt(store, password: str, ip: str, settings: Settings = SETTINGS) -> int:
    """The HTTP status a sign-in would get."""
    try:
        await owners.sign_in(store, settings, "ann@example.com", password, ip)
    except InvalidCredentials:
        return 401
    except RateLimited:
        return 429
    return 201


async def test_refusals_are_decided_before_the_password_check(store, checked):
    guessers = [f"203.0.113.{i}" for i in range(1, 6)]
    assert [await attempt(store, "wrong guess 0", ip) for ip in guessers[:3]] == [401] * 3  # the ceiling of 3 is full
    assert len(checked) == 3
    # Over the ceiling, an address that failed is refused at once, whatever it sends.
    assert [await attempt(store, p, ip) for p, ip in [("wrong guess 1", guessers[0]), (PASSWORD, guessers[1])]] == [429, 429]
    assert len(checked) == 3
    # An address without failures has its password checked, once; a second try waits.
    assert await attempt(store, "wrong guess 2", guessers[3]) == 401
    assert await attempt(store, "wrong guess 3", guessers[3]) == 429
    assert len(checked) == 4
    # A burst from one fresh address: the per-(account, address) window admits 2, one of them is checked.
    burst = await asyncio.gather(*(attempt(store, f"burst {i}", guessers[4]) for i in range(5)))
    assert sorted(burst) == [401] + [429] * 4 and len(checked) == 5
    # The owner, from an address that has not failed, signs in.
    assert await attempt(store, PASSWORD, "198.51.100.7") == 201
    assert checked[-1] == PASSWORD and len(checked) == 6


async def test_the_per_account_and_address_window_holds_under_the_ceiling(store, checked):
    settings = replace(SETTINGS, self_service=replace(LIMITS, signin_per_minute=50))
    assert [await attempt(store, "wrong", "192.0.2.1", settings) for _ in range(3)] == [401, 401, 429]
    assert await attempt(store, PASSWORD, "192.0.2.1", settings) == 429
    assert len(checked) == 2
    assert await attempt(store, PASSWORD, "192.0.2.2", settings) == 201


async def test_an_ipv6_subscriber_counts_as_one_address(store, checked):
    assert throttle_source("2001:db8:1:2:aaaa::1") == throttle_source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert throttle_source("::ffff:192.0.2.1") == "192.0.2.1" and throttle_source("192.0.2.1") == "192.0.2.1"
    settings = replace(SETTINGS, self_service=replace(LIMITS, signin_per_minute=50))
    # Two different addresses of one /64 share the window per (account, address).
    assert await attempt(store, "wrong", "2001:db8:1:2::1", settings) == 401
    assert await attempt(store, "wrong", "2001:db8:1:2::2", settings) == 401
    assert await attempt(store, PASSWORD, "2001:db8:1:2::3", settings) == 429
    assert await attempt(store, PASSWORD, "2001:db8:1:3::1", settings) == 201


async def operator_attempt(store, token: str, ip: str) -> int:
    try:
        await operators.sign_in(store, SETTINGS, token, ip)
    except AdminUnauthorized:
        return 401
    except RateLimited:
        return 429
    return 201


async def test_operators_sign_in_under_the_same_rule(store):
    guessers = [f"203.0.113.{i}" for i in range(10, 15)]
    assert [await operator_attempt(store, "wrong-token", ip) for ip in guessers] == [401] * 5
    assert await operator_attempt(store, ADMIN_TOKEN, guessers[0]) == 429  # failed there: held while over the ceiling
    assert await operator_attempt(store, ADMIN_TOKEN, "198.51.100.20") == 201
