"""Balance reservations of one worker: before any upstream call a request reserves what it may cost
against its account's balance, across every worker and instance sharing the store.

The worker leases tokens of an account's free balance from the store (one atomic operation) and
admits requests against its lease in memory; with an ample balance a lease covers many requests,
near the end of one each request leases exactly its own need. When a request ends, what it reserved
beyond its cost goes back to the lease at once and its ledger entry settles the rest in the store
(with the debit, in one operation). Unused tokens go back to the balance when a lease idles and at
shutdown; a dead worker's lease expires.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from .config import Settings
from .errors import InsufficientQuota, StoreUnavailable
from .ids import new_id
from .metering import lease_size
from .store import Store

log = logging.getLogger("zowy.reservations")


@dataclass(frozen=True, slots=True)
class Reservation:
    account_id: str
    lease_id: str
    tokens: int


@dataclass(slots=True)
class _Lease:
    id: str
    left: int = 0          # tokens this worker may still hand out
    inflight: int = 0      # reserved by its requests still running
    expires_at: float = 0.0
    used_at: float = 0.0
    exact: bool = False    # the balance is low: leases cover single requests, return at once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Reservations:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.ttl = settings.reserve_ttl
        self.idle = settings.reserve_idle
        self.floor = settings.reserve_floor
        self._size = partial(
            _size, slice_max=settings.reserve_slice, share=settings.reserve_share, floor=settings.reserve_floor
        )
        self._worker = new_id("lease")
        self._leases: dict[str, _Lease] = {}

    async def reserve(self, account_id: str, need: int) -> Reservation:
        """Reserve ``need`` tokens of the account's balance, or InsufficientQuota saying what is left."""
        lease = self._leases.get(account_id)
        if lease is None:
            lease = self._leases[account_id] = _Lease(f"{self._worker}:{account_id}")
        now = self.clock()
        if lease.left >= need and lease.expires_at - now > self.ttl / 4:
            return self._take(account_id, lease, need, now)
        async with lease.lock:
            for _ in range(3):
                now = self.clock()
                if lease.left >= need and lease.expires_at - now > self.ttl / 4:
                    return self._take(account_id, lease, need, now)
                more = need - min(lease.left, need)
                grant = await self.store.lease(account_id, lease.id, more, self._size, now, now + self.ttl)
                if not grant.granted:
                    # What this worker holds unused is as good as free; the rest of the reserved
                    # tokens are held by requests in flight.
                    free, busy = grant.free + lease.left, grant.reserved - lease.left
                    raise InsufficientQuota(
                        f"This request may use up to {need} tokens (its prompt and max_tokens), but the account "
                        f"has {free} tokens left"
                        + (f" ({busy} more are reserved by requests in flight)." if busy > 0 else ".")
                        + " Top up by buying a Pro or Business package, or lower max_tokens."
                    )
                lease.expires_at = now + self.ttl
                # The store's lease holds what this worker may hand out plus what its requests
                # reserved and the ledger did not settle yet: never more in hand than that (less
                # when the lease had expired in the store meanwhile; then it is asked again).
                lease.left = min(lease.left + grant.granted, grant.held)
                lease.exact = grant.free < self.floor
            raise StoreUnavailable("The balance could not be reserved; retry shortly.")

    @staticmethod
    def _take(account_id: str, lease: _Lease, need: int, now: float) -> Reservation:
        lease.left -= need
        lease.inflight += need
        lease.used_at = now
        return Reservation(account_id, lease.id, need)

    def finish(self, reservation: Reservation, spent: int) -> int:
        """The request ended having cost ``spent`` tokens (0 when it never reached an upstream). What
        it reserved beyond that goes back into the worker's lease at once; its ledger entry settles
        the rest in the store. Returns what the entry settles."""
        settles = min(reservation.tokens, spent)
        lease = self._leases.get(reservation.account_id)
        if lease is not None and lease.id == reservation.lease_id:
            lease.inflight -= reservation.tokens
            lease.left += reservation.tokens - settles
        return settles

    def reserved(self) -> int:
        """Tokens this worker's requests hold right now."""
        return sum(l.inflight for l in self._leases.values())

    async def upkeep(self) -> None:
        """Give back what idle (or, near the end of a balance, any) leases hold; renew the leases in
        use before they expire; forget leases long unused."""
        now = self.clock()
        for account_id, lease in list(self._leases.items()):
            if lease.lock.locked():
                continue
            try:
                if lease.left and (lease.exact or now - lease.used_at > self.idle):
                    amount, lease.left = lease.left, 0
                    try:
                        await self.store.return_lease(account_id, lease.id, amount)
                    except BaseException:
                        lease.left += amount
                        raise
                if lease.inflight or lease.left or now - lease.used_at < self.ttl:
                    if lease.expires_at - now < self.ttl / 2:
                        async with lease.lock:
                            grant = await self.store.lease(account_id, lease.id, 0, self._size, now, now + self.ttl)
                            lease.expires_at = now + self.ttl
                            lease.left = min(lease.left, grant.held)
                elif not lease.inflight:
                    del self._leases[account_id]
            except StoreUnavailable:
                return

    async def close(self) -> None:
        """Give back every unused token (shutdown)."""
        for account_id, lease in self._leases.items():
            if lease.left:
                try:
                    await self.store.return_lease(account_id, lease.id, lease.left)
                    lease.left = 0
                except StoreUnavailable:
                    log.warning("could not give back %d reserved tokens of %s: they expire with the lease", lease.left, account_id)


def _size(need: int, free: int, *, slice_max: int, share: int, floor: int) -> int:
    return lease_size(need, free, slice_max, share, floor)
