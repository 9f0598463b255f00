"""Shared fixtures: fake upstreams and a gateway running as real processes on 127.0.0.1, OpenAI SDK
clients pointed at it, and a recorder of every byte those clients receive (checked for leaks).

The suite runs at two speeds. The fast tier (``make test-fast``, ``pytest --fast``) is the tests
under ``FAST_TIER`` that are not marked ``processes``: they run in this process (in-process servers
on 127.0.0.1 at most) and start no other, which is checked while each of them runs, in either
tier. ``make test`` runs everything, the gateways, fake upstreams, nx-27017, node and chromium
processes included.
"""
from __future__ import annotations

import _posixsubprocess
import asyncio
import asyncio.subprocess
import os
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest

from tests import support

ROOT = Path(__file__).resolve().parent.parent
# The fast tier: these paths, less the tests marked ``processes``.
FAST_TIER = ("tests/unit", "tests/wire", "tests/app", "tests/store", "tests/upstream",
             "tests/conformance/responses", "tests/test_fake_upstream.py")
# What a fast test may still start: making a throwaway TLS certificate (bench/tls.py).
FAST_TOOLS = frozenset({"openssl"})


def pytest_addoption(parser) -> None:
    parser.addoption("--fast", action="store_true", help="run the fast tier only: " + ", ".join(FAST_TIER)
                     + ", less the tests marked processes")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "processes: starts other processes (gateways, fake upstreams, nx-27017, "
                                       "a child that dies) or needs a server outside: not in the fast tier")


def _tier_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return ""


def _in_fast_paths(relative: str) -> bool:
    return any(relative == p or relative.startswith(p + "/") for p in FAST_TIER)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """With --fast, what lies outside the fast tier is not even imported."""
    if not config.getoption("--fast"):
        return None
    relative = _tier_path(collection_path)
    if not relative or _in_fast_paths(relative) or any(p.startswith(relative + "/") for p in FAST_TIER):
        return None
    return True


def pytest_collection_modifyitems(config, items) -> None:
    if not config.getoption("--fast"):
        return
    slow = [item for item in items if item.get_closest_marker("processes")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("processes")]


def in_fast_tier(item) -> bool:
    return _in_fast_paths(_tier_path(Path(item.path))) and item.get_closest_marker("processes") is None


class StartedAProcess(AssertionError):
    pass


# Every way this process can start another: subprocess (fork_exec, or posix_spawn), multiprocessing
# (fork, or fork_exec for spawn and forkserver), os.system, os.spawn* and pty (fork, forkpty), and
# asyncio's subprocesses (under uvloop they start in libuv, out of Python's sight).
_LAUNCHERS = ((os, "fork"), (os, "forkpty"), (os, "system"), (os, "posix_spawn"), (os, "posix_spawnp"),
              (_posixsubprocess, "fork_exec"), (asyncio, "create_subprocess_exec"),
              (asyncio, "create_subprocess_shell"), (asyncio.subprocess, "create_subprocess_exec"),
              (asyncio.subprocess, "create_subprocess_shell"))
_lifted = threading.local()  # set while an allowed tool (FAST_TOOLS) is being started


@contextmanager
def _no_processes(item):
    """While a fast-tier test runs (its fixtures included), starting a process fails it."""
    if not in_fast_tier(item):
        yield
        return
    execute_child = subprocess.Popen._execute_child
    originals = [(owner, name, getattr(owner, name)) for owner, name in _LAUNCHERS if hasattr(owner, name)]

    def refuse(what: str):
        raise StartedAProcess(f"{item.nodeid} started {what}: the fast tier runs in process (mark it processes, "
                              "or keep it out of " + ", ".join(FAST_TIER) + ")")

    def guarded(name: str, original):
        def launcher(*args, **kwargs):
            if getattr(_lifted, "on", False):
                return original(*args, **kwargs)
            refuse(f"a process ({name})")
        return launcher

    def guarded_execute_child(self, args, *rest, **kwargs):
        program = args if isinstance(args, (str, bytes)) else args[0]
        if os.path.basename(os.fsdecode(program)) not in FAST_TOOLS:
            refuse(f"a process ({os.fsdecode(program)})")
        _lifted.on = True
        try:
            return execute_child(self, args, *rest, **kwargs)
        finally:
            _lifted.on = False

    subprocess.Popen._execute_child = guarded_execute_child
    for owner, name, original in originals:
        setattr(owner, name, guarded(name, original))
    try:
        yield
    finally:
        subprocess.Popen._execute_child = execute_child
        for owner, name, original in originals:
            setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _no_processes(item):
        return (yield)


