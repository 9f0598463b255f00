"""Balance reservations on a real SQLite store: leases sized by the balance, refusals that say what
is left, settlement by the ledger, returns, expiry, and two workers sharing one balance."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from app.billing.need import lease_size, request_need
from app.billing.reservations import Reservations
from app.core.config import Settings
from app.core.errors import InsufficientQuota
from app.store.contracts.ledger import LedgerEntry, Package
from app.store.sqlite import SqliteStore

SETTINGS = Settings(reserve_slice=1000, reserve_share=4, reserve_floor=500, reserve_ttl=60, reserve_idle=0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Counting:
    """The store, counting lease operations."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.leased = 0

    async def lease(self, *args, **kwargs):
        self.leased += 1
        return await self.store.lease(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "zowy.db", timeout=1)
    await store.init()
    await store.create_account("acct_1", "acme", time.time())
    yield store
    await store.close()


async def grant(store, tokens: int, expires_in: float = 86400, pid: str = "pkg_1") -> None:
    now = time.time()
    await store.grant_package(Package(pid, "acct_1", "pro", tokens, 0, now, now + expires_in))


async def held(store) -> int:
    return sum(l.tokens for l in await store.leases("acct_1") if l.expires_at > time.time())


def test_lease_size_rule():
    assert lease_size(100, 99, 1000, 4, 500) == 0
    assert lease_size(100, 400, 1000, 4, 500) == 100  # what would remain is below the floor: exact
    assert lease_size(100, 2100, 1000, 4, 500) == 100 + 500
    assert lease_size(100, 100_000, 1000, 4, 500) == 1100  # capped by the slice


def test_request_need_counts_prompt_guard_images_and_completion():
    assert request_need(3000, 0, 0, 300, 100) == 1100 + 100
    assert request_need(1_000_300, 1_000_000, 1, 0, 10, choices=2) == 100 + 1500 + 20


async def test_no_active_package_is_refused_saying_what_is_left(store):
    reservations = Reservations(store, SETTINGS)
    with pytest.raises(InsufficientQuota) as info:
        await reservations.reserve("acct_1", 10)
    assert "has 0 tokens left" in info.value.message
    await grant(store, 100, expires_in=-1, pid="pkg_old")
    with pytest.raises(InsufficientQuota):
        await reservations.reserve("acct_1", 10)


async def test_an_ample_balance_costs_one_store_operation_for_many_requests(store):
    await grant(store, 100_000)
    counting = Counting(store)
    reservations = Reservations(counting, SETTINGS)
    taken = [await reservations.reserve("acct_1", 100) for _ in range(10)]
    assert counting.leased == 1 and await held(store) == 1100
    assert sum(r.tokens for r in taken) == 1000


async def test_near_the_end_each_request_reserves_exactly_its_own(store):
    await grant(store, 1000)
    reservations = Reservations(store, SETTINGS)
    for _ in range(3):
        await reservations.reserve("acct_1", 300)
    assert await held(store) == 900
    with pytest.raises(InsufficientQuota) as info:
        await reservations.reserve("acct_1", 300)
    assert "has 100 tokens left (900 more are reserved" in info.value.message
    assert (await reservations.reserve("acct_1", 100)).tokens == 100  # what is covered still passes


def entry_of(reservation, tokens: int, settles: int, rid: str = "r1") -> LedgerEntry:
    return LedgerEntry(
        request_id=rid, account_id="acct_1", key_id=reservation.key_id or "k", model="zowy-1", target="t",
        prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, total_tokens=tokens, estimated=False,
        stream=False, outcome="ok", status=200, latency_ms=1, user=None, created_at=time.time(),
        lease_id=reservation.lease_id, reserved=settles, key_lease_id=reservation.key_lease_id,
    )


async def test_the_ledger_settles_a_reservation_and_unbilled_ones_come_back(store):
    await grant(store, 100_000)
    reservations = Reservations(store, SETTINGS)
    billed = await reservations.reserve("acct_1", 400)  # a lease of 400 and a slice of 1000
    unbilled = await reservations.reserve("acct_1", 400)
    assert reservations.finish(unbilled, 0) == 0  # never reached an upstream: all of it comes back
    settles = reservations.finish(billed, 250)  # cost 250: the other 150 come back at once
    assert settles == 250 and reservations._leases["acct_1"].left == 1150
    entry = entry_of(billed, 250, settles)
    assert await held(store) == 1400
    await store.record([entry])
    await store.record([entry])  # written twice: settled once
    assert (await store.packages("acct_1"))[0].used == 250
    assert await held(store) == 1150  # what the worker holds in hand, no more
    await reservations.upkeep()  # idle: handed back to the balance
    assert await held(store) == 0


