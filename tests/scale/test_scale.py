"""Scale-out as operators run it: nginx (deploy/nginx.conf) in front of 2 gateway instances x 2 workers
sharing one store, on SQLite and on MongoDB (nx-27017, or TEST_MONGO_URL). Limits hold exactly across
instances, streams pass through unbuffered, and a SIGTERMed instance drains without losing a request
or a ledger entry. Each test prints its figures (run with -s to see them)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import aiohttp
import pytest

from tests import support
from tests.scale import cluster as cl

STREAM = "[[fake:chunks=20,delay=0.1]]"  # 20 content events 0.1 s apart: a 2 s stream


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return cl.ensure_nginx()


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def backend(request, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """One shared store per backend: a SQLite file, or a MongoDB database (nx-27017 unless TEST_MONGO_URL)."""
    nx_url = None
    if request.param == "mongo" and not os.environ.get("TEST_MONGO_URL"):
        nx_url = request.getfixturevalue("nx_server").url
    return request.param, cl.shared_store_env(request.param, tmp_path_factory.mktemp(f"store-{request.param}"), nx_url)


@pytest.fixture(scope="module")
def cluster(backend, nginx_binary, tmp_path_factory):
    kind, store_env = backend
    c = cl.start_cluster(tmp_path_factory.mktemp(f"cluster-{kind}"), store_env, nginx_binary)
    yield c
    c.stop()


def _chat(content: str, stream: bool = False) -> dict:
    return {"model": "zowy-1-pro", "stream": stream, "messages": [{"role": "user", "content": content}]}


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))


def _auth(key: str, rid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Request-Id": rid}


def _post(session: aiohttp.ClientSession, base: str, key: str, rid: str, content: str = "hi", stream: bool = False):
    """A chat completion with the caller's X-Request-Id ``rid`` (nginx logs it, so the test can see
    which instance served the request)."""
    return session.post(f"{base}/api/v1/chat/completions", json=_chat(content, stream), headers=_auth(key, rid))


# ---------------------------------------------------------------- limits


def test_limit_is_exact_through_nginx(cluster, backend):
    """200 concurrent requests of one key through nginx over 2 instances x 2 workers: exactly 60 pass."""
    customer = support.new_customer(cluster.gateways[0], per_minute=None, per_hour=None)  # 60/min, 1000/h
    rids = [f"lim-{uuid.uuid4().hex}" for _ in range(200)]

    async def fire() -> list[int]:
        async with _session() as session:
            async def one(rid: str) -> int:
                async with _post(session, cluster.url, customer.key, rid) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(rid) for rid in rids))

    support.wait_for_window(60, need=15)
    statuses = asyncio.run(fire())
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    assert counts == {200: 60, 429: 140}, counts

    access = cluster.nginx.access_log(rids)
    admitted = [access[rid].served_by for rid, status in zip(rids, statuses, strict=True) if status == 200]
    by_instance = {cluster.addr(g): admitted.count(cluster.addr(g)) for g in cluster.gateways}
    served = [access[rid].served_by for rid in rids]
    received = {cluster.addr(g): served.count(cluster.addr(g)) for g in cluster.gateways}
    assert all(access[rid].status == status for rid, status in zip(rids, statuses, strict=True))
    assert sum(by_instance.values()) == 60
    assert all(received.values()), received  # both instances took part in deciding

    def ledger_count() -> int:
        return support.run_store(cluster.gateways[0], lambda s: s.ledger_count(customer.account_id))

    support.wait_until(lambda: ledger_count() == 60)
    time.sleep(0.3)
    assert ledger_count() == 60
    print(f"\n[scale:{backend[0]}] limits: 200 concurrent -> {statuses.count(200)} admitted, "
          f"{statuses.count(429)} x 429; requests per instance {received}, admitted {by_instance}; ledger 60")


# ---------------------------------------------------------------- streaming


def test_streams_pass_through_unbuffered(cluster, backend):
    """The first event reaches the caller long before the upstream has finished the stream."""
    customer = support.new_customer(cluster.gateways[0])

    async def one(session: aiohttp.ClientSession, rid: str) -> dict:
        started = time.monotonic()
        async with _post(session, cluster.url, customer.key, rid, STREAM, stream=True) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in r.headers
            assert r.headers.get("x-request-id")
            times = []
            async for line in r.content:
                if line.startswith(b"data: "):
                    times.append(time.monotonic() - started)
                    last = line.strip()
            return {"first": times[0], "done": times[-1], "events": len(times), "last": last}

    async def run() -> list[dict]:
        async with _session() as session:
            return await asyncio.gather(*(one(session, f"sse-{uuid.uuid4().hex}-{i}") for i in range(4)))

    results = asyncio.run(run())
    for r in results:
        assert r["last"] == b"data: [DONE]"
        assert r["done"] >= 1.9, r  # the upstream takes 2 s to send the stream
        assert r["first"] < 1.0, r  # nginx passed the first event on at once
        assert r["done"] - r["first"] > 1.5, r  # and the rest as they came, not in one burst at the end
    first = max(r["first"] for r in results)
    done = min(r["done"] for r in results)
    print(f"\n[scale:{backend[0]}] streaming via nginx: first event <= {first * 1000:.0f} ms, "
          f"stream >= {done:.2f} s ({results[0]['events']} events)")


def test_request_ids_and_body_limit_through_nginx(cluster):
    """nginx hands the caller's X-Request-Id to the gateway (echoed as x-client-request-id), or its own
    id when the caller sent none; the gateway's x-request-id comes back. nginx's body limit is the
    gateway's: 16 MiB passes to the gateway, one byte more gets the 413 envelope from nginx itself."""
    customer = support.new_customer(cluster.gateways[0])
    rid = f"caller-{uuid.uuid4().hex}"

    async def run(headers):
        async with _session() as session:
            async with session.post(f"{cluster.url}/api/v1/chat/completions", json=_chat("hi"), headers=headers) as r:
                await r.read()
                return r.status, r.headers

    status, headers = asyncio.run(run(_auth(customer.key, rid)))
    assert status == 200 and headers.get("x-request-id")
    assert headers.get("x-client-request-id") == rid
    cluster.nginx.access_log([rid])
    status, headers = asyncio.run(run({"Authorization": f"Bearer {customer.key}"}))
    assert status == 200 and len(headers.get("x-client-request-id", "")) == 32  # nginx's $request_id
    cluster.nginx.access_log([headers["x-client-request-id"]])

    async def sized(size: int):
        head, tail = b'{"model":"zowy-1-pro","messages":[{"role":"user","content":"', b'"}]}'
        body = head + b"x" * (size - len(head) - len(tail)) + tail
        async with _session() as session:
            async with session.post(f"{cluster.url}/api/v1/chat/completions", data=body,
                                    headers={"Authorization": f"Bearer {customer.key}", "Content-Type": "application/json"}) as r:
                return r.status, r.headers, await r.json(content_type=None)

    limit = 16 * 1024 * 1024  # ZOWY_MAX_BODY_BYTES default = client_max_body_size 16m
    status, headers, error = asyncio.run(sized(limit))
    assert "x-request-id" in headers and status != 413, (status, error)  # nginx let it through to the gateway
    status, headers, error = asyncio.run(sized(limit + 1))
    assert status == 413 and error["error"]["code"] == "request_too_large"
    assert "x-request-id" not in headers  # refused by nginx, in the gateway's envelope


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_only_requests_that_never_reached_an_instance_are_resent(cluster, nginx_binary, tmp_path, method):
    """An instance that takes a request and drops the connection: a POST (a chat completion, maybe
    already billed) is NOT re-sent to another instance and the caller gets 502; a GET is re-sent."""
    dropper = cl.Dropper()
    nginx = cl.Nginx(nginx_binary, tmp_path / "nginx", support.free_port())
    try:
        nginx.start([dropper.port, cluster.gateways[0].process.port])
        customer = support.new_customer(cluster.gateways[0])
        before = cluster.upstream_requests()

        async def run() -> list[tuple[str, int, dict]]:
            results = []
            async with _session() as session:
                for i in range(10):  # until nginx has picked the dropper once
                    rid = f"resend-{method}-{i}-{uuid.uuid4().hex}"
                    if method == "POST":
                        call = _post(session, nginx.url, customer.key, rid)
                    else:
                        call = session.get(f"{nginx.url}/api/v1/models", headers=_auth(customer.key, rid))
                    async with call as r:
                        results.append((rid, r.status, await r.json(content_type=None)))
                    if dropper.requests:
                        break
            return results

        results = asyncio.run(run())
        assert len(dropper.requests) == 1, "nginx never picked the dropping instance"
        access = nginx.access_log([rid for rid, _, _ in results])
        dropper_addr = f"127.0.0.1:{dropper.port}"
        dropped = [(rid, status, body) for rid, status, body in results if access[rid].upstreams[0] == dropper_addr]
        assert len(dropped) == 1
        rid, status, body = dropped[0]
        if method == "POST":
            assert status == 502 and body["error"]["code"] == "bad_gateway", (status, body)
            assert len(access[rid].upstreams) == 1  # tried once, not re-sent
            assert cluster.upstream_requests() - before == len(results) - 1
        else:
            assert status == 200 and body["object"] == "list"
            assert access[rid].upstreams == [dropper_addr, cluster.addr(cluster.gateways[0])]
        assert all(s == 200 for r, s, _ in results if r != rid)
    finally:
        nginx.stop()
        dropper.close()


