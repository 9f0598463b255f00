"""Real processes for tests: the fake upstream and gateway instances on 127.0.0.1, and the
accounts, keys and packages tests need, made through the gateway's own operations."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY_ENV = "FAKE_PROVIDER_KEY"

# Names the upstreams use; they must never reach a caller.
UPSTREAM_MODELS = ("gemini-2.5-flash", "gpt-5.4-mini", "gemini-2.5-pro", "gemini-2.5-flash-lite")


@contextlib.contextmanager
def cyclic_garbage():
    """The type names of what the block made that only the cycle collector could free (objects in
    reference cycles), listed once the block has ended; the collector is off meanwhile."""
    gc.collect()
    gc.disable()
    found: list[str] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_port(port: int, process: subprocess.Popen, timeout: float, what: str, log: Callable[[], str] = lambda: "") -> None:
    """Wait until ``process`` listens on 127.0.0.1:``port``; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s:\n{log()}") from None
            time.sleep(0.05)


@dataclass
class Process:
    popen: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_file = open(log_path, "ab")
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log_file.close()


def start_upstream(tmp: Path, mode: str = "openai", port: int | None = None, extra: list[str] | None = None) -> Process:
    port = port or free_port()
    log_path = tmp / f"upstream-{mode}-{port}.log"
    popen = spawn(
        [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(port), "--mode", mode, *(extra or [])],
        log_path,
    )
    process = Process(popen, port, log_path)
    wait_http(f"{process.url}/_fake/stats", process=popen)
    return process


