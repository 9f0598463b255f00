"""Codex CLI (`codex exec`) against the gateway, configured as the README says: a scripted model
calls its shell tool (exec_command), Codex runs the command, the model answers after its output;
and the same against the demo model of `make run`."""
from __future__ import annotations

import json
import re

import pytest

from tests import support
from tests.clients import codex
from tests.clients.scripted import SCRIPTED_MODEL, Answer, ScriptedUpstream, last_tool_output, models_file

pytestmark = pytest.mark.skipif(not codex.available(), reason="Codex CLI missing: `make test` installs it with npm")

PROMPT = "run `echo hello-from-codex` and tell me its output"


def script(body: dict) -> Answer:
    result = last_tool_output(body)
    if result is not None:
        return Answer(text="The command printed: " + result.strip().splitlines()[-1])
    return Answer(calls=[("exec_command", json.dumps({"cmd": "echo hello-from-codex"}))])


def check_run(run: codex.CodexRun) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    commands = run.items("command_execution")
    assert len(commands) == 1 and "echo hello-from-codex" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0 and commands[0]["aggregated_output"].strip() == "hello-from-codex"
    messages = run.items("agent_message")
    assert messages and "hello-from-codex" in messages[-1]["text"]
    assert any(e["type"] == "turn.completed" for e in run.events)


def test_codex_exec_runs_the_shell_tool(tmp_path):
    upstream = ScriptedUpstream(script).start()
    gateway = support.start_gateway(tmp_path / "data", models_file(tmp_path / "models.toml", upstream.url))
    try:
        customer = support.new_customer(gateway)
        run = codex.run(f"{gateway.url}/v1", customer.key, PROMPT, tmp_path / "codex")
        check_run(run)
        assert SCRIPTED_MODEL not in run.stdout
        first, second = upstream.received
        assert first["messages"][0] == {"role": "system", "content": gateway.settings().persona_prompt}  # the guard first
        assert "exec_command" in [t["function"]["name"] for t in first["tools"]]
        assert second["messages"][-1]["role"] == "tool" and "hello-from-codex" in second["messages"][-1]["content"]
        usage = [e for e in run.events if e["type"] == "turn.completed"][0]["usage"]
        assert usage["input_tokens"] == 100 and usage["output_tokens"] == 18
        entries = support.wait_until(lambda: _entries(gateway, customer.account_id, 2), timeout=10)
        assert [e.stream for e in entries] == [True, True]
        assert all(getattr(e, "api", "responses") == "responses" for e in entries)
        assert sum(e.total_tokens for e in entries) == usage["input_tokens"] + usage["output_tokens"]
    finally:
        gateway.stop()
        upstream.stop()


def test_codex_exec_against_the_demo_model(tmp_path):
    from app.core.config import DEFAULT_MODELS_FILE  # noqa: PLC0415

    gateway = support.start_gateway(tmp_path / "data", DEFAULT_MODELS_FILE, ZOWY_DEMO="on")
    try:
        key = (tmp_path / "data" / "demo-key").read_text().strip()
        run = codex.run(f"{gateway.url}/v1", key, PROMPT, tmp_path / "codex")
        check_run(run)
    finally:
        gateway.stop()


def _entries(gateway, account_id: str, count: int):
    """The account's ledger entries once there are ``count`` of them."""
    from app.store.contracts.ledger import LedgerQuery  # noqa: PLC0415

    entries = support.run_store(gateway, lambda s: s.ledger_page(account_id, LedgerQuery(limit=10)))
    return entries if len(entries) == count else None


def test_codex_routes_a_namespaced_call_to_its_tool(tmp_path):
    """Codex's multi-agent tools come as a namespace, flattened for the model: a call of one of them
    goes back to Codex with its namespace, and Codex runs that tool (here: an error for no agent)."""

    def namespaced(body: dict) -> Answer:
        result = last_tool_output(body)
        if result is not None:
            return Answer(text="The tool said: " + result)
        return Answer(calls=[("multi_agent_v1__wait_agent", json.dumps({"targets": ["nobody"], "timeout_ms": 10}))])

    upstream = ScriptedUpstream(namespaced).start()
    gateway = support.start_gateway(tmp_path / "data", models_file(tmp_path / "models.toml", upstream.url))
    try:
        run = codex.run(f"{gateway.url}/v1", support.new_customer(gateway).key, "wait for the agents", tmp_path / "codex")
        assert run.returncode == 0, run.stderr[-3000:]
        first, second = upstream.received
        assert "multi_agent_v1__wait_agent" in [t["function"]["name"] for t in first["tools"]]
        assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__wait_agent"
        assert "invalid agent id nobody" in second["messages"][-1]["content"]
        assert "invalid agent id nobody" in run.items("agent_message")[-1]["text"]
    finally:
        gateway.stop()
        upstream.stop()
