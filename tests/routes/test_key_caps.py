"""A key's token cap held as a reservation scope, end to end over 2 gateway instances x 2 workers on
one store (SQLite, and MongoDB over the wire): back-to-back requests from one worker and bursts
across every worker stay within the cap, beyond it only by what admitted requests used over their
own reservations, and every request the cap could cover side by side is served."""
from __future__ import annotations

import asyncio

import aiohttp
import orjson

from app.billing.need import request_need
from app.core.config import DEFAULT_PERSONA_PROMPT
from bench.fake_upstream import usage_for
from tests import accounts_kit as kit
from tests import support

CAP = 2000
GUARD_BYTES = len(DEFAULT_PERSONA_PROMPT.encode())


def hi(i: int, max_tokens: int | None = 20, chunks: int | None = None) -> bytes:
    text = "hi" if chunks is None else f"hi [[fake:chunks={chunks}]]"
    return orjson.dumps({
        "model": "zowy-1",
        "max_tokens": max_tokens,
        "stream": i % 2 == 1,
        "stream_options": {"include_usage": True} if i % 2 else None,
        "messages": [{"role": "user", "content": text}],
    })


def need_of(raw: bytes) -> int:
    return request_need(len(raw), 0, 0, GUARD_BYTES, orjson.loads(raw)["max_tokens"])


def cost_of(raw: bytes, chunks: int = 8) -> int:
    doc = orjson.loads(raw)
    return usage_for({"messages": [{"role": "system", "content": DEFAULT_PERSONA_PROMPT}, *doc["messages"]]}, chunks)["total_tokens"]


def capped_customer(gateway, cap: int = CAP) -> support.Customer:
    customer = support.new_customer(gateway, tokens=1_000_000)
    with kit.admin(gateway) as a:
        r = a.patch(f"/admin/v1/keys/{customer.key_id}", json={"token_cap": cap})
    assert r.status_code == 200, r.text
    return customer


async def send(urls: list[str], key: str, bodies: list[bytes], one_connection: bool = False) -> list[int]:
    """Each body to ``urls`` in turn: one after the other on one keep-alive connection (so one worker
    of the first instance answers them all), or all at once."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=1 if one_connection else 0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int, raw: bytes) -> int:
            async with session.post(urls[i % len(urls)] + "/api/v1/chat/completions", data=raw, headers=headers) as r:
                data = await r.read()
                if r.status == 200 and r.content_type == "text/event-stream":
                    assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
                elif r.status == 402:
                    error = orjson.loads(data)["error"]
                    assert error["code"] == "insufficient_quota" and f"token cap of {CAP} tokens" in error["message"], error
                else:
                    assert r.status == 200, data
                return r.status

        if one_connection:
            return [await one(0, raw) for raw in bodies]
        return list(await asyncio.gather(*(one(i, raw) for i, raw in enumerate(bodies))))


def billed(gateway, customer: support.Customer, entries: int) -> int:
    """The key's used tokens (its ledger sum) once ``entries`` entries are written."""
    support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == entries, timeout=20)
    return support.run_store(gateway, lambda s: s.key_tokens(customer.key_id))


def key_reserved(gateway, key_id: str) -> int:
    import time

    async def held(store):
        return sum(l.tokens for l in await store.key_leases(key_id) if l.expires_at > time.time())

    return support.run_store(gateway, held)


def test_back_to_back_requests_from_one_worker_stay_within_the_cap(cluster):
    first, _ = cluster
    customer = capped_customer(first)
    bodies = [hi(i) for i in range(60)]
    need, cost = max(map(need_of, bodies)), cost_of(bodies[0])
    assert cost <= min(map(need_of, bodies))  # every answer stays within its reservation: the bound is 0
    statuses = asyncio.run(send([first.url], customer.key, bodies, one_connection=True))
    admitted = statuses.count(200)
    used = billed(first, customer, admitted)
    assert used == admitted * cost and used <= CAP
    # One after the other, a request is served while the cap holds what was used plus its own need.
    assert admitted >= (CAP - need) // cost + 1
    assert statuses == [200] * admitted + [402] * (60 - admitted)
    support.wait_until(lambda: key_reserved(first, customer.key_id) == 0, timeout=15)


def test_a_burst_over_every_worker_stays_within_the_cap(cluster):
    first, second = cluster
    customer = capped_customer(first)
    bodies = [hi(i) for i in range(80)]
    need = max(map(need_of, bodies))
    statuses = asyncio.run(send([first.url, second.url], customer.key, bodies))
    admitted = statuses.count(200)
    used = billed(first, customer, admitted)
    assert used == admitted * cost_of(bodies[0]) and used <= CAP
    assert admitted >= CAP // need  # every request the cap could cover side by side is served
    (package,) = support.run_store(first, lambda s: s.packages(customer.account_id))
    assert package.used == used
    assert support.run_store(first, lambda s: s.reconcile()) == []
    support.wait_until(lambda: key_reserved(first, customer.key_id) == 0, timeout=15)


def test_overruns_are_the_only_way_past_the_cap(cluster):
    first, second = cluster
    customer = capped_customer(first)
    # max_tokens 4 but 200 tokens of answer: each admitted request uses more than it reserved.
    bodies = [hi(i, max_tokens=4, chunks=200) for i in range(80)]
    cost = cost_of(bodies[0], chunks=200)
    overrun = cost - min(map(need_of, bodies))
    assert overrun > 0
    statuses = asyncio.run(send([first.url, second.url], customer.key, bodies))
    admitted = statuses.count(200)
    used = billed(first, customer, admitted)
    assert used == admitted * cost
    assert used <= CAP + admitted * overrun  # the documented bound
    assert used > CAP - max(map(need_of, bodies)) - cost  # and the cap was used, not refused early
