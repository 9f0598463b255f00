"""The contract of leases on a key's token cap, on every backend: asked with the account's lease in one
operation, granted within the cap less the key's ledger sum and the other leases on it, together with
the account's or not at all, settled by ledger entries exactly once, and apart from the account's."""
from __future__ import annotations

import asyncio
import time

from app.store import Store
from app.store.contracts.keys import KeyRecord
from app.store.contracts.leases import CapAsk
from storekit import DAY, T, account_with, entry, package, used


def exact(need: int, free: int) -> int:
    return 0 if need > free else need


def with_slice(slice_: int):
    return lambda need, free: 0 if need > free else min(free, need + slice_)


async def capped_account(store: Store, tokens: int = 100_000, now: float | None = None) -> float:
    now = now or time.time()
    await account_with(store, "acc_1", package("pkg_1", "acc_1", tokens, now - 10, now + DAY))
    await store.create_key(KeyRecord("key_1", "acc_1", "zk-aaaaaaa", T, token_cap=1000), "hash-1")
    await store.create_key(KeyRecord("key_2", "acc_1", "zk-bbbbbbb", T), "hash-2")
    return now


def ask(worker: str, need: int, cap: int = 1000, key: str = "key_1") -> CapAsk:
    return CapAsk(key, cap, f"{worker}:{key}", need)


async def held(store: Store, key_id: str = "key_1") -> dict[str, int]:
    return {l.id: l.tokens for l in await store.key_leases(key_id)}


async def test_a_cap_lease_grants_what_the_cap_leaves_and_is_apart_from_the_account(store: Store):
    now = await capped_account(store)
    await store.record([entry("r1", "acc_1", 300, now)])  # the key has used 300 of its 1000
    grant = await store.lease("acc_1", "w1:acc_1", 200, exact, now, now + 60, ask("w1", 200))
    assert (grant.granted, grant.held) == (200, 200)
    assert (grant.cap.granted, grant.cap.remaining, grant.cap.reserved, grant.cap.held, grant.cap.free) == (200, 700, 200, 200, 500)
    # The cap leaves 500: a second worker asking 600 gets nothing, on the cap or on the balance.
    refused = await store.lease("acc_1", "w2:acc_1", 600, exact, now, now + 60, ask("w2", 600))
    assert (refused.granted, refused.cap.granted, refused.cap.free, refused.free) == (0, 0, 500, 100_000 - 300 - 200)
    assert {l.id for l in await store.leases("acc_1")} == {"w1:acc_1"}
    assert await held(store) == {"w1:key_1": 200}
    granted = await store.lease("acc_1", "w2:acc_1", 500, with_slice(1000), now, now + 60, ask("w2", 500))
    assert (granted.granted, granted.cap.granted, granted.cap.free) == (1500, 500, 0)  # a slice of the balance, not of the cap
    # The account's leases are what they always were: its balance, without the caps' leases.
    assert {l.id: l.tokens for l in await store.leases("acc_1")} == {"w1:acc_1": 200, "w2:acc_1": 1500}
    assert await held(store) == {"w1:key_1": 200, "w2:key_1": 500}
    await store.return_lease("acc_1", "w2:key_1", 300, key_id="key_1")
    assert await held(store) == {"w1:key_1": 200, "w2:key_1": 200}
    assert {l.id: l.tokens for l in await store.leases("acc_1")}["w2:acc_1"] == 1500
    # Renewing both (need 0) moves neither amount.
    renewed = await store.lease("acc_1", "w1:acc_1", 0, exact, now, now + 120, ask("w1", 0))
    assert (renewed.held, renewed.cap.held) == (200, 200)
    assert {l.id: l.expires_at for l in await store.key_leases("key_1")}["w1:key_1"] == now + 120
    assert await store.key_leases("key_2") == []


async def test_an_account_that_cannot_cover_moves_no_cap_lease(store: Store):
    now = await capped_account(store, tokens=400)
    refused = await store.lease("acc_1", "w1:acc_1", 500, exact, now, now + 60, ask("w1", 500))
    assert (refused.granted, refused.free, refused.cap.granted, refused.cap.free) == (0, 400, 0, 1000)
    assert await store.leases("acc_1") == [] and await store.key_leases("key_1") == []
    # The worker's own unused lease on the balance may cover the request while the cap is asked alone.
    await store.lease("acc_1", "w1:acc_1", 400, exact, now, now + 60)
    grant = await store.lease("acc_1", "w1:acc_1", 0, exact, now, now + 60, ask("w1", 400))
    assert (grant.granted, grant.held, grant.cap.granted) == (0, 400, 400)