async def test_near_the_end_what_a_request_left_unused_goes_back_at_once(store):
    await grant(store, 1000)
    one, other = Reservations(store, SETTINGS), Reservations(store, SETTINGS)
    billed = await one.reserve("acct_1", 900)
    assert one.finish(billed, 250) == 250
    await one._leases["acct_1"].returning  # no upkeep needed
    assert one._leases["acct_1"].left == 0 and await held(store) == 250  # what the entry will settle
    assert (await other.reserve("acct_1", 750)).tokens == 750
    await store.record([entry_of(billed, 250, 250)])
    assert await held(store) == 750 and (await store.packages("acct_1"))[0].used == 250


async def test_less_than_a_request_may_use_is_reserved_down_to_its_least(store):
    await grant(store, 1000)
    reservations = Reservations(store, SETTINGS)
    taken = await reservations.reserve("acct_1", 5000, least=300)
    assert taken.tokens == 1000 and await held(store) == 1000
    with pytest.raises(InsufficientQuota) as info:
        await reservations.reserve("acct_1", 5000, least=300)
    message = info.value.message
    assert "needs at least 300 tokens" in message and "has 0 tokens left (1000 more are reserved" in message
    reservations.finish(taken, 0)
    assert (await reservations.reserve("acct_1", 5000, least=300)).tokens == 1000


async def test_a_capped_key_reserves_on_its_cap_and_the_balance_at_once(store):
    await grant(store, 100_000)
    counting = Counting(store)
    reservations = Reservations(counting, replace(SETTINGS, reserve_floor=10_000))  # a cap of 2000 is small: exact leases
    taken = []
    with pytest.raises(InsufficientQuota) as info:
        for _ in range(10):
            taken.append(await reservations.reserve("acct_1", 300, key_id="key_1", cap=2000))
    assert len(taken) == 6 and counting.leased == 7  # one store operation a request, for both scopes
    assert "has 200 tokens left of its token cap of 2000 tokens (0 used, 1800 reserved by requests in flight)" in info.value.message
    assert sum(l.tokens for l in await store.key_leases("key_1")) == 1800
    assert await held(store) >= 1800  # the balance's lease holds them too (and its slice)
    # The other keys of the account are not held back by it.
    assert (await reservations.reserve("acct_1", 300)).tokens == 300
    # Settled by the ledger: what the requests used counts against the cap, the rest is free again.
    for i, reservation in enumerate(taken):
        await store.record([entry_of(reservation, 100, reservations.finish(reservation, 100), f"r{i}")])
    assert await store.key_tokens("key_1") == 600
    await reservations.upkeep()
    assert sum(l.tokens for l in await store.key_leases("key_1")) == 0
    assert (await reservations.reserve("acct_1", 5000, least=400, key_id="key_1", cap=2000)).tokens == 1400


async def test_an_ample_cap_is_served_from_a_slice(store):
    await grant(store, 1_000_000)
    counting = Counting(store)
    reservations = Reservations(counting, SETTINGS)
    taken = [await reservations.reserve("acct_1", 100, key_id="key_1", cap=500_000) for _ in range(10)]
    assert counting.leased == 1 and sum(r.tokens for r in taken) == 1000
    assert [l.tokens for l in await store.key_leases("key_1")] == [1100]
    # A cap changed under the worker's slice: the slice goes back, the new cap is asked.
    with pytest.raises(InsufficientQuota):
        await reservations.reserve("acct_1", 100, key_id="key_1", cap=1000)
    assert [l.tokens for l in await store.key_leases("key_1")] == [1000]


@pytest.mark.parametrize("capped", [False, True], ids=["balance", "cap"])
async def test_two_workers_never_reserve_more_than_the_balance_or_the_cap(store, capped):
    await grant(store, 100_000 if capped else 10_000)  # the cap (10,000) or the balance is what runs out
    key = {"key_id": "key_1", "cap": 10_000} if capped else {}
    scope = (lambda: store.key_leases("key_1")) if capped else (lambda: store.leases("acct_1"))
    settings = replace(SETTINGS, reserve_floor=0, reserve_share=2, reserve_slice=100_000)
    a, b = Reservations(store, settings), Reservations(store, settings)
    taken = 0
    for worker in (a, b, a, b, a, b) * 10:
        try:
            taken += (await worker.reserve("acct_1", 700, **key)).tokens
        except InsufficientQuota as refused:
            assert ("token cap of 10000 tokens" in refused.message) == capped
    assert taken <= 10_000 and sum(l.tokens for l in await scope()) <= 10_000
    await a.close()
    await b.close()
    assert sum(l.tokens for l in await scope()) == taken  # what is in flight stays reserved; the rest went back


async def test_a_dead_workers_lease_expires(store):
    await grant(store, 1000)
    clock = Clock()
    dead = Reservations(store, SETTINGS, clock)
    await dead.reserve("acct_1", 900)
    alive = Reservations(store, SETTINGS, clock)
    with pytest.raises(InsufficientQuota):
        await alive.reserve("acct_1", 900)
    clock.now += 61
    assert [l.tokens for l in await store.expired_leases(clock.now)] == [900]
    assert (await alive.reserve("acct_1", 900)).tokens == 900
    assert [l.id for l in await store.leases("acct_1")] == [alive._leases["acct_1"].id]
