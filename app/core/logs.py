"""Log output: one JSON object per line (or plain text), never message content or keys."""
from __future__ import annotations

import logging
import os
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, fmt: str) -> None:
    """Send every log record to stderr, formatted once, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s %(fields)s", defaults={"fields": ""}))
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("sanic.root", "sanic.error", "sanic.server"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("sanic.access").disabled = True


class AccessLog:
    """One line per request, in the same format as the other logs, written in batches: a request
    only appends to a list; the worker's periodic flush makes one write for many lines."""

    def __init__(self, fmt: str, fd: int = 2, enabled: bool = True) -> None:
        self.enabled = enabled
        self._json = fmt == "json"
        self._fd = fd
        self._lines: list[bytes] = []

    def write(self, fields: dict) -> None:
        if self._json:
            line = orjson.dumps({"ts": round(time.time(), 3), "level": "info", "logger": "zowy.access", "msg": "request", **fields})
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            line = f"{stamp} INFO zowy.access request {' '.join(f'{k}={v}' for k, v in fields.items())}".encode()
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            data = b"\n".join(self._lines) + b"\n"
            self._lines = []
            try:
                os.write(self._fd, data)
            except OSError:
                pass

    def close(self) -> None:
        self.flush()
