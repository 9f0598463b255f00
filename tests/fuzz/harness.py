"""The fuzzer's side of the wire: send one case to a running gateway, check every property on its
response, and keep the books (counts, statuses, request ids) that the batch checks need.

Properties of every response: no 5xx (unless a known bug in ``known_bugs`` explains it), the OpenAI
error envelope on every error (``param`` naming a field for field problems), an ``x-request-id``,
nothing that names an upstream, no hang. Per batch: the ledger grew by exactly the number of
requests that reached an upstream and holds no entry for a rejected one, ``/healthz`` answers, the
gateway process lives and its log shows no unexpected traceback.
"""
from __future__ import annotations

import collections
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2

from tests import support
from tests.conftest import http, leaks, record
from tests.fuzz import known_bugs

CHAT_PATHS = ("/api/v1/chat/completions", "/v1/chat/completions")
# Where a chat request's field errors may point besides the request's own fields.
NON_FIELD_PARAMS = {"body", "content-type", "headers"}
# Extra markers a caller must never see (the session-wide check in tests/conftest.py covers the rest).
STACK_MARKERS = (b'file "/', b'.py", line', b"site-packages", b"fake_provider_key", b"sanic.exceptions")
CASE_TIMEOUT = 15.0


@dataclass
class Tally:
    """What one kind of case did over the session, for the terminal summary."""

    cases: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    known: collections.Counter = field(default_factory=collections.Counter)


TALLIES: dict[str, Tally] = collections.defaultdict(Tally)


@dataclass
class Sent:
    kind: str
    method: str
    path: str
    status: int
    request_id: str | None
    reached_upstream: bool


class FuzzFailure(AssertionError):
    pass


