"""Codex CLI (``codex exec``) pointed at a gateway, as the README tells a newcomer to configure it,
run non-interactively in a private CODEX_HOME; nothing may leave 127.0.0.1."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "codex"
BINARY = ROOT / "node_modules" / ".bin" / "codex"

CONFIG = """\
model = "{model}"
model_provider = "zowy"
check_for_update_on_startup = false
web_search = "disabled"

[model_providers.zowy]
name = "Zowy"
base_url = "{base_url}"
wire_api = "responses"
env_key = "ZOWY_API_KEY"
stream_max_retries = {retries}
request_max_retries = {retries}

[analytics]
enabled = false

[features]
plugins = false
apps = false
remote_plugin = false
"""


@dataclass
class CodexRun:
    returncode: int
    events: list[dict]
    stdout: str
    stderr: str

    def items(self, kind: str) -> list[dict]:
        return [e["item"] for e in self.events if e.get("type") == "item.completed" and e["item"].get("type") == kind]


def available() -> bool:
    return BINARY.exists()


def run(base_url: str, key: str, prompt: str, home: Path, model: str = "zowy-1", retries: int = 0,
        timeout: float = 150.0) -> CodexRun:
    """``codex exec --json`` with the README's config.toml against ``base_url`` (…/v1)."""
    codex_home = home / "codex_home"
    work = home / "work"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CONFIG.format(model=model, base_url=base_url, retries=retries))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "ZOWY_API_KEY": key,
        # Anything not for 127.0.0.1 goes to a closed port.
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = subprocess.run(
        [str(BINARY), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "--json", prompt],
        cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    events = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return CodexRun(proc.returncode, events, proc.stdout, proc.stderr)