# ---------------------------------------------------------------- drain


async def _stream(session, url: str, key: str, rid: str) -> dict:
    async with _post(session, url, key, rid, "[[fake:chunks=30,delay=0.1]]", stream=True) as r:
        body = await r.read()
        return {"rid": rid, "status": r.status, "body": body, "gid": r.headers.get("x-request-id")}


async def _load(session, url: str, key: str, stop: asyncio.Event, out: list[dict]) -> None:
    while not stop.is_set():
        rid = f"load-{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            async with _post(session, url, key, rid, "[[fake:chunks=4,delay=0.02]]") as r:
                await r.read()
                out.append({"rid": rid, "status": r.status, "started": started, "gid": r.headers.get("x-request-id")})
        except aiohttp.ClientError as exc:
            out.append({"rid": rid, "status": repr(exc), "started": started, "gid": None})


def test_sigterm_drains_one_instance_under_load(backend, nginx_binary, tmp_path):
    """SIGTERM one instance while it relays streams and takes new requests: its streams finish with
    [DONE], new requests go to the other instance and none fails, it exits 0 with its ledger queue
    flushed, and the ledger then matches the upstream exactly."""
    kind, store_env = backend
    c = cl.start_cluster(tmp_path, store_env, nginx_binary, ZOWY_DRAIN_TIMEOUT="10")
    try:
        drained, other = c.gateways
        customer = support.new_customer(drained)
        load: list[dict] = []
        marks: dict[str, float] = {}

        async def scenario():
            stop = asyncio.Event()
            async with _session() as session:
                streams = [asyncio.create_task(_stream(session, c.url, customer.key, f"stream-{i}-{uuid.uuid4().hex}"))
                           for i in range(16)]
                await asyncio.to_thread(support.wait_until, lambda: c.upstream_open() >= 16, 10)
                loaders = [asyncio.create_task(_load(session, c.url, customer.key, stop, load)) for _ in range(6)]
                await asyncio.sleep(0.5)
                await asyncio.to_thread(c.settle_boot)
                marks["sigterm"] = time.monotonic()
                drained.process.signal(signal.SIGTERM)
                try:
                    marks["code"] = await asyncio.to_thread(drained.process.popen.wait, 40)
                except subprocess.TimeoutExpired:
                    marks["code"] = None
                marks["exited"] = time.monotonic()
                await asyncio.sleep(1.0)  # the other instance alone
                stop.set()
                await asyncio.gather(*loaders)
                return await asyncio.gather(*streams)

        streams = asyncio.run(scenario())
        assert marks["code"] == 0, f"drained instance exit code {marks['code']}:\n{drained.process.log()[-3000:]}"

        access = c.nginx.access_log([r["rid"] for r in [*streams, *load]])
        a, b = c.addr(drained), c.addr(other)
        # In-flight streams on the drained instance completed.
        on_drained = [s for s in streams if access[s["rid"]].served_by == a]
        assert on_drained, "no stream was in flight on the SIGTERMed instance"
        for s in streams:
            assert s["status"] == 200 and s["body"].endswith(b"data: [DONE]\n\n"), (s["status"], s["body"][-200:])
            assert s["body"].count(b'"content":"t') == 30
        # No request was lost: every one got its answer, before, during and after the drain.
        failed = [r for r in load if r["status"] != 200]
        assert not failed, (len(failed), len(load), [(r["status"], access.get(r["rid"])) for r in failed[:5]])
        # Requests re-sent after a refused connect went first to the draining instance.
        retried = [r for r in load if len(access[r["rid"]].upstreams) > 1]
        assert all(access[r["rid"]].upstreams[0] == a for r in retried)
        drain_seconds = marks["exited"] - marks["sigterm"]
        assert drain_seconds < 10 + 5  # within ZOWY_DRAIN_TIMEOUT (plus the exit itself)

        # The drained instance flushed its ledger queue before exiting: its entries are in the store
        # and its spool is empty (each instance has its own data directory).
        served_by_drained = [r["gid"] for r in [*streams, *load] if access[r["rid"]].served_by == a]
        missing = [g for g in served_by_drained if support.run_store(other, lambda s, g=g: s.ledger_entry(g)) is None]
        assert not missing, f"{len(missing)} ledger entries of the drained instance are missing"
        assert sum(p.stat().st_size for p in (drained.data_dir / "spool").glob("*.spool")) == 0

        # Reconcile: every upstream request has exactly one ledger entry; packages agree with the ledger.
        def ledger_count() -> int:
            return support.run_store(other, lambda s: s.ledger_count(customer.account_id))

        answered = len(streams) + len(load)
        support.wait_until(lambda: ledger_count() == c.upstream_requests(), timeout=20)
        time.sleep(0.3)
        upstream_requests = c.upstream_requests()
        ledger = ledger_count()
        assert ledger == upstream_requests == answered, (ledger, upstream_requests, answered)
        assert support.run_store(other, lambda s: s.reconcile()) == []

        # New requests (sent once the instance had begun draining) were answered by the other one.
        late = [r for r in load if r["started"] > marks["sigterm"] + 0.5]
        late_on_drained = [r for r in late if access[r["rid"]].served_by != b]
        print(
            f"\n[scale:{kind}] drain: {len(on_drained)}/{len(streams)} streams were on the SIGTERMed instance, all ended "
            f"with [DONE]; {len(load)} other requests all 200; of {len(late)} sent after SIGTERM, "
            f"{len(late) - len(late_on_drained)} served by the other instance ({len(retried)} re-sent there after a "
            f"refused connect), {len(late_on_drained)} by the draining one; exit {marks['code']} after "
            f"{drain_seconds:.2f} s; ledger {ledger} = upstream {upstream_requests}, reconcile clean"
        )
        assert late
        assert not late_on_drained, [(round(r["started"] - marks["sigterm"], 3), access[r["rid"]]) for r in late_on_drained[:5]]
        assert drain_seconds < 8  # the streams end about 2.5 s after SIGTERM; then the instance has nothing left
    finally:
        c.stop()
