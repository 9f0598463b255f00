"""One contract, every backend: each test runs on SQLite, nx-27017 and (with TEST_MONGO_URL) MongoDB."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace

import pytest

from app.core.errors import Conflict, StoreUnavailable
from app.store import (
    Store,
)
from app.store.contracts.accounts import (
    Account,
)
from app.store.contracts.keys import (
    KeyRecord,
)
from app.store.contracts.ledger import (
    LedgerEntry,
    Mismatch,
    Package,
    PackageBalance,
    UsageRow,
    active_packages,
    allocate,
)
from app.store.contracts.limits import (
    WindowCount,
)
from storekit import DAY, FAR, T, account_with, debits, entry, hour_start, package, used


# accounts


async def test_account_create_and_lookup(store: Store):
    created = await store.create_account("acc_1", "alice", T)
    assert created == Account("acc_1", "alice", T)
    await store.create_account("acc_2", "bob", T + 1)
    assert await store.account("acc_1") == created
    assert await store.account("alice") == created
    assert await store.account("bob") == Account("acc_2", "bob", T + 1)
    assert await store.account("nobody") is None
    assert [a.id for a in await store.accounts()] == ["acc_1", "acc_2"]


async def test_duplicate_account_name_conflicts(store: Store):
    await store.create_account("acc_1", "alice", T)
    with pytest.raises(Conflict):
        await store.create_account("acc_2", "alice", T + 1)
    with pytest.raises(Conflict):
        await store.create_account("acc_1", "carol", T + 1)
    assert await store.account("acc_2") is None
    assert [a.name for a in await store.accounts()] == ["alice"]


# keys


async def test_key_create_lookup_revoke_and_limits(store: Store):
    await store.create_account("acc_1", "alice", T)
    first = KeyRecord("key_1", "acc_1", "zk-aaaaaaa", T + 1)
    second = KeyRecord("key_2", "acc_1", "zk-bbbbbbb", T + 2, per_minute=10, per_hour=100)
    assert await store.create_key(first, "hash-1") == first
    await store.create_key(second, "hash-2")
    assert await store.key_by_hash("hash-1") == first
    assert await store.key_by_hash("hash-2") == second
    assert await store.key_by_hash("hash-3") is None
    assert await store.key("key_2") == second
    assert await store.key("key_9") is None
    assert [k.id for k in await store.keys("acc_1")] == ["key_1", "key_2"]
    assert await store.keys("acc_9") == []
    with pytest.raises(Conflict):
        await store.create_key(KeyRecord("key_3", "acc_1", "zk-ccccccc", T + 3), "hash-1")

    assert await store.revoke_key("key_1", T + 10) is True
    revoked = await store.key_by_hash("hash-1")
    assert revoked.revoked_at == T + 10 and not revoked.active
    assert await store.revoke_key("key_1", T + 20) is True
    assert (await store.key("key_1")).revoked_at == T + 10
    assert await store.revoke_key("key_9", T) is False
    assert (await store.key("key_2")).active

    assert await store.set_key_limits("key_2", 5, 50) is True
    assert (await store.key_by_hash("hash-2")).per_minute == 5
    assert (await store.key("key_2")).per_hour == 50
    assert await store.set_key_limits("key_2", None, None) is True
    assert await store.key("key_2") == replace(second, per_minute=None, per_hour=None)
    assert await store.set_key_limits("key_9", 1, 1) is False


async def test_key_for_unknown_account_conflicts(store: Store):
    with pytest.raises(Conflict):
        await store.create_key(KeyRecord("key_1", "acc_9", "zk-aaaaaaa", T), "hash-1")
    assert await store.key("key_1") is None


# packages


async def test_grant_and_list_packages(store: Store):
    await store.create_account("acc_1", "alice", T)
    await store.create_account("acc_2", "bob", T)
    later = package("pkg_b", "acc_1", 10_000_000, T + 20, plan="business")
    earlier = package("pkg_a", "acc_1", 2_000_000, T + 10)
    assert await store.grant_package(later) == later
    await store.grant_package(earlier)
    assert await store.packages("acc_1") == [earlier, later]
    assert await store.packages("acc_2") == []
    assert await store.packages("acc_9") == []
    with pytest.raises(Conflict):
        await store.grant_package(package("pkg_a", "acc_1", 5, T + 30))
    with pytest.raises(Conflict):
        await store.grant_package(package("pkg_z", "acc_9", 5, T + 30))
    assert await store.packages("acc_1") == [earlier, later]


# debits


async def test_debit_spills_into_the_next_package(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T), package("pkg_b", "acc_1", 100, T + 1))
    assert await store.record([entry("r1", "acc_1", 60, T + 10)]) == 1
    assert await store.record([entry("r2", "acc_1", 60, T + 11)]) == 1
    assert await debits(store, "r1") == [["pkg_a", 60]]
    assert await debits(store, "r2") == [["pkg_a", 40], ["pkg_b", 20]]
    assert await used(store, "acc_1") == {"pkg_a": 100, "pkg_b": 20}


async def test_spill_within_one_batch_follows_request_time(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T), package("pkg_b", "acc_1", 100, T + 1))
    batch = [entry("r1", "acc_1", 30, T + 20), entry("r2", "acc_1", 90, T + 10)]
    assert await store.record(batch) == 2
    assert await debits(store, "r2") == [["pkg_a", 90]]
    assert await debits(store, "r1") == [["pkg_a", 10], ["pkg_b", 20]]


async def test_overdraft_lands_on_the_last_package(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 50, T), package("pkg_b", "acc_1", 50, T + 1))
    await store.record([entry("r1", "acc_1", 130, T + 10)])
    assert await debits(store, "r1") == [["pkg_a", 50], ["pkg_b", 80]]
    # Nothing active is left: the newest package takes the whole debit.
    await store.record([entry("r2", "acc_1", 7, T + 11)])
    assert await debits(store, "r2") == [["pkg_b", 7]]
    packages = {p.id: p for p in await store.packages("acc_1")}
    assert packages["pkg_b"].used == 87 > packages["pkg_b"].tokens
    assert packages["pkg_a"].used == 50
    assert sum(t for _, t in await debits(store, "r1")) == 130
    assert await store.reconcile() == []


async def test_expired_packages_are_skipped(store: Store):
    old = package("pkg_old", "acc_1", 100, T, expires=T + 1000)
    new = package("pkg_new", "acc_1", 100, T + 10)
    await account_with(store, "acc_1", old, new)
    await store.record([entry("before", "acc_1", 30, T + 500), entry("after", "acc_1", 30, T + 2000)])
    assert await debits(store, "before") == [["pkg_old", 30]]
    assert await debits(store, "after") == [["pkg_new", 30]]
    # Once the only usable package is the expired one, the overdraft goes to the newest package.
    await store.record([entry("late", "acc_1", 500, T + 3000)])
    assert await debits(store, "late") == [["pkg_new", 500]]
    assert await used(store, "acc_1") == {"pkg_old": 30, "pkg_new": 530}


async def test_account_without_packages_records_without_debits(store: Store):
    await store.create_account("acc_1", "alice", T)
    assert await store.record([entry("r1", "acc_1", 40, T), entry("r2", "acc_9", 40, T)]) == 2
    assert await debits(store, "r1") == []
    assert await debits(store, "r2") == []
    assert await store.ledger_count() == 2
    assert await store.reconcile() == []


async def test_zero_token_entries_are_recorded_without_debits(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T))
    failed = entry("r0", "acc_1", 0, T + 1, outcome="upstream_error", status=502)
    assert await store.record([failed, entry("r1", "acc_1", 10, T + 2)]) == 2
    assert await debits(store, "r0") == []
    assert (await store.ledger_entry("r0")).outcome == "upstream_error"
    assert await used(store, "acc_1") == {"pkg_a": 10}
    assert await store.ledger_count(outcome="upstream_error") == 1
    assert await store.ledger_count("acc_1", outcome="ok") == 1
    assert await store.ledger_count("acc_9", outcome="ok") == 0


# idempotency


async def test_same_request_twice_in_one_batch_is_one_entry(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 1000, T))
    assert await store.record([entry("r1", "acc_1", 25, T + 1), entry("r1", "acc_1", 25, T + 1)]) == 1
    assert await store.ledger_count("acc_1") == 1
    assert await used(store, "acc_1") == {"pkg_a": 25}


async def test_a_batch_of_many_entries_is_stored_field_for_field(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 1000, T), package("pkg_b", "acc_1", 10**6, T + 1))
    await store.create_account("acc_2", "bob", T)
    assert await store.record([entry("r_old", "acc_1", 10, T + 1)]) == 1
    batch = [
        entry(f"r{i:03d}", "acc_1" if i % 3 else "acc_2", 7 + i, T + 2 + i, model=("zowy-1", "zowy-2")[i % 2],
              user=f"user-{i}" if i % 5 == 0 else None, stream=bool(i % 2), estimated=i % 7 == 0,
              status=200 if i % 11 else 502, outcome="ok" if i % 11 else "upstream_error", latency_ms=i / 4,
              attempts=1 + i % 3, reasoning_tokens=i % 4, cached_tokens=i % 6, api=("chat", "responses", "messages")[i % 3])
        for i in range(2 * 64 + 5)
    ]
    sent = batch + [entry("r_old", "acc_1", 10, T + 1), batch[5]]
    assert await store.record(sent) == len(batch)
    assert await store.ledger_count() == len(batch) + 1
    for e in batch:
        stored = await store.ledger_entry(e.request_id)
        assert replace(stored, debits=[]) == replace(e, debits=[]), e.request_id
    charged = sum(e.total_tokens for e in batch if e.account_id == "acc_1")
    assert await used(store, "acc_1") == {"pkg_a": 1000, "pkg_b": 10 + charged - 1000}
    assert await store.reconcile() == []


async def test_same_request_across_batches_is_debited_once(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 1000, T))
    assert await store.record([entry("r1", "acc_1", 25, T + 1), entry("r2", "acc_1", 5, T + 2)]) == 2
    assert await store.record([entry("r1", "acc_1", 25, T + 1)]) == 0
    assert await store.record([entry("r2", "acc_1", 5, T + 2), entry("r3", "acc_1", 1, T + 3), entry("r1", "acc_1", 25, T + 1)]) == 1
    assert await store.record([]) == 0
    assert await store.ledger_count("acc_1") == 3
    assert await store.ledger_count() == 3
    assert await store.ledger_count("acc_9") == 0
    assert await used(store, "acc_1") == {"pkg_a": 31}
    assert await debits(store, "r1") == [["pkg_a", 25]]
    assert await store.reconcile() == []


async def test_ledger_entry_keeps_every_field(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 1000, T))
    original = entry(
        "chatcmpl-1", "acc_1", 42, T + 0.25, model="zowy-2", estimated=True, stream=True,
        outcome="client_disconnected", status=499, latency_ms=1234.5, user="end-user-7", attempts=2,
    )
    await store.record([replace(original)])
    stored = await store.ledger_entry("chatcmpl-1")
    assert stored == replace(original, debits=[["pkg_a", 42]])
    assert await store.ledger_entry("chatcmpl-2") is None


# reconcile


class Reference:
    """The debit rule, applied batch by batch in memory: what every backend must end up with."""

    def __init__(self) -> None:
        self.packages: dict[str, list[Package]] = {}
        self.debits: dict[str, list[list]] = {}

    def grant(self, p: Package) -> None:
        self.packages.setdefault(p.account_id, []).append(p)

    def record(self, batch: list[LedgerEntry]) -> int:
        unique = {e.request_id: e for e in batch}
        fresh = [e for rid, e in unique.items() if rid not in self.debits]
        by_account: dict[str, list[LedgerEntry]] = {}
        for e in fresh:
            self.debits[e.request_id] = []
            if e.total_tokens > 0:
                by_account.setdefault(e.account_id, []).append(e)
        for account, entries in by_account.items():
            packages = sorted(self.packages.get(account, []), key=lambda p: (p.granted_at, p.id))
            newest = packages[-1].id if packages else None
            for e in sorted(entries, key=lambda e: e.created_at):
                current = [PackageBalance(p.id, p.remaining) for p in active_packages(packages, e.created_at)]
                self.debits[e.request_id] = allocate(e.total_tokens, current, newest)
                for pid, tokens in self.debits[e.request_id]:
                    packages = [replace(p, used=p.used + tokens) if p.id == pid else p for p in packages]
            self.packages[account] = packages
        return len(fresh)


async def test_random_batches_match_the_debit_rule_and_reconcile(backend, store: Store):
    rng = random.Random(20250101)
    ref = Reference()
    accounts = [f"acc_{i}" for i in range(4)]
    for i, account in enumerate(accounts):
        await store.create_account(account, f"name-{i}", T)
        for j in range(i % 3 + 1):
            expires = T + 400 if (i, j) == (1, 0) else FAR
            p = package(f"pkg_{i}_{j}", account, rng.randint(200, 900), T + j, expires=expires)
            await store.grant_package(p)
            ref.grant(p)
    rids: list[str] = []
    clock = T + 10
    for batch_no in range(25):
        batch = []
        for _ in range(rng.randint(1, 16)):
            if rids and rng.random() < 0.2:
                rid = rng.choice(rids)
                batch.append(entry(rid, "acc_0", 1, clock))  # a replay: whatever it says, it was already counted
                continue
            clock += rng.uniform(1, 40)
            rid = f"r{len(rids)}"
            rids.append(rid)
            batch.append(entry(rid, rng.choice(accounts + ["acc_ghost"]), rng.choice([0, 1, 7, 50, 120, 300]), clock))
        assert await store.record(batch) == ref.record(batch), batch_no
    assert await store.ledger_count() == len(rids)
    for rid in rids:
        assert await debits(store, rid) == ref.debits[rid], rid
    for account in accounts:
        assert await store.packages(account) == sorted(ref.packages[account], key=lambda p: (p.granted_at, p.id))
    assert await store.reconcile() == []

    before = await used(store, "acc_2")
    backend.tamper_used("acc_2", "pkg_2_0", 5)
    assert await store.reconcile() == [Mismatch("pkg_2_0", "acc_2", before["pkg_2_0"] + 5, before["pkg_2_0"])]


# usage


async def test_usage_by_day_and_model(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 10**9, T - 10 * DAY))
    await store.create_account("acc_2", "bob", T)
    day0 = 1_760_054_400.0  # 2025-10-10 00:00:00 UTC
    await store.record([
        entry("a", "acc_1", 30, day0 + 10 * 3600),
        entry("b", "acc_1", 60, day0 + 11 * 3600),
        entry("c", "acc_1", 9, day0 + DAY - 0.5, model="zowy-1-pro"),
        entry("d", "acc_1", 3, day0 + DAY, model="zowy-1"),
        entry("e", "acc_1", 0, day0 + DAY + 5, model="zowy-2", outcome="upstream_error", status=502),
        entry("f", "acc_2", 1000, day0 + 12 * 3600),
        entry("g", "acc_1", 500, day0 - 1),
        entry("h", "acc_1", 500, day0 + 2 * DAY),
    ])
    rows = await store.usage("acc_1", day0, day0 + 2 * DAY)
    assert rows == [
        UsageRow("2025-10-10", "zowy-1", 2, 10 + 20, 20 + 40, 90),
        UsageRow("2025-10-10", "zowy-1-pro", 1, 3, 6, 9),
        UsageRow("2025-10-11", "zowy-1", 1, 1, 2, 3),
        UsageRow("2025-10-11", "zowy-2", 1, 0, 0, 0, errors=1),
    ]
    assert await store.usage("acc_1", day0 + 3 * DAY, day0 + 4 * DAY) == []
    assert await store.usage("acc_9", day0, day0 + 2 * DAY) == []


# rate windows


async def test_hit_admits_per_minute_then_rejects(store: Store):
    t0 = hour_start()
    for i in range(1, 6):
        assert await store.hit("key_1", 5, 100, t0 + 1 + i / 10) == WindowCount(True, i, i)
    assert await store.hit("key_1", 5, 100, t0 + 2) == WindowCount(False, 5, 5)
    assert await store.hit("key_1", 5, 100, t0 + 59.9) == WindowCount(False, 5, 5)
    assert await store.hit("key_1", 5, 100, t0 + 60) == WindowCount(True, 1, 6)


async def test_hit_hour_limit_binds(store: Store):
    t0 = hour_start()
    for i in range(5):
        assert await store.hit("key_1", 1000, 5, t0 + 60 * i + 3) == WindowCount(True, 1, i + 1)
    assert await store.hit("key_1", 1000, 5, t0 + 60 * 4 + 30) == WindowCount(False, 1, 5)
    assert await store.hit("key_1", 1000, 5, t0 + 60 * 5) == WindowCount(False, 0, 5)
    assert await store.hit("key_1", 1000, 5, t0 + 3599.9) == WindowCount(False, 0, 5)
    assert await store.hit("key_1", 1000, 5, t0 + 3600) == WindowCount(True, 1, 1)


async def test_hit_windows_roll_over(store: Store):
    t0 = hour_start()
    assert await store.hit("key_1", 2, 3, t0 + 1200) == WindowCount(True, 1, 1)
    assert await store.hit("key_1", 2, 3, t0 + 1259) == WindowCount(True, 2, 2)
    assert await store.hit("key_1", 2, 3, t0 + 1259.99) == WindowCount(False, 2, 2)
    assert await store.hit("key_1", 2, 3, t0 + 1260) == WindowCount(True, 1, 3)
    assert await store.hit("key_1", 2, 3, t0 + 1261) == WindowCount(False, 1, 3)
    assert await store.hit("key_1", 2, 3, t0 + 3600) == WindowCount(True, 1, 1)
    assert await store.hit("key_1", 2, 3, t0 + 3601) == WindowCount(True, 2, 2)
    assert await store.hit("key_1", 2, 3, t0 + 3602) == WindowCount(False, 2, 2)
    assert await store.hit("key_1", 2, 3, t0 + 2 * 3600 + 1200) == WindowCount(True, 1, 1)


async def test_hit_keys_are_independent(store: Store):
    t0 = hour_start()
    assert await store.hit("key_1", 1, 10, t0) == WindowCount(True, 1, 1)
    assert await store.hit("key_1", 1, 10, t0) == WindowCount(False, 1, 1)
    assert await store.hit("key_2", 1, 10, t0) == WindowCount(True, 1, 1)
    assert await store.hit("key_1:1", 1, 10, t0) == WindowCount(True, 1, 1)


async def test_hit_lowered_limit_applies_at_once(store: Store):
    t0 = hour_start()
    for i in range(1, 4):
        assert await store.hit("key_1", 10, 100, t0) == WindowCount(True, i, i)
    assert await store.hit("key_1", 2, 100, t0) == WindowCount(False, 3, 3)
    assert await store.hit("key_1", 10, 3, t0 + 60) == WindowCount(False, 0, 3)


async def _hits(stores: list[Store], n: int, per_minute: int, now: float) -> list[WindowCount]:
    return await asyncio.gather(*(stores[i % len(stores)].hit("key_hot", per_minute, 1000, now) for i in range(n)))


async def test_concurrent_hits_admit_exactly_the_limit(store: Store):
    results = await _hits([store], 200, 60, hour_start() + 30)
    admitted = sorted(r.minute for r in results if r.admitted)
    assert admitted == list(range(1, 61))
    assert all(r.minute == 60 and r.hour == 60 for r in results if not r.admitted)


async def test_concurrent_hits_from_two_store_instances(backend, store: Store):
    other = await backend.store()
    results = await _hits([store, other], 200, 60, hour_start() + 30)
    assert sorted(r.minute for r in results if r.admitted) == list(range(1, 61))
    assert await store.hit("key_hot", 60, 1000, hour_start() + 31) == WindowCount(False, 60, 60)


# concurrent ledger writers


async def test_concurrent_record_from_two_store_instances(backend, store: Store):
    other = await backend.store()
    rng = random.Random(7)
    accounts = ["acc_a", "acc_b", "acc_c"]
    for account in accounts:
        await account_with(store, account, package(f"{account}_1", account, 3000, T), package(f"{account}_2", account, 3000, T + 1))
    entries = [entry(f"r{i}", rng.choice(accounts), rng.randint(1, 100), T + 10 + i) for i in range(300)]
    first = [entries[i:i + 40] for i in range(0, 200, 40)]
    second = [entries[i:i + 40] for i in range(100, 300, 40)][::-1]

    async def write(s: Store, batches: list[list[LedgerEntry]]) -> int:
        return sum([await s.record(b) for b in batches])

    new = await asyncio.gather(write(store, first), write(other, second), write(other, first[2:3]))
    assert sum(new) == 300
    assert await store.ledger_count() == 300
    for account in accounts:
        mine = [e for e in entries if e.account_id == account]
        assert sum((await used(other, account)).values()) == sum(e.total_tokens for e in mine)
    for e in entries:
        assert sum(t for _, t in await debits(store, e.request_id)) == e.total_tokens
    assert await store.reconcile() == []
    assert await other.reconcile() == []


async def test_reconcile_during_writes_reports_nothing_false(backend, store: Store):
    writer = await backend.store()
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 10**6, T))
    done = asyncio.Event()
    passes = 0

    async def write() -> int:
        # At least 60 batches, and on until reconcile has run 3 times meanwhile, however slow it is.
        i = 0
        while i < 60 or (passes < 3 and i < 3000):
            await writer.record([entry(f"r{i}-{j}", "acc_1", 1 + j, T + i + j / 10) for j in range(3)])
            await asyncio.sleep(0.001)  # a store may answer without suspending; let reconcile run between writes
            i += 1
        done.set()
        return i

    async def check() -> None:
        nonlocal passes
        while not done.is_set() or passes == 0:
            assert await store.reconcile() == []
            passes += 1

    batches, _ = await asyncio.gather(write(), check())
    assert passes >= 3
    assert await used(store, "acc_1") == {"pkg_a": batches * 6}


# init


async def test_init_is_idempotent(backend, store: Store):
    await store.create_account("acc_1", "alice", T)
    await store.init()
    again = await backend.store()
    await again.ping()
    assert await again.account("alice") == Account("acc_1", "alice", T)
    with pytest.raises(Conflict):
        await again.create_account("acc_2", "alice", T)


# unavailability


@pytest.mark.parametrize("backend", ["sqlite", "mongo-nx"], indirect=True)
async def test_store_unavailable_is_prompt_and_recoverable(backend, request):
    timeout = 1.0
    server = None
    if backend.is_mongo:
        server = request.getfixturevalue("dedicated_nx")
        backend.url = server.url
    store = await backend.store(timeout=timeout)
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 1000, T))
    await store.record([entry("r1", "acc_1", 10, T + 1)])
    t0 = hour_start()

    if server is not None:
        server.stop()
        calls = [store.ping(), store.account("acc_1"), store.hit("key_1", 60, 1000, t0), store.record([entry("r2", "acc_1", 5, T + 2)])]
    else:
        import sqlite3

        blockers = [sqlite3.connect(path, isolation_level=None) for path in (backend.sqlite_path, store.limits_path)]
        for blocker in blockers:
            blocker.execute("BEGIN EXCLUSIVE")
        calls = [store.hit("key_1", 60, 1000, t0), store.record([entry("r2", "acc_1", 5, T + 2)])]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call
        assert time.monotonic() - started < timeout + 1.0

    if server is not None:
        server.start()
    else:
        for blocker in blockers:
            blocker.execute("ROLLBACK")
            blocker.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            await store.ping()
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not come back"
            await asyncio.sleep(0.1)
    assert await store.account("acc_1") == Account("acc_1", "name-acc_1", T)
    assert await store.record([entry("r2", "acc_1", 5, T + 2)]) == 1
    assert await used(store, "acc_1") == {"pkg_a": 15}
    assert (await store.hit("key_1", 60, 1000, t0)).admitted
    assert await store.reconcile() == []


# balance reservations

def size_with_slice(slice_: int):
    return lambda need, free: 0 if need > free else min(free, need + slice_)


async def test_lease_grants_from_what_is_free_and_refuses_past_it(store: Store):
    now = time.time()
    await account_with(store, "acc_1", package("pkg_1", "acc_1", 1000, now - 10, now + DAY))
    grant = await store.lease("acc_1", "w1:acc_1", 300, size_with_slice(100), now, now + 60)
    assert (grant.granted, grant.remaining, grant.reserved, grant.held) == (400, 1000, 400, 400)
    grant = await store.lease("acc_1", "w2:acc_1", 500, size_with_slice(0), now, now + 60)
    assert (grant.granted, grant.reserved, grant.free) == (500, 900, 100)
    refused = await store.lease("acc_1", "w2:acc_1", 200, size_with_slice(0), now, now + 60)
    assert (refused.granted, refused.free, refused.held) == (0, 100, 500)
    await store.return_lease("acc_1", "w1:acc_1", 150)
    assert {l.id: l.tokens for l in await store.leases("acc_1")} == {"w1:acc_1": 250, "w2:acc_1": 500}
    await store.return_lease("acc_1", "w1:acc_1", 10_000)  # never below zero
    assert {l.id: l.tokens for l in await store.leases("acc_1")}["w1:acc_1"] == 0


async def test_expired_leases_free_their_tokens_and_are_swept(store: Store):
    now = time.time()
    await account_with(store, "acc_1", package("pkg_1", "acc_1", 1000, now - 10, now + DAY))
    await store.lease("acc_1", "dead:acc_1", 900, size_with_slice(0), now - 120, now - 60)
    assert [l.id for l in await store.expired_leases(now)] == ["dead:acc_1"]
    await store.sweep(now)
    assert await store.leases("acc_1") == [] and await store.expired_leases(now) == []
    await store.lease("acc_1", "dead:acc_1", 900, size_with_slice(0), now - 120, now - 60)
    grant = await store.lease("acc_1", "live:acc_1", 900, size_with_slice(0), now, now + 60)
    assert grant.granted == 900  # the expired lease holds nothing, and is dropped on the way
    assert [l.id for l in await store.leases("acc_1")] == ["live:acc_1"]
    renewed = await store.lease("acc_1", "live:acc_1", 0, size_with_slice(0), now, now + 120)
    assert renewed.granted == 0 and renewed.held == 900


async def test_ledger_entries_settle_their_reservations_exactly_once(backend, store: Store):
    now = time.time()
    await account_with(store, "acc_1", package("pkg_1", "acc_1", 1000, now - 10, now + DAY))
    await store.lease("acc_1", "w:acc_1", 600, size_with_slice(0), now, now + 60)
    spent = entry("r1", "acc_1", 250, now, lease_id="w:acc_1", reserved=300)
    failed = entry("r2", "acc_1", 0, now, lease_id="w:acc_1", reserved=200, outcome="upstream_error")
    other = await backend.store()  # another instance writing the same entries
    await asyncio.gather(store.record([spent, failed]), other.record([spent, failed]))
    await store.record([spent])
    (lease,) = await store.leases("acc_1")
    assert lease.tokens == 100  # 600 - 300 - 200, once
    assert await used(store, "acc_1") == {"pkg_1": 250}
    assert (await store.ledger_entry("r1")).reserved == 300
    assert await store.reconcile() == []


async def test_concurrent_leases_from_two_instances_never_exceed_the_balance(backend, store: Store):
    now = time.time()
    await account_with(store, "acc_1", package("pkg_1", "acc_1", 5000, now - 10, now + DAY))
    other = await backend.store()

    async def take(s: Store, worker: str) -> int:
        got = 0
        for _ in range(10):
            got += (await s.lease("acc_1", worker, 300, size_with_slice(0), now, now + 60)).granted
        return got

    taken = await asyncio.gather(*(take(s, f"w{i}:acc_1") for i, s in enumerate([store, other] * 3)))
    assert sum(taken) == 4800  # 16 of the 60 asked fit, none beyond
    assert sum(l.tokens for l in await store.leases("acc_1")) == 4800


async def test_hit_counts_several_at_once_within_both_limits(store: Store):
    now = hour_start() + 5
    assert await store.hit("key_many", 10, 100, now, take=4) == WindowCount(True, 4, 4)
    assert await store.hit("key_many", 10, 100, now, take=6) == WindowCount(True, 10, 10)
    refused = await store.hit("key_many", 10, 100, now, take=1)
    assert not refused.admitted and refused.minute == 10
    assert (await store.hit("key_many", 10, 12, now + 60, take=3)).admitted is False  # the hour has 2 left
    assert await store.hit("key_many", 10, 12, now + 60, take=2) == WindowCount(True, 2, 12)
