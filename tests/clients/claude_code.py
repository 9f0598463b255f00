"""Claude Code (``claude -p``) run non-interactively against a gateway, sealed off from everything
else: its own home and config directory, non-essential traffic off, any connection to another host
sent to a closed port on 127.0.0.1. Installed by ``make test`` (tests/clients/claude-code)."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

BINARY = Path(__file__).resolve().parent / "claude-code" / "node_modules" / ".bin" / "claude"


def available() -> bool:
    return BINARY.exists()


def environment(base_url: str, api_key: str, home: Path, *, bearer: bool = False) -> dict[str, str]:
    """The environment a newcomer sets to point Claude Code at the gateway (README), and the
    switches that keep a test run on 127.0.0.1."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": base_url,
        # ANTHROPIC_AUTH_TOKEN sends the key as a Bearer token; ANTHROPIC_API_KEY as x-api-key.
        ("ANTHROPIC_AUTH_TOKEN" if bearer else "ANTHROPIC_API_KEY"): api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        # Fail fast: Claude Code's own retry loop otherwise waits minutes on a 5xx.
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        """The ``--output-format json`` result object."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run(base_url: str, api_key: str, prompt: str, workdir: Path, *, model: str | None = "zowy-1", bearer: bool = False,
        timeout: float = 150.0, env: dict[str, str] | None = None, tools: str = "Bash") -> Run:
    """``claude -p PROMPT [--model MODEL] --allowedTools TOOLS --output-format json`` in ``workdir``."""
    home = workdir / ".home"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    chosen = ["--model", model] if model else []
    completed = subprocess.run(
        [str(BINARY), "-p", prompt, *chosen, "--allowedTools", tools, "--output-format", "json"],
        cwd=workdir, env={**environment(base_url, api_key, home, bearer=bearer), **(env or {})},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)