class Harness:
    """One fuzz target: a running gateway, the fuzzing account's key, a pooled recording client."""

    def __init__(self, gateway: support.Gateway, key: str, account_id: str, hosts: tuple[str, ...],
                 victim: dict[str, str], whole_ledger: bool = True) -> None:
        self.gateway = gateway
        # On a gateway of its own the fuzzer checks the whole ledger; on a shared one, its account's share.
        self.whole_ledger = whole_ledger
        self.key = key
        self.account_id = account_id
        self.hosts = hosts
        self.victim = victim
        self.client: httpx2.Client = http(gateway)
        self.client.timeout = httpx2.Timeout(CASE_TIMEOUT)
        self.sent: list[Sent] = []
        self.known_log_signatures: set[str] = set()
        self._log_offset = len(gateway.process.log())  # what others did to a shared gateway is theirs
        self._chat_fields: set[str] | None = None

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------------------- sending

    @property
    def chat_fields(self) -> set[str]:
        if self._chat_fields is None:
            doc = self.client.get("/openapi.json").json()
            self._chat_fields = set(doc["components"]["schemas"]["ChatCompletionRequest"]["properties"])
        return self._chat_fields

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **extra}

    def chat(self, kind: str, body: bytes, headers: Any = None, path: str = CHAT_PATHS[0]) -> httpx2.Response:
        return self.send(kind, "POST", path, headers if headers is not None else self.headers(), body)

    def send(self, kind: str, method: str, path: str, headers: Any, body: bytes | None = None,
             chunked: bool = False) -> httpx2.Response:
        """Send one case (``chunked``: as a chunked upload) and check its response; raises FuzzFailure."""
        tally = TALLIES[kind]
        started = time.perf_counter()
        content = iter([body[:7], body[7:]]) if chunked and body is not None else body
        try:
            response = self.client.request(method, path, headers=headers, content=content)
        except httpx2.TimeoutException:
            raise FuzzFailure(f"[{kind}] no answer within {CASE_TIMEOUT}s (hang): {method} {path!r} {_show(body)}") from None
        except httpx2.TransportError as exc:
            raise FuzzFailure(f"[{kind}] connection failed ({exc!r}): {method} {path!r} {_show(body)}") from None
        elapsed = time.perf_counter() - started
        tally.seconds += elapsed
        tally.slowest = max(tally.slowest, elapsed)
        tally.cases += 1
        tally.statuses[response.status_code] += 1
        known = self.check(kind, method, path, body, response)
        if known:
            tally.known[known] += 1
        self.sent.append(Sent(kind, method, path, response.status_code, response.headers.get("x-request-id"),
                              reached_upstream(response)))
        return response

    # ------------------------------------------------------------------------------ checking

    def check(self, kind: str, method: str, path: str, body: bytes | None, response: httpx2.Response) -> str | None:
        """Check one response; returns the id of the known bug that explains a violation, if any."""
        status = response.status_code
        content = response.content
        where = f"[{kind}] {method} {path!r} -> {status}\nrequest: {_show(body)}\nresponse: {content[:600]!r}"
        head = b"\n".join(k + b": " + v for k, v in response.headers.raw)
        found = leaks(head + b"\n" + content, self.hosts)
        found += [m.decode() for m in STACK_MARKERS if m in (head + content).lower()]
        if status >= 500:
            bug = known_bugs.explain(method, path, body, status)
            if bug is not None:
                self.known_log_signatures.add(known_bugs.SIGNATURES[bug])
                return bug
            raise FuzzFailure(f"5xx: {where}")
        if found:
            raise FuzzFailure(f"leak {found}: {where}")
        if "x-request-id" not in response.headers:
            raise FuzzFailure(f"no x-request-id: {where}")
        if status >= 400 and method != "HEAD":
            self.check_envelope(where, path, body, response)
        elif status == 200 and method == "POST" and path.split("?")[0] in CHAT_PATHS:
            self.check_completion(where, body, response)
        return None

    def check_envelope(self, where: str, path: str, body: bytes | None, response: httpx2.Response) -> None:
        try:
            doc = response.json()
        except ValueError:
            raise FuzzFailure(f"error body is not JSON: {where}") from None
        if not isinstance(doc, dict) or set(doc) != {"error"} or not isinstance(doc["error"], dict):
            raise FuzzFailure(f"not the OpenAI envelope: {where}")
        error = doc["error"]
        if set(error) != {"message", "type", "param", "code"}:
            raise FuzzFailure(f"envelope fields {sorted(error)}: {where}")
        if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
            raise FuzzFailure(f"envelope message/type: {where}")
        if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
            raise FuzzFailure(f"envelope param/code types: {where}")
        if response.status_code == 400 and error["code"] != "invalid_request":
            if path.split("?")[0] in CHAT_PATHS:
                self.check_param(where, error, body)
            elif not error["param"]:
                raise FuzzFailure(f"400 without param: {where}")

    def check_param(self, where: str, error: dict, body: bytes | None) -> None:
        """A 400 the gateway raised names the field at fault (or the body/headers as a whole)."""
        param = error["param"]
        if not param:
            raise FuzzFailure(f"400 without param: {where}")
        if error["code"] == "unknown_parameter":
            return  # names the caller's own unknown key, which may be anything
        top = re.split(r"[.\[]", param, maxsplit=1)[0]
        if top not in self.chat_fields and top not in NON_FIELD_PARAMS:
            raise FuzzFailure(f"param {param!r} names no field: {where}")

    def check_completion(self, where: str, body: bytes | None, response: httpx2.Response) -> None:
        try:
            model = json.loads(body)["model"]
        except Exception:
            model = None
        ctype = response.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            if not response.content.endswith(b"data: [DONE]\n\n") or b'"error"' in response.content:
                raise FuzzFailure(f"stream did not end cleanly: {where}")
            return
        doc = response.json()
        if doc.get("object") != "chat.completion" or not str(doc.get("id", "")).startswith("chatcmpl-"):
            raise FuzzFailure(f"not a chat.completion: {where}")
        if model is not None and doc.get("model") != model:
            raise FuzzFailure(f"model {doc.get('model')!r} is not the public name {model!r}: {where}")

    # --------------------------------------------------------------------------- batch checks

    def alive(self) -> None:
        """The gateway process runs, answers /healthz, and logged no unexpected traceback."""
        if self.gateway.process.popen.poll() is not None:
            raise FuzzFailure(f"gateway exited with {self.gateway.process.popen.returncode}:\n{self.gateway.process.log()[-3000:]}")
        r = self.client.get("/healthz")
        if r.status_code != 200:
            raise FuzzFailure(f"/healthz answered {r.status_code}")
        self.check_log()

    def check_log(self) -> None:
        log = self.gateway.process.log()
        fresh, self._log_offset = log[self._log_offset:], len(log)
        for line in fresh.splitlines():
            lowered = line.lower()
            if "traceback" not in lowered and "unhandled" not in lowered and '"level":"critical"' not in lowered:
                continue
            if any(signature in line for signature in self.known_log_signatures):
                continue
            bug = next((b for b, texts in known_bugs.LOG_ONLY.items() if all(t in line for t in texts)), None)
            if bug is not None:
                TALLIES["gateway-log"].known[bug] += 1
                continue
            raise FuzzFailure(f"gateway log shows an unexpected error:\n{line[:3000]}")

    def ledger_snapshot(self) -> tuple[int, int]:
        async def count(store):
            return await store.ledger_count(self.account_id), await store.ledger_count()

        return support.run_store(self.gateway, count)

    def check_ledger(self, before: tuple[int, int], sent: list[Sent]) -> None:
        """The ledger grew by exactly the requests that reached an upstream, none of them rejected."""
        reached = sum(1 for s in sent if s.reached_upstream)
        # Only the fuzzing key can get a request through on this gateway, so both counts move together.
        ours = reached
        rejected = [s.request_id for s in sent if not s.reached_upstream and s.request_id]
        expected = (before[0] + ours, before[1] + reached)

        def snapshot() -> tuple[int, int]:
            now = self.ledger_snapshot()
            return now if self.whole_ledger else (now[0], expected[1])

        deadline = time.monotonic() + 10
        now = snapshot()
        while now != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            now = snapshot()
        time.sleep(0.2)  # a late extra entry would show now
        now = snapshot()

        async def entries(store):
            return [rid for rid in rejected if await store.ledger_entry(rid) is not None]

        metered_rejections = support.run_store(self.gateway, entries)
        if metered_rejections:
            bad = [s for s in sent if s.request_id in set(metered_rejections)]
            raise FuzzFailure(f"ledger entries for rejected requests: {bad[:5]}")
        if now != expected:
            raise FuzzFailure(f"ledger (account, all) went {before} -> {now}, expected {expected} "
                              f"({ours} of ours and {reached} in all reached an upstream)")


