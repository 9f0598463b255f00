"""Locust profiles for the Zowy gateway (``/api/v1/chat/completions``).

One user class per profile; every task also carries its profile as a tag, so the ``Mixed`` class can
be narrowed with ``--tags``:

    chat-short         ChatShort        one short user message
    chat-long-history  ChatLongHistory  ~40-message conversation (~20 KB body)
    stream-long        StreamLong       a long streamed answer, read to the end; TTFB as its own metric
    tools              Tools            a function tool the model is asked to call
    vision             Vision           an image (base64 data URL) to the vision model
    mixed              Mixed            all of the above, weighted like real traffic
    limits             Limits           a few keys with default limits hammered; reports the 429 share

Keys (see ``python -m loadtest.keys``): ``ZOWY_LOADTEST_KEYS_FILE`` (the JSON it writes, or one key
per line) or ``ZOWY_LOADTEST_KEYS`` (comma-separated); the ``limits`` profile uses
``limits_keys`` from the file or ``ZOWY_LOADTEST_LIMITS_KEYS``. ``ZOWY_LOADTEST_FAKE=1`` adds the
fake upstream's directives (long streams, tool calls) for runs against the bundled fake provider.

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000 Mixed
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

from locust import FastHttpUser, between, constant, events, tag, task

PATH = os.environ.get("ZOWY_LOADTEST_PATH", "/api/v1/chat/completions")
MODEL = os.environ.get("ZOWY_LOADTEST_MODEL", "zowy-1")
TOOLS_MODEL = os.environ.get("ZOWY_LOADTEST_TOOLS_MODEL", "zowy-1-pro")
VISION_MODEL = os.environ.get("ZOWY_LOADTEST_VISION_MODEL", "zowy-2")
FAKE = os.environ.get("ZOWY_LOADTEST_FAKE", "") not in ("", "0", "false", "no")
STREAM_TOKENS = int(os.environ.get("ZOWY_LOADTEST_STREAM_TOKENS", "200"))


# ---------------------------------------------------------------- keys


def _load_keys() -> tuple[list[str], list[str]]:
    keys: list[str] = []
    limits: list[str] = []
    path = os.environ.get("ZOWY_LOADTEST_KEYS_FILE")
    if path:
        text = Path(path).read_text()
        try:
            doc = json.loads(text)
            keys, limits = list(doc.get("keys", [])), list(doc.get("limits_keys", []))
        except ValueError:
            keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    keys += [k.strip() for k in os.environ.get("ZOWY_LOADTEST_KEYS", "").split(",") if k.strip()]
    limits += [k.strip() for k in os.environ.get("ZOWY_LOADTEST_LIMITS_KEYS", "").split(",") if k.strip()]
    return keys, limits


KEYS, LIMITS_KEYS = _load_keys()
_key_cycle = itertools.cycle(KEYS or ["missing-key"])
_limits_cycle = itertools.cycle(LIMITS_KEYS or KEYS or ["missing-key"])
_cycle_lock = threading.Lock()


def next_key(limits: bool = False) -> str:
    with _cycle_lock:
        return next(_limits_cycle if limits else _key_cycle)


@events.test_start.add_listener
def _check_keys(environment, **_kw) -> None:
    if not KEYS:
        print("loadtest: no keys given (ZOWY_LOADTEST_KEYS_FILE / ZOWY_LOADTEST_KEYS): every request will be a 401")


# ---------------------------------------------------------------- payloads


def _directive(**kw) -> str:
    return " [[fake:" + ",".join(f"{k}={v}" for k, v in kw.items()) + "]]" if FAKE else ""


SYSTEM = {"role": "system", "content": "You are a helpful assistant for a travel company. Be concise."}


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _history() -> list[dict]:
    messages = [SYSTEM]
    for i in range(20):
        messages.append({"role": "user", "content": f"Question {i}: what else is worth seeing in the old city? " * 8})
        messages.append({"role": "assistant", "content": f"Answer {i}: the Registan, the bazaar, the observatory. " * 8})
    messages.append({"role": "user", "content": "Summarise our whole conversation in three bullet points."})
    return messages


_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _png(width: int = 32, height: int = 32, rgb: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A valid solid-colour PNG, made here so the vision profile needs no file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


_PNG = base64.b64encode(_png()).decode()

BODIES = {
    "chat-short": _dumps({"model": MODEL, "messages": [SYSTEM, {"role": "user", "content": "Hi! What is Samarkand famous for?"}],
                          "max_tokens": 128}),
    "chat-long-history": _dumps({"model": MODEL, "messages": _history(), "max_tokens": 256}),
    "stream-long": _dumps({"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
                           "max_tokens": 2048, "messages": [SYSTEM, {
                               "role": "user",
                               "content": "Write a long story about a caravan on the Silk Road."
                               + _directive(chunks=STREAM_TOKENS, delay=0.005)}]}),
    "tools": _dumps({"model": TOOLS_MODEL, "tools": [_TOOL], "tool_choice": "auto", "messages": [SYSTEM, {
        "role": "user", "content": "What's the weather in Tashkent? Please call a tool."}]}),
    "vision": _dumps({"model": VISION_MODEL, "max_tokens": 128, "messages": [SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _PNG, "detail": "low"}}]}]}),
    "limits": _dumps({"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}),
}


# ---------------------------------------------------------------- shared behaviour

_limits_counts = {"total": 0, "429": 0, "other": 0}
_limits_lock = threading.Lock()


class _Gateway(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 120.0
    limits_user = False

    def on_start(self) -> None:
        self.key = next_key(self.limits_user)
        self.headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def post(self, profile: str) -> None:
        with self.client.post(PATH, data=BODIES[profile], headers=self.headers, name=profile,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")

    def stream(self, profile: str) -> None:
        """Read a whole SSE stream: the request's time is the full stream, TTFB is fired on its own."""
        start = time.perf_counter()
        with self.client.post(PATH, data=BODIES[profile], headers=self.headers, name=profile,
                              stream=True, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.read() or b'')[:200]!r}")
                return
            first = response.read(1)
            ttfb = (time.perf_counter() - start) * 1000
            size = len(first)
            tail = b""
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                tail = (tail + chunk)[-64:]
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            response.request_meta["response_length"] = size
            events.request.fire(request_type="TTFB", name=f"{profile} ttfb", response_time=ttfb,
                                response_length=0, exception=None, context={})
            if b"[DONE]" not in tail:
                response.failure("stream ended without [DONE]")