# Everything the test clients receive, headers and bodies, for the leak check at session end.
RECEIVED: list[bytes] = []
_received_lock = threading.Lock()


def record(data: bytes) -> None:
    with _received_lock:
        RECEIVED.append(data)


class _Tee(httpx2.SyncByteStream):
    def __init__(self, stream) -> None:
        self._stream = stream

    def __iter__(self):
        for chunk in self._stream:
            record(chunk)
            yield chunk

    def close(self) -> None:
        self._stream.close()


class RecordingTransport(httpx2.HTTPTransport):
    def handle_request(self, request):
        response = super().handle_request(request)
        record(b"\n".join(k + b": " + v for k, v in response.headers.raw))
        response.stream = _Tee(response.stream)
        return response


def sdk_client(gateway: support.Gateway, key: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.base_url,
        api_key=key,
        max_retries=0,
        timeout=kwargs.pop("timeout", 30.0),
        http_client=httpx2.Client(transport=RecordingTransport()),
        **kwargs,
    )


def http(gateway: support.Gateway) -> httpx2.Client:
    """A plain HTTP client to the gateway whose responses are recorded too."""
    return httpx2.Client(base_url=gateway.url, transport=RecordingTransport(), timeout=30.0)


def leaks(data: bytes, hosts: tuple[str, ...] = ()) -> list[str]:
    """Upstream names or hosts found in bytes a caller received."""
    lowered = data.lower()
    found = [name for name in support.UPSTREAM_MODELS if name.encode() in lowered]
    found += [h for h in hosts if h.encode() in lowered]
    for marker in (b"fp_fake", b"system_fingerprint\":\"", b"fake-provider", b"req_upstream", b"sk-fake-provider", b"traceback"):
        if marker in lowered:
            found.append(marker.decode())
    return found


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstreams")
    openai_up = support.start_upstream(tmp, "openai")
    gemini_up = support.start_upstream(tmp, "gemini")
    yield {"openai": openai_up, "gemini": gemini_up}
    openai_up.stop()
    gemini_up.stop()


@pytest.fixture(scope="session")
def models_path(tmp_path_factory, upstreams) -> Path:
    tmp = tmp_path_factory.mktemp("models")
    return support.models_file(tmp / "models.toml", upstreams["openai"].url, upstreams["gemini"].url)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, models_path):
    data_dir = tmp_path_factory.mktemp("gateway")
    gw = support.start_gateway(data_dir, models_path)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory):
    server = support.NxServer(tmp_path_factory.mktemp("nx-gateway") / "data").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "mongo"])
def store_env(request) -> dict[str, str]:
    """Gateway environment for each store backend: the embedded SQLite file, or MongoDB over the
    wire (nx-27017 here; a real MongoDB when TEST_MONGO_URL is set)."""
    if request.param == "sqlite":
        return {}
    import os
    import uuid

    url = os.environ.get("TEST_MONGO_URL") or request.getfixturevalue("nx_server").url
    return {"ZOWY_MONGO_URL": url, "ZOWY_MONGO_DB": f"zowy_{uuid.uuid4().hex[:10]}"}


@pytest.fixture
def customer(gateway) -> support.Customer:
    return support.new_customer(gateway)


@pytest.fixture
def client(gateway, customer) -> openai.OpenAI:
    with sdk_client(gateway, customer.key) as c:
        yield c


@pytest.fixture(scope="session", autouse=True)
def no_leaks_in_received_bytes():
    """After the whole session: nothing any test client received names an upstream."""
    yield
    found = {name for data in RECEIVED for name in leaks(data, ("127.0.0.1:",))}
    assert not found, f"upstream identity leaked to callers: {sorted(found)}"