def reached_upstream(response: httpx2.Response) -> bool:
    """A response an upstream produced: a completion or a stream, or an upstream's own refusal."""
    if response.status_code == 200:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return True
        # Anywhere in the body: gemini-shaped answers keep the upstream's alphabetical key order.
        return response.content.startswith(b"{") and b'"object":"chat.completion"' in response.content
    if response.status_code == 400:
        try:
            return response.json()["error"]["code"] == "invalid_request"
        except Exception:
            return False
    return False


def _show(body: bytes | None, limit: int = 400) -> str:
    if body is None:
        return "<no body>"
    text = repr(body[:limit])
    return text + (f"... ({len(body)} bytes)" if len(body) > limit else "")


# ----------------------------------------------------------------------------------- raw sockets


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, half_close: bool = False, until_close: bool = False) -> bytes:
    """Send bytes on a fresh connection and read the first complete response (``until_close``: all of
    them, until the server closes the connection), or until the server closes it or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        sock.settimeout(timeout)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not until_close and _complete_response(b"".join(chunks)):
                    break
        except socket.timeout:
            pass
    received = b"".join(chunks)
    record(received)
    return received


def _complete_response(data: bytes) -> bool:
    head, sep, rest = _skip_interim(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    return match is not None and len(rest) >= int(match.group(1))


def parse_raw(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lowercased names) and body of the first final response in ``data``."""
    head, _, body = _skip_interim(data).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith(b"HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    return status, headers, body


def _skip_interim(data: bytes) -> bytes:
    """``data`` without leading 1xx responses (``100 Continue``)."""
    while re.match(rb"HTTP/1\.[01] 1\d\d ", data):
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        data = rest
    return data
