"""The systems a bench run measures, each started on 127.0.0.1 in front of the one fake upstream:
direct, the bare Sanic proxy, nginx, the Zowy gateway (every feature on) and the LiteLLM proxy."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .procs import ROOT, Proc, free_port, spawn, wait_http

UPSTREAM_KEY = "sk-bench-upstream-key-0123456789"
UPSTREAM_KEY_ENV = "BENCH_PROVIDER_KEY"
UPSTREAM_MODEL = "gpt-5.4-mini"
PUBLIC_MODEL = "zowy-1"
FIDELITY_MODEL = "zowy-1-pro"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"


class Unavailable(RuntimeError):
    """A system cannot run on this machine; the message says why."""


@dataclass
class Context:
    """What every system needs: where to write, which CPUs, the upstream, what may be installed."""

    work: Path
    sut_cpus: set[int] | None
    install: bool
    upstream: Proc | None = None
    upstream_port: int = 0
    log: object = print
    gateway_tree: Path = ROOT  # the source tree the gateway runs from (another checkout: before/after)
    tls_upstream: Proc | None = None  # the same fake upstream over TLS (bench/tls_upstream.py), when asked for
    tls_port: int = 0
    tls_ca: Path | None = None  # the CA its certificate is signed by: SSL_CERT_FILE of the systems in front of it

    @property
    def upstream_base(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/v1"

    @property
    def tls_base(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/v1"

    def tls_env(self) -> dict[str, str]:
        """The environment of a system in front of the TLS upstream: it trusts the run's CA."""
        return {**os.environ, "SSL_CERT_FILE": str(self.tls_ca)}


@dataclass
class System:
    key: str
    label: str
    url: str
    headers: dict[str, str]
    procs: list[Proc]
    owned: bool = True  # stop() stops its processes (not so for "direct": the upstream is shared)
    info: dict = field(default_factory=dict)
    limited_headers: dict[str, str] = field(default_factory=dict)  # a key whose per-minute limit is 1

    def pids(self) -> list[int]:
        out: list[int] = []
        for p in self.procs:
            out.extend(p.pids())
        return out

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def stop(self) -> None:
        if self.owned:
            for p in self.procs:
                p.stop()


def start_upstream(ctx: Context, cpus: set[int] | None = None) -> Proc:
    """The fake upstream, on the systems' CPUs unless ``cpus`` says others."""
    port = free_port()
    proc = spawn("fake-upstream", [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1",
                                   "--port", str(port), "--mode", "openai"], ctx.work,
                 cpus=ctx.sut_cpus if cpus is None else cpus)
    wait_http(f"http://127.0.0.1:{port}/_fake/stats", proc)
    ctx.upstream, ctx.upstream_port = proc, port
    return proc


def start_tls_upstream(ctx: Context, cpus: set[int] | None = None) -> Proc:
    """The fake upstream over TLS, its CA and certificate made into the run's work dir; on the
    systems' CPUs unless ``cpus`` says others."""
    port = free_port()
    certs = ctx.work / "tls"
    proc = spawn("fake-upstream-tls", [sys.executable, "-m", "bench.tls_upstream", "--host", "127.0.0.1",
                                       "--port", str(port), "--cert-dir", str(certs)], ctx.work,
                 cpus=ctx.sut_cpus if cpus is None else cpus)
    ctx.tls_ca = certs / "upstream-ca.pem"
    wait_https(f"https://127.0.0.1:{port}/_fake/stats", proc, ctx)
    ctx.tls_upstream, ctx.tls_port = proc, port
    return proc


def wait_https(url: str, proc: Proc, ctx: Context, timeout: float = 30.0) -> None:
    import ssl
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()}")
        try:
            context = ssl.create_default_context(cafile=str(ctx.tls_ca))
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                r.read()
                return
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s:\n{proc.log()}")


def direct(ctx: Context) -> System:
    return System("direct", "fake upstream, direct", f"{ctx.upstream_base}/chat/completions",
                  {"Authorization": f"Bearer {UPSTREAM_KEY}"}, [ctx.upstream], owned=False)


def bare(ctx: Context, client: str = "aiohttp", transport: str | None = None, tls: bool = False,
         key: str | None = None, workers: int = 1) -> System:
    """The bare proxy with ``client`` (or relaying through the gateway's ``transport``), in front of
    the plain or the TLS fake upstream, in ``workers`` processes."""
    port = free_port()
    name = key or ("bare" if client == "aiohttp" else f"bare-{client}")
    args = [sys.executable, "-m", "bench.baselines.bare_proxy", "--port", str(port),
            "--upstream", ctx.tls_base if tls else ctx.upstream_base, "--client", client, "--api-key", UPSTREAM_KEY]
    if transport:
        args += ["--transport", transport]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = spawn(name, args, ctx.work, cpus=ctx.sut_cpus, env=ctx.tls_env() if tls else None)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    what = f"transport {transport}" if transport else client
    what += f", {workers} workers" if workers > 1 else ""
    return System(name, f"bare Sanic proxy ({what}{', TLS upstream' if tls else ''})",
                  f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": "Bearer unused"}, [proc],
                  info={"client": client, "transport": transport, "tls": tls, "workers": workers})


