"""Balance reservations of one worker: before any upstream call a request reserves what it may cost
against its account's balance, and against its key's token cap when it has one, across every worker
and instance sharing the store.

The worker leases tokens of an account's free balance (and of a capped key's free cap, in the same
atomic operation) from the store and admits requests against its leases in memory; with an ample
balance a lease covers many requests, near the end of one each request leases exactly its own need.
When a request ends, what it reserved beyond its cost goes back to the lease at once and its ledger
entry settles the rest in the store (with the debit, in one operation). Unused tokens go back to the
store when a lease idles, near the end of a balance or cap as soon as a request leaves them, and at
shutdown; a dead worker's lease expires.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from ..core.config import Settings
from ..core.errors import InsufficientQuota, StoreUnavailable
from ..core.ids import new_id
from ..store import Store
from ..store.contracts.leases import CapAsk, LeaseGrant, lease_refused
from .need import lease_size

log = logging.getLogger("zowy.reservations")


# Not frozen: made on every request, and a frozen dataclass's __init__ costs several times more.
@dataclass(slots=True)
class Reservation:
    account_id: str
    lease_id: str
    tokens: int
    # A capped key's: the same tokens, reserved on its cap through this worker's lease there.
    key_id: str | None = None
    key_lease_id: str | None = None


@dataclass(slots=True)
class _Lease:
    id: str
    left: int = 0          # tokens this worker may still hand out
    inflight: int = 0      # reserved by its requests still running
    expires_at: float = 0.0
    used_at: float = 0.0
    exact: bool = False    # the balance (or cap) is low: leases cover single requests, return at once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # An account's lease: its keys' leases on their caps, by key id, changed under this lease's lock.
    caps: dict[str, "_Lease"] | None = None
    cap: int = 0           # a key's lease: the cap it was leased under
    returning: "asyncio.Task | None" = None  # an account's lease: unused tokens on their way back


class Reservations:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.ttl = settings.reserve_ttl
        self.idle = settings.reserve_idle
        self.floor = settings.reserve_floor
        self.least_answer = settings.min_completion_tokens
        self._size = partial(
            _size, slice_max=settings.reserve_slice, share=settings.reserve_share, floor=settings.reserve_floor
        )
        self._worker = new_id("lease")
        self._leases: dict[str, _Lease] = {}

    async def reserve(
        self, account_id: str, need: int, least: int | None = None, key_id: str | None = None, cap: int | None = None
    ) -> Reservation:
        """Reserve ``need`` tokens of the account's balance (and of key ``key_id``'s ``cap``), or as
        many as are free down to ``least`` when fewer are; InsufficientQuota saying what is left."""
        lease = self._leases.get(account_id)
        if lease is None:
            lease = self._leases[account_id] = _Lease(f"{self._worker}:{account_id}")
        now = self.clock()
        if key_id is None:
            if lease.left >= need and lease.expires_at - now > self.ttl / 4:
                return self._take(account_id, lease, need, now)
        else:
            scope = lease.caps.get(key_id) if lease.caps else None
            if scope is not None and scope.cap == cap and self._covers(lease, need, now) and self._covers(scope, need, now):
                return self._take(account_id, lease, need, now, key_id, scope)
        async with lease.lock:
            return await self._lease(account_id, lease, need, need if least is None else least, key_id, cap)

    async def _lease(
        self, account_id: str, lease: _Lease, need: int, least: int, key_id: str | None, cap: int | None
    ) -> Reservation:
        scope = None if key_id is None else await self._scope(account_id, lease, key_id, cap)
        target = need
        for attempt in range(4):
            now = self.clock()
            if self._covers(lease, target, now) and (scope is None or self._covers(scope, target, now)):
                return self._take(account_id, lease, target, now, key_id, scope)
            if attempt == 3:
                break
            more = target - min(lease.left, target)
            ask = None if scope is None else CapAsk(key_id, cap, scope.id, target - min(scope.left, target))
            grant = await self.store.lease(account_id, lease.id, more, self._size, now, now + self.ttl, ask)
            if lease_refused(grant, more, ask):
                # Fewer tokens are free than the request may use: it is served with what is free
                # (its answer limited to fit) when that holds its prompt and a useful answer. (What
                # requests ending meanwhile gave back to this worker counts: then it is asked again.)
                fits = _room(grant, lease) if scope is None else min(_room(grant, lease), _room(grant.cap, scope))
                if fits < least:
                    raise self._refusal(need, least, grant, lease, scope, cap)
                target = min(target, fits)
                continue
            self._grant(lease, grant, now)
            if scope is not None:
                self._grant(scope, grant.cap, now)
        raise StoreUnavailable("The balance could not be reserved; retry shortly.")

    async def _scope(self, account_id: str, lease: _Lease, key_id: str, cap: int) -> _Lease:
        """This worker's lease on a key's cap (under the account lease's lock)."""
        if lease.caps is None:
            lease.caps = {}
        scope = lease.caps.get(key_id)
        if scope is None:
            scope = lease.caps[key_id] = _Lease(f"{self._worker}:{key_id}", cap=cap)
        elif scope.cap != cap:
            # Leased under another cap: what this worker holds goes back, to be asked under this one.
            if scope.left:
                await self.store.return_lease(account_id, scope.id, scope.left, key_id)
                scope.left = 0
            scope.cap = cap
        return scope

    def _grant(self, lease: _Lease, grant: LeaseGrant, now: float) -> None:
        lease.expires_at = now + self.ttl
        # The store's lease holds what this worker may hand out plus what its requests reserved and
        # the ledger did not settle yet: never more in hand than that (less when the lease had
        # expired in the store meanwhile; then it is asked again).
        lease.left = min(lease.left + grant.granted, grant.held)
        lease.exact = grant.free < self.floor

    def _covers(self, lease: _Lease, need: int, now: float) -> bool:
        return lease.left >= need and lease.expires_at - now > self.ttl / 4

    def _refusal(
        self, need: int, least: int, grant: LeaseGrant, lease: _Lease, scope: _Lease | None, cap: int | None
    ) -> InsufficientQuota:
        """What is free, said to the caller: of the key's cap when that is what falls short, else of
        the balance. What this worker holds unused is as good as free; the rest of the reserved
        tokens are held by requests in flight."""
        asked = (
            f"This request may use up to {need} tokens (its prompt and max_tokens)" if least == need
            else f"This request needs at least {least} tokens (its prompt and an answer of at least {self.least_answer} tokens)"
        )
        key_room = 0 if scope is None else _room(grant.cap, scope)
        if scope is not None and key_room < least and key_room <= _room(grant, lease):
            busy = grant.cap.reserved - scope.left
            return InsufficientQuota(
                f"{asked}, but this API key has {key_room} tokens left of its token cap of {cap} tokens "
                f"({cap - grant.cap.remaining} used" + (f", {busy} reserved by requests in flight)." if busy > 0 else ").")
                + " Raise the key's cap or use another key."
            )
        busy = grant.reserved - lease.left
        return InsufficientQuota(
            f"{asked}, but the account has {_room(grant, lease)} tokens left"
            + (f" ({busy} more are reserved by requests in flight)." if busy > 0 else ".")
            + " Top up by buying a Pro or Business package" + (", or lower max_tokens." if least == need else ".")
        )

    @staticmethod
    def _take(
        account_id: str, lease: _Lease, need: int, now: float, key_id: str | None = None, scope: _Lease | None = None
    ) -> Reservation:
        lease.left -= need
        lease.inflight += need
        lease.used_at = now
        if scope is None:
            return Reservation(account_id, lease.id, need)
        scope.left -= need
        scope.inflight += need
        scope.used_at = now
        return Reservation(account_id, lease.id, need, key_id, scope.id)

    def finish(self, reservation: Reservation, spent: int) -> int:
        """The request ended having cost ``spent`` tokens (0 when it never reached an upstream). What
        it reserved beyond that goes back into the worker's leases at once (and, near the end of a
        balance or cap, on to the store for every worker); its ledger entry settles the rest in the
        store. Returns what the entry settles."""
        settles = min(reservation.tokens, spent)
        lease = self._leases.get(reservation.account_id)
        if lease is None or lease.id != reservation.lease_id:
            return settles
        back = reservation.tokens - settles
        lease.inflight -= reservation.tokens
        lease.left += back
        exact = lease.exact
        if reservation.key_id is not None and lease.caps:
            scope = lease.caps.get(reservation.key_id)
            if scope is not None and scope.id == reservation.key_lease_id:
                scope.inflight -= reservation.tokens
                scope.left += back
                exact = exact or scope.exact
        if back and exact and lease.returning is None:
            lease.returning = asyncio.get_running_loop().create_task(self._return_now(reservation.account_id, lease))
        return settles

    async def _return_now(self, account_id: str, lease: _Lease) -> None:
        """Near the end of a balance or cap: what this worker holds unused, back to the store now."""
        try:
            async with lease.lock:
                now = self.clock()
                for key_id, held in [(None, lease), *(lease.caps or {}).items()]:
                    if held.exact:
                        await self._give_back(account_id, held, key_id, now)
        except StoreUnavailable:
            pass  # upkeep tries again
        finally:
            lease.returning = None

    def reserved(self) -> int:
        """Tokens this worker's requests hold right now."""
        return sum(l.inflight for l in self._leases.values())

    async def upkeep(self) -> None:
        """Give back what idle (or, near the end of a balance or cap, any) leases hold; renew the
        leases in use before they expire; forget leases long unused."""
        now = self.clock()
        for account_id, lease in list(self._leases.items()):
            if lease.lock.locked():
                continue
            try:
                await self._give_back(account_id, lease, None, now)
                for key_id, scope in list((lease.caps or {}).items()):
                    await self._give_back(account_id, scope, key_id, now)
                    if self._in_use(scope, now):
                        if scope.expires_at - now < self.ttl / 2:
                            async with lease.lock:
                                ask = CapAsk(key_id, scope.cap, scope.id, 0)
                                grant = await self.store.lease(account_id, lease.id, 0, self._size, now, now + self.ttl, ask)
                                self._renewed(lease, grant, now)
                                self._renewed(scope, grant.cap, now)
                    elif not scope.inflight:
                        del lease.caps[key_id]
                if self._in_use(lease, now):
                    if lease.expires_at - now < self.ttl / 2:
                        async with lease.lock:
                            grant = await self.store.lease(account_id, lease.id, 0, self._size, now, now + self.ttl)
                            self._renewed(lease, grant, now)
                elif not lease.inflight and not lease.caps:
                    del self._leases[account_id]
            except StoreUnavailable:
                return

    async def _give_back(self, account_id: str, lease: _Lease, key_id: str | None, now: float) -> None:
        if lease.left and (lease.exact or now - lease.used_at > self.idle):
            amount, lease.left = lease.left, 0
            try:
                await self.store.return_lease(account_id, lease.id, amount, key_id)
            except BaseException:
                lease.left += amount
                raise

    def _in_use(self, lease: _Lease, now: float) -> bool:
        return bool(lease.inflight or lease.left or now - lease.used_at < self.ttl)

    def _renewed(self, lease: _Lease, grant: LeaseGrant, now: float) -> None:
        lease.expires_at = now + self.ttl
        lease.left = min(lease.left, grant.held)

    async def close(self) -> None:
        """Give back every unused token (shutdown)."""
        returning = [l.returning for l in self._leases.values() if l.returning is not None]
        await asyncio.gather(*returning, return_exceptions=True)
        for account_id, lease in self._leases.items():
            for key_id, held in [(None, lease), *(lease.caps or {}).items()]:
                if held.left:
                    try:
                        await self.store.return_lease(account_id, held.id, held.left, key_id)
                        held.left = 0
                    except StoreUnavailable:
                        log.warning(
                            "could not give back %d reserved tokens of %s: they expire with the lease", held.left, key_id or account_id
                        )


def _room(grant: LeaseGrant, lease: _Lease) -> int:
    """What a worker holding ``lease`` could reserve in the scope ``grant`` read: its free tokens and
    what this worker holds unused."""
    return max(0, grant.remaining - grant.reserved + lease.left)


def _size(need: int, free: int, *, slice_max: int, share: int, floor: int) -> int:
    return lease_size(need, free, slice_max, share, floor)
