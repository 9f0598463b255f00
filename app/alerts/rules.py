"""Low-balance alerts. After ledger batches are written, each account they touched is checked:
every threshold its balance has crossed becomes one outbox row, unique per account, package and
threshold, so the crossing fires once however many workers and instances see it. Every worker
leases due rows, POSTs them as signed webhooks with an ``Idempotency-Key``, and backs off on failure.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import SplitResult, urlsplit

import orjson

from ..accounts import audit
from ..accounts.audit import Actor
from ..core import signing
from ..core.cache import MISSING, TTLCache
from ..core.config import Settings
from ..core.errors import InvalidRequest, StoreUnavailable
from ..store import Store
from ..store.contracts.alerts import Alert, AlertSettings
from ..store.contracts.ledger import LedgerEntry, Package, active_packages
from .delivery import DeliveryFailed, WebhookClient, address_literal, host_refusal

log = logging.getLogger("zowy.alerts")

DEFAULT_THRESHOLDS = (10, 0)
MAX_THRESHOLDS = 8
MAX_URL = 2048
EVENT = "balance.low"
CLAIM_BATCH = 32
SETTINGS_TTL = 5.0


@dataclass(frozen=True, slots=True)
class Balance:
    """What the thresholds are measured on: the tokens left and held by the account's active
    packages, and the package that names this stretch of balance (its newest unexpired one)."""

    remaining: int
    total: int
    reference: Package | None

    def crossed(self, thresholds: Iterable[int], empty_below: int = 1) -> list[int]:
        """Thresholds (percent of ``total`` left) at or below which the balance now is; 0 % means
        fewer than ``empty_below`` tokens left."""
        if self.reference is None:
            return []
        return sorted(
            (t for t in thresholds if (self.remaining * 100 <= t * self.total if t else self.remaining < empty_below)),
            reverse=True,
        )


def balance_of(packages: list[Package], now: float) -> Balance:
    active = active_packages(packages, now)
    unexpired = [p for p in packages if p.expires_at > now] or packages
    reference = max(unexpired, key=lambda p: (p.granted_at, p.id)) if unexpired else None
    return Balance(sum(p.remaining for p in active), sum(p.tokens for p in active), reference)


def alert_id(account_id: str, package_id: str, threshold: int) -> str:
    return "alr_" + hashlib.sha256(f"{account_id}:{package_id}:{threshold}".encode()).hexdigest()[:24]


def _http_url(url: object) -> SplitResult | None:
    """The parts of an http(s) URL with a host and a valid port, or None."""
    if type(url) is not str or len(url) > MAX_URL:
        return None
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # an unclosed or invalid [IPv6] host, or a port out of range
        return None
    return parts if valid else None


def check_settings(settings: Settings, url: object, thresholds: object) -> tuple[str | None, tuple[int, ...]]:
    """A valid receiver URL (or None) and thresholds; InvalidRequest naming the field otherwise."""
    if url is not None:
        parts = _http_url(url)
        if parts is None:
            raise InvalidRequest(f"'url' must be an http(s) URL of at most {MAX_URL} characters.", param="url")
        # Judged without resolving the name: whether a name exists inside is nothing to tell a customer.
        if not settings.hooks.alert_private_urls and host_refusal(parts.hostname) is not None:
            raise InvalidRequest("'url' must point to a public address.", param="url", code="url_not_public")
        literal = address_literal(parts.hostname)
        if literal is not None and literal.version == 4 and str(literal) != parts.hostname:
            raise InvalidRequest("'url' must write an IPv4 address as a.b.c.d (four decimal numbers).", param="url")
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLDS
    if (type(thresholds) not in (list, tuple) or not 1 <= len(thresholds) <= MAX_THRESHOLDS
            or any(type(t) is not int or not 0 <= t <= 100 for t in thresholds)):
        raise InvalidRequest(
            f"'thresholds' must be 1-{MAX_THRESHOLDS} integers from 0 to 100 (percent of the balance left).",
            param="thresholds",
        )
    return url, tuple(sorted(set(thresholds), reverse=True))


def settings_view(found: AlertSettings | None, account_id: str) -> dict:
    if found is None:
        return {"account_id": account_id, "url": None, "thresholds": list(DEFAULT_THRESHOLDS), "updated_at": None}
    return {"account_id": account_id, "url": found.url, "thresholds": list(found.thresholds), "updated_at": found.updated_at}


def alert_view(alert: Alert) -> dict:
    return {
        "id": alert.id, "created_at": alert.created_at, "attempts": alert.attempts,
        "delivered_at": alert.delivered_at, "failed_at": alert.failed_at, "next_at": alert.next_at,
        "last_error": alert.last_error, "event": orjson.loads(alert.body),
    }


class Alerts:
    """A worker's share of alerting: what its ledger writes touched, and the delivery loop."""

    def __init__(self, settings: Settings, store: Store, client: WebhookClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        hooks = settings.hooks
        self.settings = settings
        self.store = store
        self.enabled = bool(hooks.alert_secret)
        self.client = client or WebhookClient(hooks.alert_timeout, hooks.alert_private_urls)
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._touched: set[str] = set()
        self._settings: TTLCache[AlertSettings | None] = TTLCache(SETTINGS_TTL, max_size=50_000)
        self._known: TTLCache[bool] = TTLCache(3600.0, max_size=100_000)
        self._tasks: list[asyncio.Task] = []

    def written(self, entries: list[LedgerEntry]) -> None:
        """Ledger entries reached the store: their accounts' balances moved."""
        if self.enabled:
            self._touched.update(e.account_id for e in entries if e.total_tokens > 0)

    async def describe(self, account_id: str) -> dict:
        """An account's alert settings and its latest deliveries."""
        found = await self.store.alert_settings(account_id)
        deliveries = [alert_view(a) for a in await self.store.alerts(account_id, 20)]
        return {**settings_view(found, account_id), "enabled": self.enabled, "deliveries": deliveries}

    async def configure(self, account_id: str, url: object, thresholds: object, actor: Actor) -> dict:
        """Set an account's receiver URL (None: no alerts) and thresholds; audited."""
        if url is not None and not self.enabled:
            raise InvalidRequest("Low-balance alerts are off on this gateway (ZOWY_ALERT_SECRET is unset).",
                                 param="url", code="alerts_disabled")
        url, thresholds = check_settings(self.settings, url, thresholds)
        before = await self.store.alert_settings(account_id)
        chosen = AlertSettings(account_id, url, thresholds, self.clock())
        await self.store.set_alert_settings(chosen)
        self._settings.drop(account_id)
        await audit.record(self.store, actor, "alerts.update", account_id, account_id,
                           before=settings_view(before, account_id) if before else None,
                           after=settings_view(chosen, account_id))
        return await self.describe(account_id)

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.client.start()
        self._tasks = [
            asyncio.create_task(self._every(self.settings.hooks.alert_check_interval, self.check_touched), name="alerts-check"),
            asyncio.create_task(self._every(self.settings.hooks.alert_poll_interval, self.deliver_due), name="alerts-deliver"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        await self.client.close()

    async def _every(self, interval: float, step: Callable) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except (StoreUnavailable, TimeoutError):
                pass
            except Exception:
                log.exception("alert %s failed", step.__name__)

    # detection

    async def check_touched(self) -> int:
        """Check every account written to since the last call; how many alerts were enqueued."""
        touched, self._touched = self._touched, set()
        made = 0
        for account_id in touched:
            try:
                made += len(await self.check(account_id))
            except (StoreUnavailable, TimeoutError):
                self._touched.add(account_id)  # look again next time
        return made

    async def check(self, account_id: str) -> list[str]:
        """Enqueue the alerts of every threshold the account's balance has crossed; their ids."""
        chosen = self._settings.get(account_id)
        if chosen is MISSING:
            chosen = await self.store.alert_settings(account_id)
            self._settings.put(account_id, chosen)
        if chosen is None or not chosen.url:
            return []
        now = self.clock()
        balance = balance_of(await self.store.packages(account_id), now)
        made = []
        for threshold in balance.crossed(chosen.thresholds, self.settings.hooks.alert_empty_below):
            aid = alert_id(account_id, balance.reference.id, threshold)
            if self._known.get(aid) is not MISSING:
                continue
            body = await self._event(aid, account_id, threshold, balance, now)
            if await self.store.enqueue_alert(Alert(aid, account_id, chosen.url, body, now, now)):
                made.append(aid)
            self._known.put(aid, True)
        return made

    async def _event(self, aid: str, account_id: str, threshold: int, balance: Balance, now: float) -> str:
        account = await self.store.account(account_id)
        reference = balance.reference
        return orjson.dumps({
            "id": aid,
            "type": EVENT,
            "created_at": now,
            "account": {"id": account_id, "name": account.name if account else None},
            "threshold_percent": threshold,
            "remaining_tokens": balance.remaining,
            "total_tokens": balance.total,
            "package": {"id": reference.id, "plan": reference.plan, "tokens": reference.tokens, "expires_at": reference.expires_at},
        }).decode()

    # delivery

    async def deliver_due(self) -> int:
        """Lease due alerts and send them; how many were delivered."""
        hooks = self.settings.hooks
        leased = await self.store.claim_alerts(self.owner, self.clock(), hooks.alert_lease, CLAIM_BATCH)
        if not leased:
            return 0
        done = await asyncio.gather(*(self._send(alert) for alert in leased))
        return sum(done)

    async def _send(self, alert: Alert) -> bool:
        hooks = self.settings.hooks
        body = alert.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "zowy-webhooks/1",
            "Idempotency-Key": alert.id,
            "X-Zowy-Event": EVENT,
            **signing.sign(hooks.alert_secret, body, self.clock()),
        }
        try:
            await self.client.post(alert.url, body, headers)
        except DeliveryFailed as failure:
            give_up = alert.attempts >= hooks.alert_max_attempts
            delay = min(hooks.alert_retry_max, hooks.alert_retry_base * 2 ** (alert.attempts - 1)) * random.uniform(0.8, 1.0)
            when = self.clock() + (0.0 if give_up else delay)
            await self.store.retry_alert(alert.id, self.owner, when, str(failure), give_up=give_up)
            log.warning("alert %s to account %s not delivered (attempt %d%s): %s", alert.id, alert.account_id,
                        alert.attempts, ", giving up" if give_up else "", failure.detail)
            return False
        await self.store.finish_alert(alert.id, self.owner, self.clock())
        return True
