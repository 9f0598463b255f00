"""The official OpenAI JS SDK (openai@6 on Node) against the running gateway."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.fake_upstream import reply_text

JS = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JS SDK smoke test needs Node 20+")
    if not (JS / "node_modules" / "openai").exists():
        pytest.skip("tests/js/node_modules is missing: run `make test` (it installs openai@6 with npm)")
    return node


def test_js_sdk_smoke(node, gateway, customer):
    env = {**os.environ, "BASE_URL": gateway.base_url, "API_KEY": customer.key}
    done = subprocess.run([node, "smoke.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["nonStream"]["content"] == reply_text(8)
    assert out["nonStream"]["model"] == "zowy-1"
    assert out["nonStream"]["id"].startswith("chatcmpl-")
    assert out["nonStream"]["usage"]["total_tokens"] > 0
    assert out["stream"]["content"] == reply_text(8)
    assert out["stream"]["models"] == ["zowy-1-pro"]
    assert out["stream"]["usage"]["completion_tokens"] == 8
    assert out["tools"] == {"name": "get_current_time", "arguments": {"city": "Tashkent"}, "finish": "tool_calls"}
    assert out["error"] == {"raised": True, "authentication": True, "status": 401, "code": "invalid_api_key"}
    assert out["badRequest"] == {"raised": True, "badRequest": True, "param": "temperature"}


def test_js_sdk_responses(node, gateway, customer):
    env = {**os.environ, "BASE_URL": f"{gateway.url}/v1", "API_KEY": customer.key}
    done = subprocess.run([node, "responses.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["create"]["text"] == reply_text(8) and out["create"]["id"].startswith("resp_")
    assert out["create"]["model"] == "zowy-1" and out["create"]["status"] == "completed" and out["create"]["total"] > 0
    assert out["stream"] == {"text": reply_text(8), "first": ["response.created", "response.in_progress"], "last": "response.completed"}
    assert out["helper"] == {"deltas": reply_text(8), "final": reply_text(8)}
    assert out["tools"] == {"name": "get_weather", "arguments": {"city": "Tashkent"}, "follow": reply_text(8),
                            "kinds": ["reasoning", "function_call"]}
    assert out["stored"] == {"same": True, "items": 1, "gone": 404}
    assert out["badRequest"] == {"raised": True, "status": 400, "param": "input[0].content[0].type"}
