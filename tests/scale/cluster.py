"""A production-shaped cluster on 127.0.0.1 without Docker: Debian's nginx running deploy/nginx.conf
(upstream servers and listen port swapped for local ones) in front of gateway instances that
share one store, each with its own data directory (ledger spool), and a fake upstream of its own."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import support

NGINX_CONF = support.ROOT / "deploy" / "nginx.conf"
WORKERS = 2

# /healthz answers once the first worker serves: before a SIGTERM, wait until /readyz counts every
# worker of every instance ready, so the drained instance serves on all its workers.
BOOT_WAIT = 15.0


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


def ensure_nginx() -> str:
    """nginx's path; installs Debian's nginx with apt-get when it is absent, else skips the test."""
    found = find_nginx()
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("tests/scale needs nginx: it is not installed and apt-get is not available")
    if os.geteuid() != 0:
        pytest.skip("tests/scale needs nginx: it is not installed and installing it with apt-get needs root "
                    "(run: sudo apt-get install -y nginx)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    errors = []
    update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
    if update.returncode != 0:
        errors.append(update.stderr.strip()[-500:])
    # `nginx` on bookworm and later; `nginx-light` is the small build on older releases.
    for package in ("nginx", "nginx-light"):
        install = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
            env=env, capture_output=True, text=True, timeout=600,
        )
        found = find_nginx()
        if install.returncode == 0 and found:
            return found
        errors.append(install.stderr.strip()[-500:])
    pytest.skip("tests/scale needs nginx and `apt-get install nginx` failed: " + " | ".join(e for e in errors if e))


def render_nginx_conf(template: str, upstream_ports: list[int], listen_port: int, run_dir: Path) -> str:
    """deploy/nginx.conf for 127.0.0.1: local upstream servers, a local listen port, private logs and
    temp paths. Everything else is used as shipped."""
    block = re.search(r"# BEGIN upstream servers\n(.*?)\n\s*# END upstream servers", template, re.S)
    if block is None:
        raise AssertionError("deploy/nginx.conf has no '# BEGIN/END upstream servers' block")
    server = re.search(r"^\s*server\s+\S+\s+(.*);\s*$", block.group(1), re.M)
    zone = re.search(r"^\s*zone\s+.*;\s*$", block.group(1), re.M)
    if server is None:
        raise AssertionError("deploy/nginx.conf: no `server` line in the upstream servers block")
    # `resolve` (and its `resolver`) is for Docker's DNS; Debian's nginx 1.22 has neither, and
    # 127.0.0.1 needs no resolving. The server parameters (max_fails, fail_timeout) are kept.
    params = " ".join(p for p in server.group(1).split() if p != "resolve")
    lines = [zone.group(0)] if zone else []
    lines += [f"        server 127.0.0.1:{port} {params};" for port in upstream_ports]
    text = template[: block.start()] + "\n".join(lines) + template[block.end():]

    text, listens = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\g<1>listen 127.0.0.1:{listen_port};", text)
    text, access = re.subn(r"(?m)^(\s*)access_log\s+\S+\s+(\w+);", rf"\g<1>access_log {run_dir}/access.log \g<2>;", text)
    text, errors = re.subn(r"(?m)^error_log\s+\S+", f"error_log {run_dir}/error.log", text)
    if (listens, access, errors) != (1, 1, 1):
        raise AssertionError(f"deploy/nginx.conf changed shape: listen={listens} access_log={access} error_log={errors}")
    temp = "".join(
        f"\n    {kind}_temp_path {run_dir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {", "http {" + temp, 1)


@dataclass
class Nginx:
    binary: str
    run_dir: Path
    port: int
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.run_dir / "nginx.conf"

    def _args(self) -> list[str]:
        # Root's workers would run as `nobody`, which cannot enter pytest's 0700 temp dirs.
        main = f"daemon off; pid {self.run_dir}/nginx.pid;" + (" user root;" if os.geteuid() == 0 else "")
        return [self.binary, "-p", str(self.run_dir), "-c", str(self.conf), "-e", str(self.run_dir / "error.log"), "-g", main]

    def start(self, upstream_ports: list[int]) -> "Nginx":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), upstream_ports, self.port, self.run_dir))
        check = subprocess.run([*self._args(), "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"nginx -t failed for {self.conf}:\n{check.stderr}{self.error_log()}")
        self.popen = support.spawn(self._args(), self.run_dir / "stdout.log")
        support.wait_port(self.port, self.popen, 10, "nginx", self.error_log)
        return self

    def stop(self) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)

    def error_log(self) -> str:
        try:
            return (self.run_dir / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def access_log(self, expect: list[str] = (), timeout: float = 5.0) -> dict[str, "Access"]:
        """The access log by the request id nginx saw (the caller's X-Request-Id when sent). nginx logs a
        request just after its last byte went out, so wait until the ``expect``ed ids are there."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self._read_access_log()
            missing = [rid for rid in expect if rid not in entries]
            if not missing:
                return entries
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} requests are not in nginx's access log, e.g. {missing[:3]}")
            time.sleep(0.05)

    def _read_access_log(self) -> dict[str, "Access"]:
        entries = {}
        try:
            lines = (self.run_dir / "access.log").read_text(errors="replace").splitlines()
        except OSError:
            return {}
        for line in lines:
            m = re.search(r'" (\d{3}) .* rid=(\S+) upstream=(.*?) ustatus=(.*?) rt=', line)
            if m:
                entries[m.group(2)] = Access(int(m.group(1)), re.split(r"\s*[,:]\s+", m.group(3).strip()))
        return entries