# ---------------------------------------------------------------- nginx

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
{user}
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    client_max_body_size 64m;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def nginx_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=5)
        return (out.stderr or out.stdout).strip().replace("nginx version: ", "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def nginx(ctx: Context) -> System:
    binary = nginx_binary()
    if binary is None and ctx.install:
        binary = _apt_install("nginx-light", nginx_binary, ctx)
    if binary is None:
        raise Unavailable("nginx is not installed (Debian: apt-get install nginx-light)")
    port = free_port()
    work = ctx.work / "nginx"
    work.mkdir(exist_ok=True)
    user = "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, user=user, upstream_port=ctx.upstream_port, port=port))
    proc = spawn("nginx", [binary, "-p", str(work), "-c", str(conf)], ctx.work, cpus=ctx.sut_cpus)
    wait_http(f"http://127.0.0.1:{port}/_fake/stats", proc)
    return System("nginx", "nginx reverse proxy", f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"Authorization": f"Bearer {UPSTREAM_KEY}"}, [proc],
                  info={"version": nginx_version(binary), "config": str(conf)})


def _apt_install(package: str, find, ctx: Context) -> str | None:
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    ctx.log(f"installing {package} with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "install", "-y", "-qq", package], ["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", package]):
        try:
            subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if find():
            return find()
    return None


# ---------------------------------------------------------------- the gateway


def models_toml(upstream_base: str, fidelity_base: str, max_connections: bool) -> str:
    """Every public model routed to the fake upstream (``zowy-1-pro`` through the fidelity tee)."""
    extra = "max_connections = 4096\n" if max_connections else ""
    return f"""\
[timeouts]
connect = 5.0
first_byte = 60.0
idle = 180.0
total = 600.0

[models.{PUBLIC_MODEL}]
targets = ["bench"]

[models.{FIDELITY_MODEL}]
targets = ["fidelity"]

[models.zowy-2]
targets = ["bench"]
vision = true

[targets.bench]
provider = "openai"
base_url = "{upstream_base}"
model = "{UPSTREAM_MODEL}"
api_key_env = "{UPSTREAM_KEY_ENV}"
{extra}
[targets.fidelity]
provider = "openai"
base_url = "{fidelity_base}"
model = "{UPSTREAM_MODEL}"
api_key_env = "{UPSTREAM_KEY_ENV}"
"""


def _target_takes_max_connections(tree: Path = ROOT) -> bool:
    """Whether the gateway of ``tree`` knows a target's ``max_connections`` (older revisions do not)."""
    code = ("try:\n    from app.catalog.models import Target\n"
            "except ImportError:\n    from app.config import Target\n"  # revisions before app/catalog/
            "print('max_connections' in getattr(Target, '__dataclass_fields__', {}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


def gateway_env(data_dir: Path, models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOWY_")}
    env.update({
        "ZOWY_DATA_DIR": str(data_dir),
        "ZOWY_DEMO": "off",
        "ZOWY_MODELS_FILE": str(models),
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def cli(env: dict[str, str], *args: str, tree: Path = ROOT) -> str:
    out = subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=tree, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"python -m app {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    return out.stdout


def gateway(ctx: Context, fidelity_port: int, key: str = "gateway", tree: Path | None = None,
            tree_info: dict | None = None, transport: str | None = None, tls: bool = False, workers: int = 1) -> System:
    """The gateway from ``tree`` (default ``ctx.gateway_tree``), reported as ``key``; besides the
    bench key it makes a key limited to 1 request a minute for the refusal phase. ``transport``:
    its ``ZOWY_UPSTREAM_TRANSPORT``; ``tls``: the bench model served by the TLS fake upstream;
    ``workers``: its worker processes."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    tree = tree or ctx.gateway_tree
    data = ctx.work / name
    data.mkdir(exist_ok=True)
    models = ctx.work / f"models-{name}.toml"
    models.write_text(models_toml(ctx.tls_base if tls else ctx.upstream_base, f"http://127.0.0.1:{fidelity_port}/v1",
                                  _target_takes_max_connections(tree)))
    env = gateway_env(data, models)
    if transport:
        env["ZOWY_UPSTREAM_TRANSPORT"] = transport
    if tls:
        env["SSL_CERT_FILE"] = str(ctx.tls_ca)
    cli(env, "accounts", "create", "bench", tree=tree)
    api_key = _new_key(env, tree, "100000000", "1000000000")
    limited_key = _new_key(env, tree, "1", "100000")
    cli(env, "packages", "grant", "--account", "bench", "--plan", "business", "--tokens", "100000000000", tree=tree)
    port = free_port()
    proc = spawn(name, [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", str(workers)], ctx.work, env=env, cpus=ctx.sut_cpus, cwd=tree)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
    if workers > 1:
        _wait_all_workers(port, proc)
    label = f"Zowy gateway (auth+limits+metering, SQLite, {workers} worker{'s' if workers > 1 else ''})"
    if transport or tls:
        label += f" with transport {transport or 'h1'}{', TLS upstream' if tls else ''}"
    elif key != "gateway":
        label = f"Zowy {key} ({(tree_info or {}).get('commit', tree)})"
    return System(key, label, f"http://127.0.0.1:{port}/api/v1/chat/completions", {"Authorization": f"Bearer {api_key}"},
                  [proc], info={"models_file": str(models), "data_dir": str(data), "store": "sqlite", "tls": tls,
                                "workers": workers, "env": {k: v for k, v in env.items() if k.startswith("ZOWY_")},
                                **(tree_info or {})},
                  limited_headers={"Authorization": f"Bearer {limited_key}"})


def _wait_all_workers(port: int, proc: Proc, timeout: float = 60.0) -> None:
    """Until /readyz reports every worker of the gateway ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                workers = json.loads(r.read())["checks"].get("workers") or {}
                if workers.get("ready") == workers.get("expected"):
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not every gateway worker became ready within {timeout:g} s")


def _new_key(env: dict[str, str], tree: Path, per_minute: str, per_hour: str) -> str:
    out = cli(env, "keys", "create", "--account", "bench", "--per-minute", per_minute, "--per-hour", per_hour, tree=tree)
    return out.strip().splitlines()[-1].strip()


# ---------------------------------------------------------------- LiteLLM


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def ensure_litellm(ctx: Context) -> Path:
    """The ``litellm`` proxy binary in its own venv, installed with pip when absent (and allowed)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists() and litellm_version():
        return binary
    if not ctx.install:
        raise Unavailable(f"LiteLLM is not installed in {LITELLM_VENV} and installing was not allowed (--no-install)")
    ctx.log(f"installing litellm[proxy] into {LITELLM_VENV} (once) ...")
    log_path = ctx.work / "litellm-install.log"
    with open(log_path, "wb") as log:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], stdout=log, stderr=log, check=False, timeout=300)
        done = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", "litellm[proxy]"], stdout=log, stderr=log, timeout=1800)
    if done.returncode != 0 or not binary.exists():
        tail = log_path.read_text(errors="replace")[-1500:]
        raise Unavailable(f"pip install 'litellm[proxy]' failed (exit {done.returncode}):\n{tail}")
    return binary


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{upstream_model}
      api_base: {api_base}
      api_key: {api_key}
general_settings:
  master_key: {master_key}
litellm_settings:
  drop_params: true
  telemetry: false
"""

# Uvicorn's access log off, as ours is: LiteLLM is measured without per-request log lines.
LITELLM_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["err"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"handlers": ["err"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": ["err"], "level": "WARNING", "propagate": False},
    },
}


def litellm(ctx: Context) -> System:
    binary = ensure_litellm(ctx)
    work = ctx.work / "litellm"
    work.mkdir(exist_ok=True)
    config = work / "config.yaml"
    config.write_text(LITELLM_CONFIG.format(model=PUBLIC_MODEL, upstream_model=UPSTREAM_MODEL,
                                            api_base=ctx.upstream_base, api_key=UPSTREAM_KEY,
                                            master_key=LITELLM_MASTER_KEY))
    logging_conf = work / "logging.json"
    logging_conf.write_text(json.dumps(LITELLM_LOGGING))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    # Its upstream pool is capped at 500 connections per host by default; the gateway's target gets
    # max_connections = 4096 in the bench models file, so LiteLLM gets the same room.
    env.update({"AIOHTTP_CONNECTOR_LIMIT": "4096", "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "4096"})
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONUNBUFFERED": "1",
                "PATH": f"{LITELLM_VENV / 'bin'}:{env.get('PATH', '')}"})
    port = free_port()
    proc = spawn("litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1", "--log_config", str(logging_conf)],
                 ctx.work, env=env, cpus=ctx.sut_cpus, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
    except (RuntimeError, TimeoutError) as exc:
        proc.stop()
        raise Unavailable(f"the LiteLLM proxy did not start: {str(exc)[-1500:]}") from None
    return System("litellm", "LiteLLM proxy (master key, 1 worker, no DB)",
                  f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}, [proc],
                  info={"version": litellm_version(), "config": str(config)})


def stop_all(systems: list[System]) -> None:
    for s in systems:
        try:
            s.stop()
        except Exception:  # pragma: no cover - best effort at exit
            pass


__all__ = ["Context", "System", "Unavailable", "bare", "direct", "gateway", "litellm", "nginx",
           "start_tls_upstream", "start_upstream", "stop_all", "procs"]
