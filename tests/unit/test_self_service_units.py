"""The pure pieces of self-service accounts: webhook signatures, client addresses behind proxies,
password hashes, CSRF tokens, redemption code text, and which alert thresholds a balance crossed."""
from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from app.access.clientip import allowed, client_address, parse_networks
from app.accounts import owners, signin
from app.alerts.rules import Balance, alert_id, balance_of
from app.billing import grants
from app.core import signing
from app.core.config import ConfigError, Settings
from app.core.errors import InvalidSignature
from app.store.contracts.ledger import Package

SECRET = "s3cret"
NOW = 1_800_000_000.0


def test_signature_is_hmac_of_timestamp_dot_body():
    body = b'{"event_id":"evt_1"}'
    headers = signing.sign(SECRET, body, NOW)
    assert headers["X-Zowy-Timestamp"] == "1800000000"
    expected = hmac.new(SECRET.encode(), b"1800000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Zowy-Signature"] == f"v1={expected}"
    assert signing.verify(SECRET, headers["X-Zowy-Timestamp"], headers["X-Zowy-Signature"], body, NOW + 299, 300) == int(NOW)


@pytest.mark.parametrize("change, code", [
    (lambda t, s, b: (t, s, b + b" "), "invalid_signature"),
    (lambda t, s, b: (str(int(t) + 1), s, b), "invalid_signature"),
    (lambda t, s, b: (t, s.replace("v1=", "v0="), b), "invalid_signature"),
    (lambda t, s, b: (t, "v1=", b), "invalid_signature"),
    (lambda t, s, b: (None, s, b), "missing_signature"),
    (lambda t, s, b: (t, None, b), "missing_signature"),
    (lambda t, s, b: ("12.5", s, b), "invalid_timestamp"),
    (lambda t, s, b: (str(int(NOW) - 301), s, b), "stale_timestamp"),
])
def test_signature_refusals(change, code):
    body = b"{}"
    headers = signing.sign(SECRET, body, NOW)
    timestamp, signature, sent = change(headers["X-Zowy-Timestamp"], headers["X-Zowy-Signature"], body)
    with pytest.raises(InvalidSignature) as info:
        signing.verify(SECRET, timestamp, signature, sent, NOW, 300)
    assert info.value.code == code and info.value.status == 401


def test_any_of_several_signatures_may_match():
    headers = signing.sign(SECRET, b"x", NOW)
    both = "v1=" + "ab" * 32 + ", " + headers["X-Zowy-Signature"]
    assert signing.verify(SECRET, headers["X-Zowy-Timestamp"], both, b"x", NOW, 300)


def test_client_address_behind_trusted_proxies():
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"  # no trusted proxies: the peer
    assert client_address("198.51.100.7", "203.0.113.9", trusted) == "198.51.100.7"  # untrusted peer
    assert client_address("127.0.0.1", "203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "203.0.113.9, 10.1.1.1", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "6.6.6.6, 203.0.113.9", trusted) == "203.0.113.9"  # spoofed left part ignored
    assert client_address("127.0.0.1", "garbage, 10.1.1.1", trusted) == "10.1.1.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", "[2001:db8::1]", trusted) == "2001:db8::1"
    assert allowed("203.0.113.9", ("203.0.113.0/24",)) and not allowed("203.0.114.1", ("203.0.113.0/24",))
    assert allowed("2001:db8::1", ("2001:db8::/32", "10.0.0.0/8")) and not allowed("not-an-ip", ("0.0.0.0/0",))
    with pytest.raises(ConfigError):
        Settings.from_env({"ZOWY_TRUSTED_PROXIES": "10.0.0.0/8, nonsense", "ZOWY_DEMO": "on"})


def test_passwords_are_salted_scrypt_and_verified():
    first = owners.hash_password("correct horse battery", 10)
    second = owners.hash_password("correct horse battery", 10)
    assert first != second and first.startswith("scrypt$10$8$1$")
    assert owners.verify_password("correct horse battery", first)
    assert not owners.verify_password("correct horse batterY", first)
    assert not owners.verify_password("x", "bcrypt$whatever")
    assert not owners.verify_password("x", "scrypt$bad")
    assert Settings().self_service.scrypt_cost == 15  # 32 MiB and about 0.1 s a hash by default
    started = time.perf_counter()
    owners.verify_password("correct horse battery", owners.hash_password("correct horse battery", 15))
    assert time.perf_counter() - started > 0.02


def test_csrf_token_belongs_to_its_session():
    settings = Settings(key_pepper="pepper")
    token = signin.csrf_token(settings, "zs-one")
    assert signin.csrf_ok(settings, "zs-one", token)
    assert not signin.csrf_ok(settings, "zs-two", token)
    assert not signin.csrf_ok(settings, "zs-one", None) and not signin.csrf_ok(settings, "zs-one", "")


def test_emails_and_codes_are_normalised():
    assert owners.normalize_email("  Ann@Example.COM ") == "ann@example.com"
    for bad in ("ann", "a@b", "a b@c.d", 5):
        with pytest.raises(Exception):
            owners.normalize_email(bad)
    code = grants.new_code()
    assert code.startswith("ZOWY-") and len(code) == 28
    compact = grants.normalize_code(code)
    assert grants.normalize_code(code.lower().replace("-", " ")) == compact
    assert grants.normalize_code(code[5:]) == compact
    assert grants.normalize_code("ZOWY-OOOOO-IIIII-LLLLL-00000") == "00000111111111100000"
    assert grants.normalize_code("ZOWY-UUUUU-00000-00000-00000") is None  # U is not in the alphabet
    assert grants.normalize_code("short") is None and grants.normalize_code(None) is None


def package(pid: str, tokens: int, used: int, granted: float, expires: float = NOW + 1000) -> Package:
    return Package(pid, "acct_1", "pro", tokens, used, granted, expires)


def test_thresholds_crossed_by_the_active_balance():
    fresh = balance_of([package("a", 1000, 400, 1)], NOW)
    assert (fresh.remaining, fresh.total, fresh.reference.id) == (600, 1000, "a")
    assert fresh.crossed((50, 10, 0)) == []
    assert balance_of([package("a", 1000, 500, 1)], NOW).crossed((50, 10, 0)) == [50]
    assert balance_of([package("a", 1000, 950, 1)], NOW).crossed((50, 10, 0)) == [50, 10]
    empty = balance_of([package("a", 1000, 1200, 1)], NOW)
    assert (empty.remaining, empty.total) == (0, 0) and empty.crossed((10, 0)) == [10, 0]
    # A new package names a new stretch of balance: its crossings are new alerts.
    topped = balance_of([package("a", 1000, 1000, 1), package("b", 500, 0, 2)], NOW)
    assert topped.reference.id == "b" and topped.crossed((50, 0)) == []
    expired = balance_of([package("a", 1000, 0, 1, expires=NOW - 1)], NOW)
    assert expired.reference.id == "a" and expired.crossed((10,)) == [10]
    assert Balance(0, 0, None).crossed((10, 0)) == []
    # "0 %" is a balance that cannot cover a default answer any more.
    low = balance_of([package("a", 100_000, 97_000, 1)], NOW)
    assert low.crossed((10, 0), empty_below=4096) == [10, 0] and low.crossed((10, 0), empty_below=2000) == [10]
    assert alert_id("acct_1", "b", 10) == alert_id("acct_1", "b", 10) != alert_id("acct_1", "b", 0)
