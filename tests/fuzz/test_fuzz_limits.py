"""Bodies at the shipped default limits (16 MiB body, 2,000,000 text characters, 2048 messages, 128
tools, 10 MiB image data URL), one step under and one over, on the suite's shared gateway."""
from __future__ import annotations

import time

import pytest

from app.core.config import RequestLimits, Settings
from tests import support
from tests.fuzz import strategies as fs
from tests.fuzz.conftest import batch
from tests.fuzz.harness import Harness

MAX_BODY = Settings().max_body_bytes
LIMITS = RequestLimits()


@pytest.fixture(scope="module")
def shared(gateway, upstreams):
    customer = support.new_customer(gateway, tokens=10**12, per_minute=10**9, per_hour=10**9)
    hosts = tuple(f"127.0.0.1:{p.port}" for p in upstreams.values()) + ("googleapis", "api.openai.com")
    harness = Harness(gateway, customer.key, customer.account_id, hosts, {}, whole_ledger=False)
    yield harness
    harness.close()


def body(**fields) -> bytes:
    return fs.dumps({"model": "zowy-1", "messages": [{"role": "user", "content": "hi"}], **fields})


def text(chars: int) -> bytes:
    return body(messages=[{"role": "user", "content": "a" * chars}])


def padded(raw: bytes, size: int) -> bytes:
    return raw + b" " * (size - len(raw))


def image(size: int) -> bytes:
    prefix = "data:image/png;base64,"
    return body(model="zowy-2", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": prefix + "A" * (size - len(prefix))}}]}])


CASES = [
    ("text-at-limit", lambda: text(LIMITS.text_chars), 200, None),
    ("text-over-limit", lambda: text(LIMITS.text_chars + 1), 400, "messages"),
    ("body-at-limit", lambda: padded(body(), MAX_BODY), 200, None),
    ("body-over-limit", lambda: padded(body(), MAX_BODY + 1), 413, None),
    ("messages-at-limit", lambda: body(messages=[{"role": "user", "content": "m"}] * LIMITS.messages), 200, None),
    ("messages-over-limit", lambda: body(messages=[{"role": "user", "content": "m"}] * (LIMITS.messages + 1)), 400, "messages"),
    ("tools-at-limit", lambda: body(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(LIMITS.tools)]), 200, None),
    ("tools-over-limit", lambda: body(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(LIMITS.tools + 1)]), 400, "tools"),
    ("image-over-limit", lambda: image(LIMITS.image_url_bytes + 1), 400, "messages[0].content[0].image_url.url"),
    ("nesting-1M", lambda: b"[" * 1_000_000, 400, "body"),
    ("nesting-in-limit-body", lambda: padded(b'{"model":"zowy-1","messages":' + b"[" * 5_000_000 + b"]" * 5_000_000 + b"}", MAX_BODY), 400, None),
    ("many-keys", lambda: b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],' + b",".join(b'"k%d":1' % i for i in range(50_000)) + b"}", 400, None),
]


def test_default_limits(shared):
    with batch(shared):
        for name, make, status, param in CASES:
            started = time.perf_counter()
            r = shared.chat("default-limits", make())
            assert time.perf_counter() - started < 10, name
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            if param is not None:
                assert r.json()["error"]["param"] == param, (name, r.text[:300])
