"""Claude Code (``claude -p``) against the gateway, configured as the README tells a newcomer
(``ANTHROPIC_BASE_URL``, a key), with a scripted upstream: the model asks to run a Bash command,
Claude Code runs it, the model answers after its output. The run exits 0, the upstream saw the
command's real output, and the ledger holds both turns as Messages requests. And a file edit: Read,
then Edit, the change on disk. And against the demo model of `make run`."""
from __future__ import annotations

import json
import secrets
import time

import orjson
import pytest

from tests import support
from tests.clients import claude_code
from tests.conformance.replay import ReplayServer

pytestmark = pytest.mark.skipif(not claude_code.available(), reason="Claude Code is not installed (make test installs it)")

SIGNATURE = "EjQKMgG+c2lnbmF0dXJlLW9mLWEtc2NyaXB0ZWQtdXBzdHJlYW0="


@pytest.fixture(scope="module")
def scripted():
    server = ReplayServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scripted_gateway(tmp_path_factory, scripted):
    tmp = tmp_path_factory.mktemp("claude-code")
    key = f'api_key_env = "{support.UPSTREAM_KEY_ENV}"'
    models = tmp / "models.toml"
    models.write_text(f"""
[timeouts]
connect = 2.0
first_byte = 10.0
idle = 10.0
total = 60.0
[models.zowy-1]
targets = ["openai-like"]
[models.zowy-2]
targets = ["gemini-next"]
[targets.openai-like]
provider = "openai"
base_url = "{scripted.url}/v1"
model = "gpt-5.4-mini"
{key}
[targets.gemini-next]
provider = "gemini"
base_url = "{scripted.url}/v1beta/openai"
model = "gemini-3-flash"
{key}
""")
    gateway = support.start_gateway(tmp / "gw", models, ZOWY_UPSTREAM_ATTEMPTS="1")
    yield gateway
    gateway.stop()


def sse(docs: list[dict]) -> str:
    return "".join(f"data: {json.dumps(doc)}\n\n" for doc in docs) + "data: [DONE]\n\n"


def openai_call(command: str) -> str:
    base = {"id": "chatcmpl-upstream1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5.4-mini",
            "system_fingerprint": "fp_fake123"}
    args = json.dumps({"command": command, "description": "Read the token file"})
    return sse([
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "I'll read it."}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_upstream1", "type": "function",
                                                                   "function": {"name": "Bash", "arguments": ""}}]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args[:20]}}]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args[20:]}}]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3000, "completion_tokens": 30, "total_tokens": 3030}},
    ])


def gemini_call(command: str) -> str:
    """As Gemini sends a call: whole in one chunk, keys sorted, no index, with its thought signature."""
    args = json.dumps({"command": command, "description": "Read the token file"})
    doc = {"choices": [{"delta": {"role": "assistant", "tool_calls": [{
        "extra_content": {"google": {"thought_signature": SIGNATURE}},
        "function": {"arguments": args, "name": "Bash"}, "id": "", "type": "function"}]},
        "finish_reason": "stop", "index": 0}],
        "created": 1, "id": "gemini-upstream-1", "model": "gemini-3-flash", "object": "chat.completion.chunk",
        "usage": {"completion_tokens": 20, "prompt_tokens": 3000, "total_tokens": 3100}}
    return "data: " + orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n\ndata: [DONE]\n\n"


def openai_tool(name: str, arguments: dict, n: int) -> str:
    """One whole tool call, as an OpenAI target streams it."""
    base = {"id": f"chatcmpl-upstream-tool{n}", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5.4-mini"}
    return sse([
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": f"call_upstream{n}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3000 + n, "completion_tokens": 20, "total_tokens": 3020 + n}},
    ])


def openai_text(text: str) -> str:
    base = {"id": "chatcmpl-upstream2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5.4-mini"}
    words = text.split(" ")
    return sse([
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        *({**base, "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")}, "finish_reason": None}]}
          for i, w in enumerate(words)),
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3100, "completion_tokens": 8, "total_tokens": 3108}},
    ])


def ledger(gateway, account_id: str) -> list:
    from app.store.contracts.ledger import LedgerQuery

    return support.run_store(gateway, lambda s: s.ledger_page(account_id, LedgerQuery()))


@pytest.mark.parametrize("model", ["zowy-1", "zowy-2"])
def test_claude_code_runs_a_bash_turn(scripted, scripted_gateway, tmp_path, model):
    scripted.reset()
    customer = support.new_customer(scripted_gateway)
    token = secrets.token_hex(8)
    (tmp_path / "token.txt").write_text(f"token-{token}\n")
    answer = f"The file holds token-{token}."
    scripted.push({"status": 200, "content_type": "text/event-stream",
                   "body": (gemini_call if model == "zowy-2" else openai_call)("cat token.txt")})
    scripted.push({"status": 200, "content_type": "text/event-stream", "body": openai_text(answer)})
    started = time.monotonic()
    run = claude_code.run(scripted_gateway.url, customer.key, "Read token.txt with the Bash tool and tell me what it holds.",
                          tmp_path, model=model)
    assert run.returncode == 0, (run.stdout, run.stderr, scripted_gateway.process.log()[-3000:])
    result = run.result
    assert result["is_error"] is False and result["result"] == answer
    assert result["num_turns"] == 2
    assert time.monotonic() - started < 120
    first, second = scripted.received
    # The identity guard first, then Claude Code's own system text.
    assert first["messages"][0]["content"] == scripted_gateway.settings().persona_prompt
    assert first["messages"][1]["role"] == "system" and "x-anthropic-billing-header" in first["messages"][1]["content"]
    # The command really ran: its output went back to the model, after the call it answered.
    tool = next(m for m in second["messages"] if m["role"] == "tool")
    assert f"token-{token}" in tool["content"]
    call = next(m for m in second["messages"] if m.get("tool_calls"))["tool_calls"][0]
    assert call["function"]["name"] == "Bash" and call["id"] == tool["tool_call_id"]
    if model == "zowy-2":
        # Gemini's thought signature came back with its call, through Claude Code's history.
        assert call["extra_content"] == {"google": {"thought_signature": SIGNATURE}}
    entries = support.wait_until(lambda: (e := ledger(scripted_gateway, customer.account_id)) and len(e) == 2 and e)
    assert {e.api for e in entries} == {"messages"}
    assert sorted(e.total_tokens for e in entries) == ([3030, 3108] if model == "zowy-1" else [3100, 3108])


