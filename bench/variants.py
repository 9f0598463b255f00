"""Gateway variants in one run: ``gateway@<rev>`` runs the gateway from a git worktree of <rev>
(detached, under the run's temp dir, removed at the end), or from <rev> itself when it is a directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .procs import ROOT


def is_gateway(key: str) -> bool:
    return key == "gateway" or key.startswith("gateway@")


def revision_of(key: str) -> str | None:
    """``gateway@HEAD~3`` -> ``HEAD~3``; plain ``gateway`` -> None."""
    return key.split("@", 1)[1] if "@" in key else None


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


class Trees:
    """The source trees gateway variants run from; :meth:`close` removes the worktrees it added."""

    def __init__(self, work: Path, default: Path) -> None:
        self.work, self.default = work, default
        self.added: list[Path] = []

    def tree(self, key: str) -> tuple[Path, dict]:
        """(the directory to run ``python -m app`` in, what to report about it)."""
        rev = revision_of(key)
        if rev is None:
            return self.default, {"tree": str(self.default), **self._describe(self.default)}
        if Path(rev).is_dir():
            path = Path(rev).resolve()
            return path, {"tree": str(path), **self._describe(path)}
        sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
        path = self.work / f"tree-{sha[:12]}"
        if not path.exists():
            _git("worktree", "add", "--detach", "--quiet", str(path), sha)
            self.added.append(path)
        _check_imports_from(path)
        return path, {"tree": str(path), "revision": rev, "commit": sha[:12]}

    @staticmethod
    def _describe(path: Path) -> dict:
        try:
            info = {"commit": _git("rev-parse", "--short=12", "HEAD", cwd=path)}
            info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=path))
            return info
        except (RuntimeError, OSError):
            return {}

    def close(self) -> None:
        for path in self.added:
            try:
                _git("worktree", "remove", "--force", str(path))
            except (RuntimeError, OSError):
                pass
        if self.added:
            try:
                _git("worktree", "prune")
            except (RuntimeError, OSError):
                pass
        self.added.clear()


def _check_imports_from(path: Path) -> None:
    """``python -m app`` run in ``path`` must import that tree's ``app``, not the installed one."""
    out = subprocess.run([sys.executable, "-c", "import app, os; print(os.path.realpath(app.__file__))"],
                         cwd=path, capture_output=True, text=True, timeout=60)
    where = out.stdout.strip()
    if not where.startswith(str(path.resolve())):
        raise RuntimeError(f"the gateway in {path} imports app from {where or out.stderr[-500:]}")