def models_file(path: Path, openai_url: str, gemini_url: str, timeouts: dict | None = None, fallback_url: str | None = None) -> Path:
    """A models file with the shipped shape, every target pointed at fake upstreams."""
    timeouts = timeouts or {}
    lines = ["[timeouts]"]
    lines += [f"{k} = {v}" for k, v in {"connect": 2.0, "first_byte": 10.0, "idle": 5.0, "total": 30.0, **timeouts}.items()]
    lines += [
        "[models.zowy-1]",
        'targets = ["gemini-flash", "gemini-flash-lite"]',
        "[models.zowy-1-pro]",
        'targets = ["gpt-mini"]',
        "[models.zowy-2]",
        'targets = ["gemini-pro", "gpt-mini"]',
        "vision = true",
    ]
    gemini_params = (
        '{ logit_bias = "drop", parallel_tool_calls = "drop", store = "drop", metadata = "drop", '
        'service_tier = "drop", user = "drop", prompt_cache_key = "drop", safety_identifier = "drop", '
        'verbosity = "drop", logprobs = "drop", top_logprobs = "drop" }'
    )
    for name, model, url in (
        ("gemini-flash", "gemini-2.5-flash", gemini_url),
        ("gemini-flash-lite", "gemini-2.5-flash-lite", fallback_url or gemini_url),
        ("gemini-pro", "gemini-2.5-pro", gemini_url),
    ):
        lines += [
            f"[targets.{name}]",
            'provider = "gemini"',
            f'base_url = "{url}/v1"',
            f'model = "{model}"',
            f'api_key_env = "{UPSTREAM_KEY_ENV}"',
            f"params = {gemini_params}",
        ]
    lines += [
        "[targets.gpt-mini]",
        'provider = "openai"',
        f'base_url = "{openai_url}/v1"',
        'model = "gpt-5.4-mini"',
        f'api_key_env = "{UPSTREAM_KEY_ENV}"',
        'max_tokens_field = "max_completion_tokens"',
        'params = { temperature = { action = "reject", unless = { reasoning_effort = ["none"] } }, '
        'top_p = { action = "reject", unless = { reasoning_effort = ["none"] } }, logprobs = "pass", '
        'presence_penalty = "drop", frequency_penalty = "drop", logit_bias = "drop" }',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class NxServer:
    """An nx-27017 (MongoDB wire protocol on SQLite) server in a child process.

    ``--data-dir`` keeps one SQLite file per logical database, so a fresh database name isolates a test.
    """

    _MAIN = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, wait: float = 15.0) -> "NxServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir.parent / f"nx-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._MAIN, "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-file", str(log), "--pid-file", str(self.data_dir.parent / f"nx-{self.port}.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, self.proc, wait, "nx-27017", lambda: f"see {log}")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def seconds_left_in_window(size: int) -> float:
    return size - time.time() % size


def wait_for_window(size: int, need: float) -> None:
    """Sleep into the next window when fewer than ``need`` seconds are left in the current one."""
    left = seconds_left_in_window(size)
    if left < need:
        time.sleep(left + 0.05)


@dataclass
class Gateway:
    process: Process
    env: dict[str, str]
    data_dir: Path
    admin_token: str
    extra: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def base_url(self) -> str:
        return f"{self.process.url}/api/v1"

    def settings(self):
        from app.core.config import Settings

        return Settings.from_env(self.env)

    def stop(self) -> int | None:
        return self.process.stop()


def gateway_env(data_dir: Path, models: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOWY_")}
    env.update(
        {
            UPSTREAM_KEY_ENV: "sk-fake-provider-key-1234567890",
            "ZOWY_DATA_DIR": str(data_dir),
            "ZOWY_MODELS_FILE": str(models),
            "ZOWY_DEMO": "off",
            "ZOWY_ADMIN_TOKEN": "admin-secret-token",
            "ZOWY_METER_INTERVAL": "0.01",
            "ZOWY_KEY_CACHE_TTL": "0.5",
            "ZOWY_RETRY_BACKOFF": "0.05",
            # Tests inject upstream failures on shared gateways; the breaker has its own tests.
            "ZOWY_BREAKER_MIN_REQUESTS": "1000000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def start_gateway(data_dir: Path, models: Path, workers: int = 1, port: int | None = None, **overrides: str) -> Gateway:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = gateway_env(data_dir, models, **overrides)
    port = port or free_port()
    log_path = data_dir / f"gateway-{port}.log"
    popen = spawn(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        log_path,
        env,
    )
    process = Process(popen, port, log_path)
    try:
        wait_http(f"{process.url}/healthz", timeout=30, process=popen)
    except Exception:
        process.stop()
        raise RuntimeError(f"gateway did not start:\n{process.log()}") from None
    return Gateway(process, env, data_dir, env["ZOWY_ADMIN_TOKEN"])


@dataclass
class Customer:
    account_id: str
    key_id: str
    key: str


async def _customer(settings, name: str, tokens: int | None, per_minute: int | None, per_hour: int | None) -> Customer:
    from app.accounts import provisioning
    from app.billing import packages
    from app.store import open_store

    store = open_store(settings)
    try:
        await store.init()
        account = await provisioning.create_account(store, name)
        if tokens is not None:
            await packages.grant_package(store, settings, account, "pro", tokens=tokens)
        record, key = await provisioning.create_key(store, settings, account, per_minute, per_hour)
        return Customer(account.id, record.id, key)
    finally:
        await store.close()


_counter = iter(range(1, 10**9))


def new_customer(gateway: Gateway, tokens: int | None = 2_000_000, per_minute: int | None = 10_000, per_hour: int | None = 100_000, name: str | None = None) -> Customer:
    """An account with a package (unless tokens is None) and a key with generous limits."""
    name = name or f"acct-{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}"
    return asyncio.run(_customer(gateway.settings(), name, tokens, per_minute, per_hour))


def run_store(gateway: Gateway, fn):
    """Run ``await fn(store)`` against the gateway's store from the test process."""
    from app.store import open_store

    async def go():
        store = open_store(gateway.settings())
        try:
            await store.init()
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# ---------------------------------------------------------------- processes (Linux /proc)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from the state on


def session_processes(sid: int) -> list[tuple[int, str]]:
    """Live processes of session ``sid`` (each process ``spawn`` starts leads a session of its own),
    with their command lines."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or fields[0] == "Z" or int(fields[3]) != sid:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmdline))
    return found


def wait_session_gone(sid: int, timeout: float) -> None:
    """Wait until no process of session ``sid`` is alive; fail with the ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = session_processes(sid)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the instance still alive after {timeout} s: {left}")
        time.sleep(0.05)


def disposition(pid: int, signum: int) -> str | None:
    """What ``pid`` does with ``signum`` now: "caught", "ignored" or "default" (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f) if k in ("SigCgt", "SigIgn")}
    except OSError:
        return None
    bit = 1 << (signum - 1)
    return "caught" if masks["SigCgt"] & bit else "ignored" if masks["SigIgn"] & bit else "default"


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def readyz(gateway: Gateway) -> tuple[int, dict]:
    import json

    request = urllib.request.Request(f"{gateway.url}/readyz")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_all_workers(gateway: Gateway, timeout: float = 30.0) -> None:
    """Wait until /readyz reports every worker of the instance ready."""
    def ready():
        try:
            status, body = readyz(gateway)
        except OSError:
            return False
        workers = body["checks"].get("workers") or {}
        return status == 200 and workers.get("ready") == workers.get("expected")

    wait_until(ready, timeout=timeout)


# ---------------------------------------------------------------- raw HTTP clients


def chat_body(content: str, stream: bool = False, model: str = "zowy-1-pro") -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


def raw_request(key: str, body: dict) -> bytes:
    import json

    payload = json.dumps(body).encode()
    return (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
    )


async def raw_chat(port: int, key: str, body: dict, hang_up_after: float | None = None,
                   read_timeout: float = 30.0) -> tuple[int | None, bytes]:
    """One chat request on a connection of its own: the status (None when there was no answer) and
    every byte received. With ``hang_up_after``, the client closes that long after sending."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None, b""
    writer.write(raw_request(key, body))
    received = b""
    try:
        await writer.drain()
        async with asyncio.timeout(hang_up_after if hang_up_after is not None else read_timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()
    status = int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else None
    return status, received


def response_body(raw: bytes) -> bytes:
    """The body of a raw HTTP/1.1 response, de-chunked; as much as arrived."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2:]
    return b"".join(out)


def sse_events(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of a raw streamed response."""
    return [e[6:] for e in response_body(raw).split(b"\n\n") if e.startswith(b"data: ")]


def response_request_id(raw: bytes) -> str | None:
    marker = b"x-request-id: "
    if marker not in raw:
        return None
    return raw.split(marker, 1)[1].split(b"\r\n", 1)[0].decode()


def upstream_request_ids(upstream: Process, marker: str) -> set[str]:
    """Request ids of the chat requests the fake upstream received whose body holds ``marker``."""
    import json

    with urllib.request.urlopen(f"{upstream.url}/_fake/requests") as response:
        records = json.loads(response.read())
    return {r["headers"].get("x-request-id") for r in records if marker in json.dumps(r.get("body"))}

