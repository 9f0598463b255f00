"""Balance reservations end to end: bursts of 100 concurrent requests, streamed and not, over 2
gateway instances x 2 workers sharing one store, against packages of a few thousand tokens. Nothing
is overdrawn beyond what admitted requests used over their own reservations, and every request a
package could cover is served."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson

from app.billing.need import request_need
from app.core.config import DEFAULT_PERSONA_PROMPT, Settings
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


def upstream_body(upstream, marker: str) -> dict:
    """The body the fake upstream received for the one request whose text holds ``marker``."""
    import urllib.request

    with urllib.request.urlopen(f"{upstream.url}/_fake/requests") as r:
        records = json.loads(r.read())
    (found,) = [r["body"] for r in records if marker in json.dumps(r.get("body"))]
    return found


def chat(gateway, key: str, doc: dict) -> tuple[int, dict | list[dict]]:
    """One request; the JSON answer, or a stream's chunks."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{gateway.url}/api/v1/chat/completions", data=orjson.dumps(doc),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    if doc.get("stream"):
        return status, [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    return status, json.loads(raw)


def prompt_of(doc: dict) -> int:
    """What a request reserves for its prompt (and the guard prompt)."""
    return request_need(len(orjson.dumps(doc)), 0, 0, len(DEFAULT_PERSONA_PROMPT.encode()), 0)


def test_a_small_balance_serves_answers_limited_to_what_is_left(cluster, upstreams):
    first, second = cluster
    package = 3000  # less than one default answer (4,096 tokens)
    customer = support.new_customer(first, tokens=package)
    left = package
    # A short answer, then one that runs into the limit (streamed): both served, their completion
    # limited to what the balance holds beyond the prompt.
    for i, (gateway, chunks, finish) in enumerate([(first, 1000, "stop"), (second, 5000, "length")]):
        marker = f"small-balance-{customer.account_id}-{i}"
        doc = {"model": "zowy-1", "stream": i == 1, "stream_options": {"include_usage": True} if i == 1 else None,
               "messages": [{"role": "user", "content": f"{marker} [[fake:honor_max=1,chunks={chunks}]]"}]}
        status, answer = chat(gateway, customer.key, doc)
        assert status == 200, answer
        limit = left - prompt_of(doc)  # the whole of what is left, less the prompt
        sent = upstream_body(upstreams["gemini"], marker)
        assert sent["max_tokens"] == limit and "max_completion_tokens" not in sent
        if doc["stream"]:
            finishes = [c["choices"][0]["finish_reason"] for c in answer if c["choices"] and c["choices"][0]["finish_reason"]]
            usage = answer[-1]["usage"]
        else:
            finishes, usage = [answer["choices"][0]["finish_reason"]], answer["usage"]
        assert finishes == [finish] and usage["completion_tokens"] == min(chunks, limit)
        left -= usage["total_tokens"]
        assert settled_tokens(first, customer.account_id, i + 1) == package - left
        support.wait_until(lambda: _reserved(first, customer.key) == 0, timeout=15)
    # 402 only once what is left cannot hold the prompt and a useful answer; the message says so.
    status, answer = chat(first, customer.key, doc)
    least = prompt_of(doc) + Settings().min_completion_tokens
    assert status == 402 and 0 < left < least
    assert answer["error"]["code"] == "insufficient_quota"
    assert f"at least {least} tokens" in answer["error"]["message"] and f"has {left} tokens left" in answer["error"]["message"]
    assert support.run_store(first, lambda s: s.reconcile()) == []


def test_a_callers_larger_max_tokens_is_lowered_for_every_choice(cluster, upstreams):
    first, _ = cluster
    customer = support.new_customer(first, tokens=3000)
    marker = f"lowered-{customer.account_id}"
    # A caller's max_tokens the balance holds is sent as it is.
    doc = {"model": "zowy-1-pro", "max_tokens": 300,
           "messages": [{"role": "user", "content": f"{marker}-1 [[fake:honor_max=1]]"}]}
    status, answer = chat(first, customer.key, doc)
    assert status == 200 and upstream_body(upstreams["openai"], f"{marker}-1")["max_completion_tokens"] == 300
    left = 3000 - settled_tokens(first, customer.account_id, 1)
    support.wait_until(lambda: _reserved(first, customer.key) == 0, timeout=15)
    # One that asks for more than is left, for two choices: each gets its half of what is left.
    doc = {"model": "zowy-1-pro", "n": 2, "max_tokens": 10_000,
           "messages": [{"role": "user", "content": f"{marker}-2 [[fake:honor_max=1,chunks=5000]]"}]}
    status, answer = chat(first, customer.key, doc)
    assert status == 200, answer
    limit = (left - prompt_of(doc)) // 2
    sent = upstream_body(upstreams["openai"], f"{marker}-2")  # the target takes max_completion_tokens
    assert sent["max_completion_tokens"] == limit and "max_tokens" not in sent
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "length"]
    assert answer["usage"]["completion_tokens"] == 2 * limit
    assert settled_tokens(first, customer.account_id, 2) == 3000 - left + answer["usage"]["total_tokens"] <= 3000