class Dropper:
    """A broken instance: it reads each request whole, then closes the connection without answering."""

    def __init__(self) -> None:
        dropper = self
        self.requests: list[bytes] = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                while length and len(body) < int(length.group(1)):
                    chunk = self.request.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                dropper.requests.append(head.split(b"\r\n")[0])

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Access:
    status: int
    upstreams: list[str]  # every instance nginx tried, in order ("127.0.0.1:PORT")

    @property
    def served_by(self) -> str:
        return self.upstreams[-1]


@dataclass
class Cluster:
    upstream: support.Process
    gateways: list[support.Gateway]
    nginx: Nginx
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.nginx.url

    def addr(self, gateway: support.Gateway) -> str:
        return f"127.0.0.1:{gateway.process.port}"

    def _upstream_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.upstream.url}/_fake/stats", timeout=5) as r:
            return json.loads(r.read())

    def upstream_requests(self) -> int:
        """Chat requests the fake upstream has received (this cluster's own upstream)."""
        return self._upstream_stats()["requests"]

    def upstream_open(self) -> int:
        return self._upstream_stats()["open"]

    def settle_boot(self) -> None:
        """Wait until every worker of every instance is ready."""
        for gateway in self.gateways:
            support.wait_all_workers(gateway, timeout=max(0.1, self.started_at + BOOT_WAIT - time.monotonic()))

    def stop(self) -> dict[str, int | None]:
        codes = {}
        self.nginx.stop()
        for gateway in self.gateways:
            codes[self.addr(gateway)] = gateway.stop()
        self.upstream.stop()
        return codes


# The store test double (nx-27017, one Python process) can take longer than the production limiter
# deadline (0.5 s) under 200 concurrent hits on a loaded 2-core machine; these tests are about
# exactness across instances, not about that deadline.
SLOW_STORE = {"ZOWY_LIMITER_TIMEOUT": "5", "ZOWY_STORE_TIMEOUT": "5"}


def start_cluster(tmp: Path, store_env: dict[str, str], nginx_binary: str, instances: int = 2, **env: str) -> Cluster:
    """A fake upstream, ``instances`` gateways of WORKERS workers on one store, nginx in front."""
    env = {**SLOW_STORE, **env}
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = support.start_upstream(tmp, "openai")
    gateways: list[support.Gateway] = []
    try:
        models = support.models_file(tmp / "models.toml", upstream.url, upstream.url)
        with ThreadPoolExecutor(instances) as pool:
            futures = [
                pool.submit(support.start_gateway, tmp / f"instance-{i}", models, WORKERS, **store_env, **env)
                for i in range(instances)
            ]
            errors = []
            for future in futures:
                try:
                    gateways.append(future.result())
                except Exception as exc:  # start the rest, then stop what started
                    errors.append(exc)
            if errors:
                raise errors[0]
        nginx = Nginx(nginx_binary, tmp / "nginx", support.free_port())
        nginx.start([g.process.port for g in gateways])
        support.wait_http(f"{nginx.url}/healthz", timeout=10)
    except BaseException:
        for gateway in gateways:
            gateway.stop()
        upstream.stop()
        raise
    return Cluster(upstream, gateways, nginx)


def shared_store_env(kind: str, tmp: Path, nx_url: str | None = None) -> dict[str, str]:
    """Store settings every instance of a cluster shares: one SQLite file, or one MongoDB database."""
    if kind == "sqlite":
        tmp.mkdir(parents=True, exist_ok=True)
        return {"ZOWY_SQLITE_PATH": str(tmp / "zowy.db")}
    url = os.environ.get("TEST_MONGO_URL") or nx_url
    return {"ZOWY_MONGO_URL": url, "ZOWY_MONGO_DB": f"zowy_scale_{uuid.uuid4().hex[:10]}"}