# ---------------------------------------------------------------- the profiles


class ChatShort(_Gateway):
    @tag("chat-short")
    @task
    def chat_short(self) -> None:
        self.post("chat-short")


class ChatLongHistory(_Gateway):
    @tag("chat-long-history")
    @task
    def chat_long_history(self) -> None:
        self.post("chat-long-history")


class StreamLong(_Gateway):
    @tag("stream-long")
    @task
    def stream_long(self) -> None:
        self.stream("stream-long")


class Tools(_Gateway):
    @tag("tools")
    @task
    def tools(self) -> None:
        self.post("tools")


class Vision(_Gateway):
    @tag("vision")
    @task
    def vision(self) -> None:
        self.post("vision")


class Mixed(_Gateway):
    """Weighted like chat traffic: mostly short chats and streams, some history, tools and images."""

    wait_time = between(0, 0.05)

    @tag("mixed", "chat-short")
    @task(5)
    def chat_short(self) -> None:
        self.post("chat-short")

    @tag("mixed", "stream-long")
    @task(3)
    def stream_long(self) -> None:
        self.stream("stream-long")

    @tag("mixed", "chat-long-history")
    @task(2)
    def chat_long_history(self) -> None:
        self.post("chat-long-history")

    @tag("mixed", "tools")
    @task(1)
    def tools(self) -> None:
        self.post("tools")

    @tag("mixed", "vision")
    @task(1)
    def vision(self) -> None:
        self.post("vision")


class Limits(_Gateway):
    """Few keys with the default limits, hammered: 429 is the expected answer most of the time."""

    limits_user = True

    @tag("limits")
    @task
    def limits(self) -> None:
        with self.client.post(PATH, data=BODIES["limits"], headers=self.headers, catch_response=True,
                              name="limits") as response:
            status = response.status_code
            with _limits_lock:
                _limits_counts["total"] += 1
                if status == 429:
                    _limits_counts["429"] += 1
                elif status != 200:
                    _limits_counts["other"] += 1
            if status == 429:
                if not response.headers.get("retry-after"):
                    response.failure("429 without Retry-After")
                else:
                    response.success()
                events.request.fire(request_type="LIMIT", name="limits 429 share", response_time=0,
                                    response_length=0, exception=None, context={})
            elif status != 200:
                response.failure(f"{status}")


def limits_share() -> dict:
    with _limits_lock:
        total = _limits_counts["total"]
        return {**_limits_counts, "share_429": round(_limits_counts["429"] / total, 4) if total else None}


@events.quitting.add_listener
def _report_limits(environment, **_kw) -> None:
    share = limits_share()
    if share["total"]:
        print(f"limits profile: {share['total']} requests, {share['429']} answered 429 "
              f"({100 * share['share_429']:.1f}%), {share['other']} other errors; "
              f"{len(LIMITS_KEYS) or len(KEYS)} key(s) hammered")
