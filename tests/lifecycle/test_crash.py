"""A worker killed with SIGKILL under load: it is replaced, /readyz says unready while it is
missing, and every request that reached the upstream is in the ledger: the dead worker's own
requests billed by estimate as ``worker_lost`` from its journal."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid

import pytest

from app.billing import reconciliation
from tests import support
from tests.lifecycle.conftest import ROUNDS


def _ledger(gateway: support.Gateway, ids: set[str]) -> dict:
    async def entries(store):
        found = await asyncio.gather(*(store.ledger_entry(i) for i in ids))
        return {i: e for i, e in zip(ids, found) if e is not None}

    return support.run_store(gateway, entries)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_kill_9_of_a_worker_under_load(tmp_path, models_path, upstreams, store_env, instances, round_):
    kind = "mongo" if store_env else "sqlite"
    gateway = instances(tmp_path / "gw", models_path, workers=2, **store_env)
    support.wait_all_workers(gateway)
    customer = support.new_customer(gateway)
    marker = f"crash-{uuid.uuid4().hex[:8]}"
    port = gateway.process.port
    results: list = []

    async def load():
        # Two waves of ~2 s streams and 1 s requests; the kill falls in the first.
        async def wave(tag: str, n: int):
            bodies = [support.chat_body(f"{marker} {tag}{i} [[fake:chunks=40,delay=0.05]]", stream=i % 3 != 0) for i in range(n)]
            return await asyncio.gather(*(support.raw_chat(port, customer.key, b) for b in bodies))

        first = asyncio.create_task(wave("a", 60))
        await asyncio.sleep(1.5)
        results.extend(await wave("b", 30))
        results.extend(await first)

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    support.wait_until(lambda: len(support.upstream_request_ids(upstreams["openai"], marker)) >= 40, timeout=10)
    supervisor = gateway.process.popen.pid
    victim = support.children(supervisor)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            status, body = support.readyz(gateway)
            seen.append((round(time.monotonic() - killed_at, 2), status, body["checks"].get("workers")))
            if status == 200 and len(seen) > 1 and any(s != 200 for _, s, _ in seen):
                break
        except OSError:
            pass
        time.sleep(0.05)
    assert any(s == 503 and w["ready"] == 1 for _, s, w in seen), seen[:5]
    assert seen[-1][1] == 200 and seen[-1][2] == {"expected": 2, "ready": 2}, seen[-5:]
    replacement = support.children(supervisor)
    assert len(replacement) == 2 and victim not in replacement
    thread.join(60)

    ids = support.upstream_request_ids(upstreams["openai"], marker)
    assert len(ids) >= 60  # the rest died with the worker before their upstream call
    entries = support.wait_until(lambda: (e := _ledger(gateway, ids)) and len(e) == len(ids) and e, timeout=20)
    lost = [e for e in entries.values() if e.outcome == "worker_lost"]
    assert lost, "the killed worker held no request"
    assert all(e.estimated and e.total_tokens > 0 and e.prompt_tokens == e.total_tokens for e in lost)
    complete = sum(
        1 for status, raw in results
        if status == 200 and (support.sse_events(raw)[-1:] == [b"[DONE]"] or b'"chat.completion"' in support.response_body(raw)))
    settings = gateway.settings()
    report = support.run_store(gateway, lambda store: reconciliation.reconcile(store, settings))
    assert report["ok"] and report["journal"]["unrecovered"] == 0 and report["worker_lost"] >= len(lost), report
    gateway.stop()
    assert "Task was destroyed" not in gateway.process.log()
    print(f"\n[crash:{kind}] kill -9 of 1 of 2 workers under load: {len(ids)} requests reached the upstream, "
          f"{complete} answered in full, {len(lost)} billed by estimate as worker_lost, every one in the ledger; "
          f"unready for {max(t for t, s, _ in seen if s != 200):.2f} s, then replaced")


def test_both_workers_killed_are_replaced(tmp_path, models_path, instances):
    gateway = instances(tmp_path / "gw", models_path, workers=2)
    support.wait_all_workers(gateway)
    customer = support.new_customer(gateway)
    supervisor = gateway.process.popen.pid
    before = support.children(supervisor)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    # The port keeps accepting: a connection made while no worker lives is served by a new one.
    status, raw = asyncio.run(support.raw_chat(gateway.process.port, customer.key, support.chat_body("hi"), read_timeout=20))
    assert status == 200, raw[-300:]
    support.wait_all_workers(gateway, timeout=20)
    after = support.children(supervisor)
    assert len(after) == 2 and not set(after) & set(before)
    print(f"\n[crash] both workers killed: a request sent at once was answered after {time.monotonic() - started:.2f} s")
    assert gateway.stop() == 0


def test_an_instance_killed_whole_is_billed_at_its_next_start(tmp_path, models_path, upstreams, instances):
    """SIGKILL to every process at once (a cgroup kill after the stop grace): the next start on the
    same data directory bills every request the upstream received from the journals."""
    gateway = instances(tmp_path / "gw", models_path, workers=2)
    support.wait_all_workers(gateway)
    customer = support.new_customer(gateway)
    marker = f"whole-{uuid.uuid4().hex[:8]}"
    port = gateway.process.port

    async def load():
        bodies = [support.chat_body(f"{marker} {i} [[fake:chunks=40,delay=0.05]]", stream=i % 2 == 0) for i in range(30)]
        return await asyncio.gather(*(support.raw_chat(port, customer.key, b) for b in bodies))

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    support.wait_until(lambda: len(support.upstream_request_ids(upstreams["openai"], marker)) == 30, timeout=10)
    for pid, _ in support.session_processes(gateway.process.popen.pid):
        os.kill(pid, signal.SIGKILL)
    thread.join(30)
    gateway.process.popen.wait(5)
    assert support.run_store(gateway, lambda s: s.ledger_count(customer.account_id)) == 0

    again = instances(tmp_path / "gw", models_path, workers=2)
    ids = support.upstream_request_ids(upstreams["openai"], marker)
    entries = support.wait_until(lambda: (e := _ledger(again, ids)) and len(e) == len(ids) and e, timeout=20)
    assert {e.outcome for e in entries.values()} == {"worker_lost"}
    settings = again.settings()
    report = support.run_store(again, lambda store: reconciliation.reconcile(store, settings))
    assert report["ok"] and report["recovered"] == 0 and report["worker_lost"] == 30, report
