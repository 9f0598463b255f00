"""Admission of a request before any upstream call: whose key, within its limits, with its cost
reserved against the account's balance and the key's token cap (billing/reservations.py).

Key lookups are cached per worker for a short time; the rate limit is one atomic
store operation per admitted request, bounded by a short timeout — or per several, for a key whose
windows are far from their limits (the worker counts a few ahead and admits them from memory). A
key whose window the store found full is refused from memory until that window ends: counts only
grow within a window, so this changes no decision, and a client retrying in a loop never reaches
the store. A key's own controls (expiry, IP allow-list) are checked from its cached record.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ..access.clientip import allowed, client_address, parse_networks
from ..access.keys import bearer
from ..access.windows import Decision
from ..billing.reservations import Reservation, Reservations
from ..core.cache import MISSING, TTLCache
from ..core.config import Settings
from ..core.digests import key_hash
from ..core.errors import InvalidApiKey, PermissionDenied, RateLimited, StoreUnavailable
from ..store import Store
from ..store.contracts.keys import KeyRecord
from ..store.contracts.limits import HOUR, MINUTE, hour_of, minute_of


@dataclass(slots=True)
class _Slots:
    minute: int
    hour: int
    left: int
    minute_count: int
    hour_count: int
    limits: tuple[int, int]


class Admission:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._keys: TTLCache[KeyRecord | None] = TTLCache(settings.key_cache_ttl)
        # Authorization header -> its key's hash: the HMAC once per key and worker, not per request.
        self._digests: dict[str, str] = {}
        self.reservations = Reservations(store, settings, clock)
        self._pepper = settings.key_pepper
        self._defaults = settings.rate_limits
        self._least_answer = settings.min_completion_tokens
        # key id -> (when its full window ends, the refusal the store decided)
        self._full: dict[str, tuple[float, Decision]] = {}
        # key id -> requests this worker counted in the store ahead of time, for keys far from their limits
        self._slots: dict[str, _Slots] = {}
        self._slice_max = settings.limiter_slice
        self._floor = settings.limiter_floor
        self.trusted_proxies = parse_networks(settings.trusted_proxies)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The caller's address: the peer, or the client a trusted proxy forwarded."""
        return client_address(peer, forwarded_for, self.trusted_proxies)

    async def key(self, authorization: str | None, peer: str | None = None, forwarded_for: str | None = None) -> KeyRecord:
        """The active, unexpired key named by the Authorization header, or InvalidApiKey;
        PermissionDenied when the key's IP allow-list leaves out the caller (an unknown caller too)."""
        digest = self._digests.get(authorization) if authorization else None
        if digest is None:
            token = bearer(authorization)
            if token is None:
                raise InvalidApiKey(
                    "You didn't provide an API key. Pass it as 'Authorization: Bearer <key>'."
                    if not authorization
                    else None
                )
            digest = key_hash(token, self._pepper)
            if len(self._digests) >= self._keys.max_size:
                self._digests.clear()
            self._digests[authorization] = digest
        record = self._keys.get(digest)
        if record is MISSING:
            record = await self.store.key_by_hash(digest)
            self._keys.put(digest, record)
        if record is None or record.revoked_at is not None:
            raise InvalidApiKey()
        if record.expires_at is not None and record.expires_at <= self.clock():
            when = datetime.fromtimestamp(record.expires_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise InvalidApiKey(f"This API key expired at {when}. Create a new key or extend this one's expiry.")
        if record.ips is not None:
            address = self.client(peer or "", forwarded_for)
            if not allowed(address, record.ips):
                raise PermissionDenied(
                    f"This API key may not be used from address {address}, which is not in the key's IP allow-list.",
                    code="ip_not_allowed",
                )
        return record

    def refuse_if_full(self, key: KeyRecord) -> None:
        """RateLimited, without asking the store, while a window the store found full lasts."""
        full = self._full.get(key.id)
        if full is None:
            return
        until, decision = full
        now = self.clock()
        if now >= until:
            del self._full[key.id]
            return
        again = Decision(False, decision.minute_limit, decision.minute_used, decision.hour_limit, decision.hour_used, now)
        raise RateLimited(again.message(), headers=again.headers())

    async def limit(self, key: KeyRecord) -> Decision:
        """Count the request in the key's windows; RateLimited when either is full."""
        self.refuse_if_full(key)
        per_minute = key.per_minute or self._defaults.per_minute
        per_hour = key.per_hour or self._defaults.per_hour
        now = self.clock()
        minute, hour = minute_of(now), hour_of(now)
        slots = self._slots.get(key.id)
        if slots is not None and slots.left and slots.minute == minute and slots.limits == (per_minute, per_hour):
            slots.left -= 1
            return Decision(True, per_minute, slots.minute_count - slots.left, per_hour, slots.hour_count - slots.left, now)
        take = self._slice(slots, per_minute, per_hour, minute, hour)
        try:
            count = await self.store.hit(key.id, per_minute, per_hour, now, self.settings.limiter_timeout, take)
            if not count.admitted and take > 1:
                take = 1
                count = await self.store.hit(key.id, per_minute, per_hour, now, self.settings.limiter_timeout)
        except StoreUnavailable:
            if self.settings.limiter_fail_open:
                return Decision(True, per_minute, 0, per_hour, 0, now)
            raise StoreUnavailable("Rate limits cannot be checked right now. Please retry shortly.") from None
        unused = take - 1 if count.admitted else 0
        decision = Decision(count.admitted, per_minute, count.minute - unused, per_hour, count.hour - unused, now)
        if not count.admitted:
            if count.hour >= per_hour:
                until = float((hour + 1) * HOUR)
            else:
                until = float((minute + 1) * MINUTE)
            if len(self._full) >= self._keys.max_size:
                self._full.clear()
            self._full[key.id] = (until, decision)
            raise RateLimited(decision.message(), headers=decision.headers())
        if len(self._slots) >= self._keys.max_size:
            self._slots.clear()
        self._slots[key.id] = _Slots(minute, hour, unused, count.minute, count.hour, (per_minute, per_hour))
        return decision

    def _slice(self, slots: "_Slots | None", per_minute: int, per_hour: int, minute: int, hour: int) -> int:
        """How many requests to count at once: one, unless the key's last known counts leave both
        windows far (``limiter_floor``) from their limits; then a few more, held by this worker."""
        if slots is None or slots.hour != hour:
            return 1
        room = min(per_minute - (slots.minute_count if slots.minute == minute else 0), per_hour - slots.hour_count)
        if room < self._floor:
            return 1
        return 1 + min(self._slice_max, room // 64)

    async def reserve(self, key: KeyRecord, prompt: int, completion: int, choices: int = 1) -> Reservation:
        """Reserve what the request may cost (``prompt`` and ``completion`` tokens for each of
        ``choices``) against the account's balance and the key's cap, or less when less is free but
        holds the prompt and at least ``min_completion_tokens`` of answer (InsufficientQuota if not)."""
        need = prompt + completion * choices
        least = prompt + min(completion, self._least_answer) * choices
        if key.token_cap is None:
            return await self.reservations.reserve(key.account_id, need, least)
        return await self.reservations.reserve(key.account_id, need, least, key.id, key.token_cap)

    def forget(self, digest: str | None = None) -> None:
        """Drop cached knowledge, e.g. after an admin change made by this worker."""
        if digest is None:
            self._keys.clear()
            self._full.clear()
            self._slots.clear()
        else:
            self._keys.drop(digest)
