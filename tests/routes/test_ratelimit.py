"""Per-key limits end to end: exact across processes and workers, honest headers, 429 as OpenAI does."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from tests import support
from tests.conftest import http, sdk_client

CHAT = {"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}]}


async def _fire(urls: list[str], key: str, total: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> int:
            url = urls[i % len(urls)] + "/api/v1/chat/completions"
            async with session.post(url, json=CHAT, headers={"Authorization": f"Bearer {key}"}) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one(i) for i in range(total)))


def test_exact_across_two_instances_of_two_workers(tmp_path, models_path, store_env):
    """200 concurrent requests of one key over 2 gateway processes x 2 workers: exactly 60 pass."""
    data = tmp_path / "shared"
    # Exactness, not latency, is under test: a limiter timeout on a loaded machine would turn an
    # admitted request into a 503 after its slot was taken.
    env = {**store_env, "ZOWY_LIMITER_TIMEOUT": "10"}
    first = support.start_gateway(data, models_path, workers=2, **env)
    try:
        second = support.start_gateway(data, models_path, workers=2, **env)
        try:
            customer = support.new_customer(first, per_minute=None, per_hour=None)
            support.wait_for_window(60, need=15)
            statuses = asyncio.run(_fire([first.url, second.url], customer.key, 200))
            assert statuses.count(200) == 60, sorted(set(statuses))
            assert statuses.count(429) == 140
            support.wait_until(lambda: support.run_store(first, lambda s: s.ledger_count(customer.account_id)) == 60)
            time.sleep(0.3)
            assert support.run_store(first, lambda s: s.ledger_count(customer.account_id)) == 60
        finally:
            second.stop()
    finally:
        first.stop()


def test_headers_count_down_then_429(gateway):
    customer = support.new_customer(gateway, per_minute=None, per_hour=None)
    support.wait_for_window(60, need=10)
    with http(gateway) as h:
        auth = {"Authorization": f"Bearer {customer.key}"}
        remaining = []
        for _ in range(60):
            r = h.post("/api/v1/chat/completions", json=CHAT, headers=auth)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "60"
            assert r.headers["x-ratelimit-limit-requests-hour"] == "1000"
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
            reset = r.headers["x-ratelimit-reset-requests"]
            assert reset.endswith("s") and (reset.endswith("ms") or 0 < float(reset[:-1]) <= 60)
        assert remaining == list(range(59, -1, -1))
        assert r.headers["x-ratelimit-remaining-requests-hour"] == "940"
        rejected = h.post("/api/v1/chat/completions", json=CHAT, headers=auth)
    assert rejected.status_code == 429
    error = rejected.json()["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert "60 requests per minute" in error["message"]
    retry_after = int(rejected.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert abs(int(rejected.headers["retry-after-ms"]) / 1000 - support.seconds_left_in_window(60)) < 2
    assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-request-id" in rejected.headers


def test_hour_window_binds_when_smaller(gateway):
    customer = support.new_customer(gateway, per_minute=1000, per_hour=5)
    support.wait_for_window(3600, need=10)
    with http(gateway) as h:
        auth = {"Authorization": f"Bearer {customer.key}"}
        for left in range(4, -1, -1):
            r = h.post("/api/v1/chat/completions", json=CHAT, headers=auth)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "5"
            assert r.headers["x-ratelimit-remaining-requests"] == str(left)
        rejected = h.post("/api/v1/chat/completions", json=CHAT, headers=auth)
    assert rejected.status_code == 429
    assert "5 requests per hour" in rejected.json()["error"]["message"]
    assert int(rejected.headers["retry-after"]) > 60 or support.seconds_left_in_window(3600) < 62


def test_sdk_raises_rate_limit_error_and_rejections_are_not_billed(gateway):
    customer = support.new_customer(gateway, per_minute=3, per_hour=100)
    support.wait_for_window(60, need=5)
    with sdk_client(gateway, customer.key) as client:
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**CHAT)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"]
    time.sleep(0.3)
    assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 3


def test_requests_rejected_before_the_limiter_do_not_count(gateway):
    customer = support.new_customer(gateway, per_minute=None, per_hour=None)
    support.wait_for_window(60, need=5)
    with http(gateway) as h:
        auth = {"Authorization": f"Bearer {customer.key}"}
        for _ in range(5):
            assert h.post("/api/v1/chat/completions", json={"model": "zowy-1", "messages": []}, headers=auth).status_code == 400
            assert h.post("/api/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer zk-wrong"}).status_code == 401
        r = h.post("/api/v1/chat/completions", json=CHAT, headers=auth)
    assert r.headers["x-ratelimit-remaining-requests"] == "59"
