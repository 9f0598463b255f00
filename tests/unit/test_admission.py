"""Admission against a real SQLite store: window rollover with an injected clock, and a store that
cannot answer (fail closed by default, open when configured) without hanging."""
from __future__ import annotations

import sqlite3
import time

import pytest

from app.core.config import RateLimits, Settings
from app.core.digests import key_hash
from app.core.errors import InvalidApiKey, RateLimited, StoreUnavailable
from app.gateway.admission import Admission
from app.store.contracts.keys import KeyRecord
from app.store.sqlite import SqliteStore


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "zowy.db", timeout=0.3)
    await store.init()
    await store.create_account("acct_1", "acme", time.time())
    yield store
    await store.close()


def settings(**changes) -> Settings:
    return Settings(rate_limits=RateLimits(2, 3), limiter_timeout=0.2, **changes)


async def test_minute_and_hour_windows_roll_over(store):
    clock = Clock(1_000_000 * 3600 + 10)  # 10 s into an hour
    admission = Admission(settings(), store, clock)
    key = KeyRecord("key_1", "acct_1", "zk-", 0.0)
    await admission.limit(key)
    await admission.limit(key)
    with pytest.raises(RateLimited) as info:
        await admission.limit(key)
    assert info.value.headers["retry-after"] == "50"
    clock.now += 50
    decision = await admission.limit(key)  # a new minute
    assert decision.minute_used == 1 and decision.hour_used == 3
    with pytest.raises(RateLimited) as info:
        await admission.limit(key)  # the hour is full (3)
    assert "3 requests per hour" in info.value.message
    clock.now += 3600
    assert (await admission.limit(key)).hour_used == 1


async def test_key_lookup_and_revocation(store):
    admission = Admission(settings(key_cache_ttl=0.0), store)
    await store.create_key(KeyRecord("key_2", "acct_1", "zk-", 0.0), key_hash("zk-secret", ""))
    assert (await admission.key("Bearer zk-secret")).id == "key_2"
    for header in (None, "", "Basic zk-secret", "Bearer", "Bearer zk-other", "Bearer " + "x" * 300):
        with pytest.raises(InvalidApiKey):
            await admission.key(header)
    await store.revoke_key("key_2", time.time())
    with pytest.raises(InvalidApiKey):
        await admission.key("Bearer zk-secret")


@pytest.mark.parametrize("fail_open", [False, True])
async def test_locked_store_fails_fast(store, fail_open):
    admission = Admission(settings(limiter_fail_open=fail_open), store)
    key = KeyRecord("key_1", "acct_1", "zk-", 0.0)
    blocker = sqlite3.connect(store.limits_path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        if fail_open:
            assert (await admission.limit(key)).admitted
        else:
            with pytest.raises(StoreUnavailable):
                await admission.limit(key)
        assert time.monotonic() - started < 0.5
    finally:
        blocker.rollback()
        blocker.close()


async def test_a_full_window_is_refused_from_memory_until_it_ends(store):
    clock = Clock(1_000_000 * 3600 + 10)
    admission = Admission(settings(), store, clock)
    key = KeyRecord("key_1", "acct_1", "zk-", 0.0)
    await admission.limit(key)
    await admission.limit(key)
    calls = []
    real_hit = store.hit

    async def counting_hit(*args, **kwargs):
        calls.append(args)
        return await real_hit(*args, **kwargs)

    store.hit = counting_hit
    with pytest.raises(RateLimited):
        await admission.limit(key)
    assert len(calls) == 1  # the store said full once
    for seconds in (1, 20, 49):
        clock.now = 1_000_000 * 3600 + 10 + seconds
        with pytest.raises(RateLimited) as info:
            admission.refuse_if_full(key)
        assert info.value.headers["retry-after"] == str(50 - seconds)
        with pytest.raises(RateLimited):
            await admission.limit(key)
    assert len(calls) == 1  # every refusal since came from memory
    clock.now = 1_000_000 * 3600 + 60  # the next minute
    assert (await admission.limit(key)).admitted and len(calls) == 2


async def test_a_key_far_from_its_limits_is_counted_a_few_at_a_time(store):
    clock = Clock(1_000_000 * 3600 + 10)
    admission = Admission(Settings(rate_limits=RateLimits(200, 10_000), limiter_slice=4, limiter_floor=50), store, clock)
    key = KeyRecord("key_1", "acct_1", "zk-", 0.0)
    calls = []
    real_hit = store.hit

    async def counting_hit(*args, **kwargs):
        calls.append(args[-1] if len(args) > 5 else kwargs.get("take", 1))
        return await real_hit(*args, **kwargs)

    store.hit = counting_hit
    admitted = 0
    with pytest.raises(RateLimited):
        for _ in range(1000):
            decision = await admission.limit(key)
            admitted += 1
            assert decision.minute_used == admitted  # the headers count this worker's own requests
    assert admitted == 200  # the limit, exactly
    assert calls[0] == 1 and max(calls) == 4 and len(calls) < 150  # fewer store operations than requests
    assert calls[-2:] == [1, 1]  # near the limit, one at a time
    row = store._limits._db.execute("SELECT minute_count FROM rate_windows").fetchone()
    assert row == (200,)
