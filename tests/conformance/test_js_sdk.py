"""The official OpenAI JS SDK (openai@6) on recorded traffic through the gateway: chunk iteration,
the `.stream()` helper and `runTools` tool loops."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conformance import corpus
from tests.conformance.conftest import PUBLIC
from tests.routes.test_js_sdk import JS, node  # noqa: F401  (the node fixture)

EXCHANGES = corpus.load()
STREAMS = [e for e in EXCHANGES if e.status == 200 and e.stream]


def answer(exchange: corpus.Exchange) -> dict:
    return {"status": exchange.status, "content_type": exchange.content_type, "body": exchange.replayed_body()}


def request_of(exchange: corpus.Exchange) -> dict:
    recorded = exchange.request or {}
    request = {"model": PUBLIC[exchange.provider], "messages": recorded.get("messages") or [{"role": "user", "content": "Say hello!"}]}
    for name in ("tools", "tool_choice"):
        if name in recorded:
            request[name] = recorded[name]
    return request


def by_file(name: str, turn: int = 0) -> corpus.Exchange:
    return next(e for e in EXCHANGES if e.file == name and e.turn == turn)


def scenarios() -> list[dict]:
    out = []
    for e in STREAMS:
        out.append({"name": f"iterate:{e.id}", "kind": "iterate", "request": request_of(e), "answers": [answer(e)], "exchange": e.id})
        helper = {**request_of(e), "stream": True}
        out.append({"name": f"helper:{e.id}", "kind": "helper", "request": helper, "answers": [answer(e)], "exchange": e.id})
    call, text = by_file("gemini-stream-forced-tool-call-bool"), by_file("gemini-stream-text-two-chunks")
    tools = call.request["tools"]
    out.append({
        "name": "runTools:gemini-stream", "kind": "runTools", "tools": tools,
        "request": {"model": "zowy-1", "stream": True, "messages": call.request["messages"]},
        "answers": [answer(call), answer(text)],
    })
    first, second = by_file("gemini-tool-loop-thought-signature-nonstream", 0), by_file("gemini-tool-loop-thought-signature-nonstream", 1)
    out.append({
        "name": "runTools:gemini-nonstream", "kind": "runTools", "tools": first.request["tools"],
        "request": {"model": "zowy-1", "messages": first.request["messages"]},
        "answers": [answer(first), answer(second)],
    })
    first, second = by_file("openai-tool-loop-stream", 0), by_file("openai-tool-loop-stream", 1)
    out.append({
        "name": "runTools:openai-stream", "kind": "runTools", "tools": first.request["tools"],
        "request": {"model": "zowy-1-pro", "stream": True, "messages": first.request["messages"]},
        "answers": [answer(first), answer(second)],
    })
    return out


def test_js_sdk_on_recorded_traffic(node, replay, replay_gateway, replay_customer):  # noqa: F811
    plan = scenarios()
    env = {**os.environ, "BASE_URL": replay_gateway.base_url, "API_KEY": replay_customer.key, "REPLAY_URL": replay.url}
    done = subprocess.run([node, "conformance.mjs"], cwd=JS, env=env, input=json.dumps(plan),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed, failed

    for e in STREAMS:
        iterated = results[f"iterate:{e.id}"]
        assert iterated["content"] == (e.text() or "")
        assert all(isinstance(i, int) for i in iterated["indexes"])
        assert len(iterated["ids"]) == 1 and iterated["ids"][0].startswith("chatcmpl-")
        if e.final_usage() is not None:
            assert iterated["usage"] == e.final_usage()
        helped = results[f"helper:{e.id}"]
        assert helped["content"] == (e.text() or "") and helped["model"] == PUBLIC[e.provider]
        assert [(name, args) for _, name, args in helped["calls"]] == e.tool_calls()
        assert all(call_id for call_id, _, _ in helped["calls"])

    for name, final, args in (
        ("runTools:gemini-stream", by_file("gemini-stream-text-two-chunks").text(), [{"value": True}]),
        ("runTools:gemini-nonstream", by_file("gemini-tool-loop-thought-signature-nonstream", 1).text(), [{}]),
        ("runTools:openai-stream", by_file("openai-tool-loop-stream", 1).text(), [{"country": "UK"}]),
    ):
        run = results[name]
        assert run["content"] == final and run["seen"] == args
        (assistant,) = [m for m in run["messages"] if m.get("calls")]
        (tool,) = [m for m in run["messages"] if m["role"] == "tool"]
        assert tool["tool_call_id"] == assistant["calls"][0][0] != ""