async def test_ledger_entries_settle_cap_leases_exactly_once(backend, store: Store):
    now = await capped_account(store)
    await store.lease("acc_1", "w:acc_1", 600, exact, now, now + 60, ask("w", 600))
    spent = entry("r1", "acc_1", 250, now, lease_id="w:acc_1", key_lease_id="w:key_1", reserved=300)
    failed = entry("r2", "acc_1", 0, now, lease_id="w:acc_1", key_lease_id="w:key_1", reserved=200, outcome="upstream_error")
    other = await backend.store()  # another instance writing the same entries
    await asyncio.gather(store.record([spent, failed]), other.record([spent, failed]))
    await store.record([spent])
    assert await held(store) == {"w:key_1": 100}  # 600 - 300 - 200, once
    assert {l.id: l.tokens for l in await store.leases("acc_1")} == {"w:acc_1": 100}
    assert await store.key_tokens("key_1") == 250 and await used(store, "acc_1") == {"pkg_1": 250}
    assert (await store.ledger_entry("r1")).key_lease_id == "w:key_1"
    # What the cap leaves now: 1000 - 250 used - 100 still leased.
    grant = await store.lease("acc_1", "w2:acc_1", 700, exact, now, now + 60, ask("w2", 700))
    assert (grant.cap.granted, grant.cap.free) == (0, 650)
    assert await store.reconcile() == []


async def test_concurrent_cap_leases_from_two_instances_never_exceed_the_cap(backend, store: Store):
    now = await capped_account(store)
    other = await backend.store()

    async def take(s: Store, worker: str) -> int:
        got = 0
        for _ in range(10):
            grant = await s.lease("acc_1", f"{worker}:acc_1", 0, exact, now, now + 60, ask(worker, 300, cap=5000))
            got += grant.cap.granted
        return got

    taken = await asyncio.gather(*(take(s, f"w{i}") for i, s in enumerate([store, other] * 3)))
    assert sum(taken) == 4800  # 16 of the 60 asked fit, none beyond
    assert sum((await held(store)).values()) == 4800


async def test_expired_cap_leases_hold_nothing_and_are_swept(store: Store):
    now = await capped_account(store)
    await store.lease("acc_1", "dead:acc_1", 900, exact, now - 120, now - 60, ask("dead", 900))
    grant = await store.lease("acc_1", "live:acc_1", 900, exact, now, now + 60, ask("live", 900))
    assert grant.cap.granted == 900  # the expired lease holds nothing, and is dropped on the way
    assert set(await held(store)) == {"live:key_1"}
    await store.lease("acc_1", "dead:acc_1", 0, exact, now - 120, now - 60, ask("dead", 0, key="key_2"))
    assert set(await held(store, "key_2")) == {"dead:key_2"}
    await store.sweep(now)
    assert await store.key_leases("key_2") == [] and set(await held(store)) == {"live:key_1"}


async def test_an_entry_written_but_not_yet_settled_counts_once_against_the_cap(backend, store: Store):
    if not backend.is_mongo:
        return  # SQLite writes and settles an entry in one transaction: there is no such moment
    from app.store.mongo.ledger import _ledger_doc

    now = await capped_account(store)
    await store.lease("acc_1", "w:acc_1", 300, exact, now, now + 60, ask("w", 300))
    # A writer that inserted its entry (step one of MongoStore.record) and has not debited it yet.
    half = entry("r1", "acc_1", 110, now, lease_id="w:acc_1", key_lease_id="w:key_1", reserved=110)
    client, db = backend.raw_mongo()
    try:
        db.ledger.insert_one(_ledger_doc(half))
    finally:
        client.close()
    grant = await store.lease("acc_1", "w2:acc_1", 0, exact, now, now + 60, ask("w2", 800))
    assert (grant.cap.granted, grant.cap.free) == (0, 700)  # 1000 - 300 leased; the entry is inside them
    await store.recover()  # the entry settles: 110 used, 190 left in the lease
    assert await held(store) == {"w:key_1": 190}
    grant = await store.lease("acc_1", "w2:acc_1", 0, exact, now, now + 60, ask("w2", 700))
    assert (grant.cap.granted, grant.cap.free) == (700, 0)