def test_claude_code_with_a_bearer_token(scripted, scripted_gateway, tmp_path):
    """ANTHROPIC_AUTH_TOKEN (sent as Authorization: Bearer) works as well as ANTHROPIC_API_KEY."""
    scripted.reset()
    customer = support.new_customer(scripted_gateway)
    scripted.push({"status": 200, "content_type": "text/event-stream", "body": openai_text("Hello there.")})
    run = claude_code.run(scripted_gateway.url, customer.key, "Say hello.", tmp_path, bearer=True)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.result["result"] == "Hello there."


def test_claude_code_with_the_model_in_its_environment(scripted, scripted_gateway, tmp_path):
    """The README's setup: no --model, the public model named by ANTHROPIC_MODEL (and for Claude
    Code's small background model), with non-essential traffic off: one request."""
    scripted.reset()
    customer = support.new_customer(scripted_gateway)
    scripted.push({"status": 200, "content_type": "text/event-stream", "body": openai_text("Hello from the environment.")})
    env = {"ANTHROPIC_MODEL": "zowy-1", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "zowy-1"}
    run = claude_code.run(scripted_gateway.url, customer.key, "Say hello.", tmp_path, model=None, env=env)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.result["result"] == "Hello from the environment."
    (sent,) = scripted.received
    assert sent["model"] == "gpt-5.4-mini"  # zowy-1's target here


def test_claude_code_edits_a_file(scripted, scripted_gateway, tmp_path):
    """A real edit: the model reads a file with Read, changes it with Edit, and Claude Code writes the
    change to disk; the model answers after the edit's result. Three Messages requests, three entries."""
    scripted.reset()
    customer = support.new_customer(scripted_gateway)
    notes = tmp_path / "notes.txt"
    notes.write_text("colour = blue\nsize = 3\n")
    scripted.push({"status": 200, "content_type": "text/event-stream",
                   "body": openai_tool("Read", {"file_path": str(notes)}, 1)})
    scripted.push({"status": 200, "content_type": "text/event-stream",
                   "body": openai_tool("Edit", {"file_path": str(notes), "old_string": "colour = blue",
                                                "new_string": "colour = green"}, 2)})
    scripted.push({"status": 200, "content_type": "text/event-stream", "body": openai_text("The colour is green now.")})
    run = claude_code.run(scripted_gateway.url, customer.key, "In notes.txt, change the colour from blue to green.",
                          tmp_path, tools="Read,Edit")
    assert run.returncode == 0, (run.stdout, run.stderr, scripted_gateway.process.log()[-3000:])
    assert run.result["is_error"] is False and run.result["result"] == "The colour is green now."
    assert notes.read_text() == "colour = green\nsize = 3\n"
    read, edit, answer = scripted.received
    # What Read returned went back to the model before it asked for the edit, and the edit's result after.
    assert "colour = blue" in next(m for m in edit["messages"] if m["role"] == "tool")["content"]
    last_tool = [m for m in answer["messages"] if m["role"] == "tool"][-1]
    assert "notes.txt" in last_tool["content"] and not last_tool["content"].startswith("Error")
    entries = support.wait_until(lambda: (e := ledger(scripted_gateway, customer.account_id)) and len(e) == 3 and e)
    assert {e.api for e in entries} == {"messages"}


def test_claude_code_against_the_demo_model(tmp_path):
    """A newcomer's first run against ``make run``: the demo model has Claude Code run the command the
    prompt quotes with its Bash tool, and answers with the command's output."""
    from app.core.config import DEFAULT_MODELS_FILE  # noqa: PLC0415

    gateway = support.start_gateway(tmp_path / "data", DEFAULT_MODELS_FILE, ZOWY_DEMO="on")
    try:
        key = (tmp_path / "data" / "demo-key").read_text().strip()
        work = tmp_path / "work"
        work.mkdir()
        (work / "hello-from-the-demo.txt").write_text("hi\n")
        run = claude_code.run(gateway.url, key, "run `ls` and tell me what you see", work, model=None,
                              env={"ANTHROPIC_MODEL": "zowy-1", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "zowy-1"})
        assert run.returncode == 0, (run.stdout, run.stderr, gateway.process.log()[-3000:])
        assert run.result["is_error"] is False and run.result["num_turns"] == 2
        assert "hello-from-the-demo.txt" in run.result["result"]
    finally:
        gateway.stop()
