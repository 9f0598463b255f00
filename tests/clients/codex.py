"""Codex CLI (``codex exec``) pointed at a gateway with the config.toml the README gives a newcomer,
run non-interactively in a private CODEX_HOME; nothing may leave 127.0.0.1."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "codex"
BINARY = ROOT / "node_modules" / ".bin" / "codex"

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_config(base_url: str, model: str, retries: int) -> str:
    """The config.toml the README gives a newcomer, pointed at ``base_url``, with the test's retries."""
    text = README.read_text()
    block = text[text.index("**Codex CLI**"):]
    block = block[block.index("```toml\n") + 8:]
    block = block[:block.index("```")]
    assert 'base_url = "http://127.0.0.1:8000/v1"' in block and 'model = "zowy-1"' in block
    block = block.replace('base_url = "http://127.0.0.1:8000/v1"', f'base_url = "{base_url}"\n'
                          f"stream_max_retries = {retries}\nrequest_max_retries = {retries}")
    return block.replace('model = "zowy-1"', f'model = "{model}"') + "\n[analytics]\nenabled = false\n"


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
    (codex_home / "config.toml").write_text(readme_config(base_url, model, retries))
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
