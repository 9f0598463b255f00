"""Balance reservations end to end: bursts of 100 concurrent requests, streamed and not, over 2
gateway instances x 2 workers sharing one store, against packages of a few thousand tokens. Nothing
is overdrawn beyond what admitted requests used over their own reservations, and every request a
package could cover is served."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson

from app.config import DEFAULT_PERSONA_PROMPT
from app.metering import request_need
from bench.fake_upstream import usage_for
from tests import support

BURST = 100


def body(i: int, max_tokens: int, chunks: int) -> bytes:
    return orjson.dumps({
        "model": "zowy-1",
        "max_tokens": max_tokens,
        "stream": i % 2 == 1,
        "stream_options": {"include_usage": True} if i % 2 else None,
        "messages": [{"role": "user", "content": f"burst request [[fake:chunks={chunks},delay=0.002]]"}],
    })


def need_of(raw: bytes, max_tokens: int) -> int:
    return request_need(len(raw), 0, 0, len(DEFAULT_PERSONA_PROMPT.encode()), max_tokens)


def cost_of(raw: bytes, chunks: int) -> int:
    doc = orjson.loads(raw)
    upstream = {"messages": [{"role": "system", "content": DEFAULT_PERSONA_PROMPT}, *doc["messages"]]}
    return usage_for(upstream, chunks)["total_tokens"]


async def burst(urls: list[str], key: str, bodies: list[bytes]) -> list[int]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(i: int, raw: bytes) -> int:
            async with session.post(urls[i % len(urls)] + "/api/v1/chat/completions", data=raw, headers=headers) as r:
                data = await r.read()
                if r.status == 200 and r.content_type == "text/event-stream":
                    assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
                elif r.status == 402:
                    assert json.loads(data)["error"]["code"] == "insufficient_quota"
                return r.status

        return await asyncio.gather(*(one(i, raw) for i, raw in enumerate(bodies)))


def settled_tokens(gateway, account_id: str, count: int) -> int:
    """Tokens the ledger holds for the account once its ``count`` entries are written."""
    support.wait_until(lambda: support.run_store(gateway, lambda s: s.ledger_count(account_id)) == count, timeout=20)
    rows = support.run_store(gateway, lambda s: s.usage(account_id, 0, 2**40))
    return sum(r.total_tokens for r in rows)


def test_a_burst_covers_what_the_package_holds_and_no_more(cluster):
    first, second = cluster
    package = 4000
    customer = support.new_customer(first, tokens=package)
    bodies = [body(i, max_tokens=40, chunks=8) for i in range(BURST)]
    needs = [need_of(raw, 40) for raw in bodies]
    costs = [cost_of(raw, 8) for raw in bodies]
    assert all(c <= n for c, n in zip(costs, needs))  # every answer stays within its reservation

    statuses = asyncio.run(burst([first.url, second.url], customer.key, bodies))
    assert set(statuses) <= {200, 402}
    admitted = statuses.count(200)
    # Utilisation: whatever the interleaving, every request the package could cover side by side is served.
    assert admitted >= package // max(needs)
    used = settled_tokens(first, customer.account_id, admitted)
    assert used == sum(costs[:1]) * admitted and used <= package  # no request overran its reservation, so nothing is overdrawn
    (stored,) = support.run_store(first, lambda s: s.packages(customer.account_id))
    assert stored.used == used
    assert support.run_store(first, lambda s: s.reconcile()) == []
    # Once idle, every worker gives its unused tokens back.
    support.wait_until(lambda: _reserved(first, customer.key) == 0, timeout=15)


def test_overruns_are_the_only_overdraft(cluster):
    first, second = cluster
    package = 3000
    customer = support.new_customer(first, tokens=package)
    # max_tokens 4 but 300 tokens of answer: each admitted request overruns its reservation.
    bodies = [body(i, max_tokens=4, chunks=300) for i in range(BURST)]
    cost, need = cost_of(bodies[0], 300), max(need_of(raw, 4) for raw in bodies)
    assert cost > need
    statuses = asyncio.run(burst([first.url, second.url], customer.key, bodies))
    assert set(statuses) <= {200, 402}
    admitted = statuses.count(200)
    assert admitted >= package // need
    used = settled_tokens(first, customer.account_id, admitted)
    assert used == admitted * cost
    assert used <= package + admitted * (cost - min(need_of(raw, 4) for raw in bodies))  # the documented bound
    assert support.run_store(first, lambda s: s.reconcile()) == []


def _reserved(gateway, key: str) -> int:
    import urllib.request

    request = urllib.request.Request(f"{gateway.url}/api/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as r:
        return json.loads(r.read())["reserved_tokens"]
