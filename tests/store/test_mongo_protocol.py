"""What only the MongoDB store has: its documents, indexes, the exactly-once debit protocol and its recovery.

Half-done writes are staged with the raw driver exactly as a writer that crashed between steps leaves them.
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone

import pytest

from app.store.contracts import limits
from app.store.contracts.ledger import Mismatch
from app.store.mongo import INDEXES, MongoStore
from app.store.mongo.ledger import _ledger_doc
from storekit import T, account_with, debits, entry, hour_start, package, used


pytestmark = pytest.mark.parametrize("backend", ["mongo-nx", "mongo-real"], indirect=True)


async def test_init_creates_every_declared_index(backend, store):
    client, db = backend.raw_mongo()
    try:
        for collection, indexes in INDEXES.items():
            info = db[collection].index_information()
            for index in indexes:
                # nx-27017 names indexes its own way (idx_<collection>_<fields>): match on the key.
                found = [i for i in info.values() if i["key"] == list(index.key)]
                assert found, (collection, index.name)
                assert bool(found[0].get("unique")) == index.unique
                assert found[0].get("expireAfterSeconds") == index.expire_after
                if backend.name == "mongo-real":
                    assert index.name in info
                    assert info[index.name].get("partialFilterExpression") == index.partial
    finally:
        client.close()


async def test_rate_window_document(backend, store):
    now = hour_start() + 125.5
    await store.hit("key_1", 60, 1000, now)
    await store.hit("key_1", 60, 1000, now + 60)
    client, db = backend.raw_mongo()
    try:
        doc = db.rate_windows.find_one({"_id": f"key_1:{limits.hour_of(now)}"})
        assert doc["h"] == 2 and doc["m"] == {"2": 1, "3": 1}
        # A real BSON date, so the TTL index can expire it: the upsert copied it from the filter.
        expires = datetime.fromtimestamp(limits.window_expiry(now), tz=timezone.utc).replace(tzinfo=None)
        assert isinstance(doc["expires_at"], datetime) and doc["expires_at"] == expires
        assert db.rate_windows.count_documents({"expires_at": {"$lt": datetime(2200, 1, 1)}}) == 1
        assert db.rate_windows.count_documents({"expires_at": {"$lt": expires}}) == 0
    finally:
        client.close()


async def test_spent_rate_window_is_expired_by_ttl(backend, store):
    if backend.name == "mongo-real":
        pytest.skip("MongoDB's TTL monitor runs once a minute")
    spent = hour_start(ahead=-3)
    assert (await store.hit("key_1", 60, 1000, spent)).admitted
    client, db = backend.raw_mongo()
    try:
        # nx-27017 purges expired documents when the collection is next read.
        assert db.rate_windows.find_one({"_id": f"key_1:{limits.hour_of(spent)}"}) is None
    finally:
        client.close()


async def test_record_leaves_no_pending_work(backend, store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T))
    await store.record([entry("r1", "acc_1", 60, T + 1), entry("r2", "acc_1", 70, T + 2), entry("r0", "acc_1", 0, T + 3)])
    client, db = backend.raw_mongo()
    try:
        assert {d["_id"]: d["state"] for d in db.ledger.find({}, {"state": 1})} == {"r0": "applied", "r1": "applied", "r2": "applied"}
        account = db.accounts.find_one({"_id": "acc_1"})
        assert account["inflight"] == []
        assert account["packages"][0]["used"] == 130
        assert account["version"] == 3  # grant, debit, clear inflight
        assert db.ledger.find_one({"_id": "r1"})["day"] == "2025-10-09"
    finally:
        client.close()


async def test_recovery_finishes_every_half_done_write(backend, store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T), package("pkg_b", "acc_1", 100, T + 1))
    client, db = backend.raw_mongo()
    try:
        # r1: crashed after (a), inserted pending, never debited.
        db.ledger.insert_one(_ledger_doc(entry("r1", "acc_1", 10, T + 30)))
        # r2: crashed after (b), debited and inflight, still pending.
        db.ledger.insert_one(_ledger_doc(entry("r2", "acc_1", 20, T + 10)))
        # r3: crashed after (c), applied but still inflight.
        applied = _ledger_doc(entry("r3", "acc_1", 90, T + 20))
        applied.update(state="applied", debits=[["pkg_a", 80], ["pkg_b", 10]])
        db.ledger.insert_one(applied)
        account = db.accounts.find_one({"_id": "acc_1"})
        packages = account["packages"]
        packages[0]["used"], packages[1]["used"] = 100, 10
        inflight = [{"rid": "r2", "debits": [["pkg_a", 20]]}, {"rid": "r3", "debits": [["pkg_a", 80], ["pkg_b", 10]]}]
        db.accounts.update_one({"_id": "acc_1"}, {"$set": {"packages": packages, "inflight": inflight, "version": account["version"] + 1}})
        # Before recovery, the ledger does not yet explain what the packages say.
        assert db.ledger.count_documents({"state": "pending"}) == 2

        restarted = await backend.store()  # init() runs the recovery
        assert await debits(restarted, "r2") == [["pkg_a", 20]]
        assert await debits(restarted, "r3") == [["pkg_a", 80], ["pkg_b", 10]]
        assert await debits(restarted, "r1") == [["pkg_b", 10]]
        assert await used(restarted, "acc_1") == {"pkg_a": 100, "pkg_b": 20}
        assert db.accounts.find_one({"_id": "acc_1"})["inflight"] == []
        assert db.ledger.count_documents({"state": "pending"}) == 0
        assert await restarted.reconcile() == []
        assert await restarted.record([entry("r1", "acc_1", 10, T + 30), entry("r2", "acc_1", 20, T + 10)]) == 0
        assert await used(restarted, "acc_1") == {"pkg_a": 100, "pkg_b": 20}
    finally:
        client.close()


async def test_reconcile_finishes_pending_entries_first(backend, store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T))
    client, db = backend.raw_mongo()
    try:
        db.ledger.insert_one(_ledger_doc(entry("r1", "acc_1", 10, T + 1)))
    finally:
        client.close()
    assert await store.reconcile() == []
    assert await debits(store, "r1") == [["pkg_a", 10]]


async def test_replaying_a_pending_entry_finishes_it(backend, store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T))
    client, db = backend.raw_mongo()
    try:
        db.ledger.insert_one(_ledger_doc(entry("r1", "acc_1", 10, T + 1)))
    finally:
        client.close()
    # The writer replays its spool: the entry is not new, but its debit is finished now.
    assert await store.record([entry("r1", "acc_1", 10, T + 1), entry("r2", "acc_1", 5, T + 2)]) == 1
    assert await used(store, "acc_1") == {"pkg_a": 15}
    assert await debits(store, "r1") == [["pkg_a", 10]]


async def test_many_writers_on_the_same_entries_debit_once(backend, store):
    writers = [store] + [await backend.store() for _ in range(3)]
    rng = random.Random(3)
    accounts = ["acc_a", "acc_b"]
    for account in accounts:
        await account_with(store, account, package(f"{account}_1", account, 500, T), package(f"{account}_2", account, 500, T + 1))
    entries = [entry(f"r{i}", rng.choice(accounts), rng.randint(1, 20), T + 10 + i) for i in range(120)]
    batches = [entries[i:i + 30] for i in range(0, 120, 30)]

    async def write(s, order):
        return sum([await s.record(batches[i]) for i in order])

    new = await asyncio.gather(*(write(s, rng.sample(range(4), 4)) for s in writers), store.recover())
    assert sum(new[:4]) == 120
    for account in accounts:
        assert sum((await used(store, account)).values()) == sum(e.total_tokens for e in entries if e.account_id == account)
    assert await store.reconcile() == []
    client, db = backend.raw_mongo()
    try:
        assert db.ledger.count_documents({"state": "pending"}) == 0
        assert [d["inflight"] for d in db.accounts.find({}, {"inflight": 1})] == [[], []]
    finally:
        client.close()


async def test_client_is_made_on_first_use(backend):
    lazy = MongoStore(backend.url, backend.db_name, timeout=1.0)
    assert lazy._client is None
    await lazy.ping()
    assert lazy._client is not None
    await lazy.close()
    assert lazy._client is None


async def test_reconcile_counts_inflight_debits_once(backend, store):
    """A writer paused between its steps: the account already holds the debits the ledger lacks or repeats."""
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 100, T))
    client, db = backend.raw_mongo()
    try:
        db.ledger.insert_one(_ledger_doc(entry("r1", "acc_1", 20, T + 1)))  # after (b): pending
        applied = _ledger_doc(entry("r2", "acc_1", 30, T + 2))  # after (c): applied
        applied.update(state="applied", debits=[["pkg_a", 30]])
        db.ledger.insert_one(applied)
        account = db.accounts.find_one({"_id": "acc_1"})
        account["packages"][0]["used"] = 50
        inflight = [{"rid": "r1", "debits": [["pkg_a", 20]]}, {"rid": "r2", "debits": [["pkg_a", 30]]}]
        db.accounts.update_one({"_id": "acc_1"}, {"$set": {"packages": account["packages"], "inflight": inflight, "version": 7}})
    finally:
        client.close()
    # Per-account check alone: reconcile() would first let recovery finish both entries.
    assert await store._reconcile_account("acc_1") == []
    backend.tamper_used("acc_1", "pkg_a", -1)
    assert await store._reconcile_account("acc_1") == [Mismatch("pkg_a", "acc_1", 49, 50)]
