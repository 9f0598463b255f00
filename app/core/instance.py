"""What a supervisor tells its workers about the instance: how many workers it runs and how many of
them serve. The supervisor rewrites one small JSON file whenever that changes; /readyz reads it."""
from __future__ import annotations

import os
from pathlib import Path

import orjson


def state_path(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "run" / f"{name}.workers.json"


def publish(path: Path, expected: int, ready: int, pid: int) -> None:
    """Replace the state file in one rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_bytes(orjson.dumps({"expected": expected, "ready": ready, "supervisor": pid}))
    os.replace(temp, path)


def read(path: Path | None) -> dict | None:
    """The workers' state, or None when no supervisor publishes one."""
    if path is None:
        return None
    try:
        state = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None
