"""Low-balance alerts end to end on both backends: a real receiver on 127.0.0.1 gets one signed
webhook per crossing however many instances served the requests, and gets it once it comes back up."""
from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import uuid

import httpx2
import orjson
import pytest
from aiohttp import web

from app.core import signing
from app.store.contracts.alerts import AlertSettings
from tests import accounts_kit as kit
from tests import support
from tests.conftest import sdk_client

HI = [{"role": "user", "content": "hi"}]  # 110 tokens a request with the fake upstream
# A small max_tokens keeps each request's balance reservation (its prompt plus max_tokens) near its
# cost, so a small package can be spent down.
MAX_TOKENS = 8


class Receiver:
    """An HTTP server in a thread of its own that records every delivery; it can go down and come back
    on the same port, and answer a few failures first."""

    def __init__(self) -> None:
        self.port = support.free_port()
        self.deliveries: list[dict] = []
        self.fail_next = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/zowy"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        failing = self.fail_next > 0
        self.fail_next -= 1 if failing else 0
        self.deliveries.append({"headers": dict(request.headers), "body": body, "answered": 503 if failing else 200})
        return web.Response(status=503 if failing else 200, text="busy" if failing else "ok")

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def up(self) -> "Receiver":
        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hooks/zowy", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._run(start())
        return self

    def down(self) -> None:
        if self._runner is not None:
            self._run(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def accepted(self) -> list[dict]:
        return [d for d in self.deliveries if d["answered"] == 200]


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def pair(request, tmp_path_factory, models_path):
    pair = kit.start_pair(tmp_path_factory, models_path, kit.backend_env(request, tmp_path_factory), request.param)
    yield pair
    pair.stop()


def set_alerts(gateway, owner: kit.Owner, **body) -> httpx2.Response:
    # Not a recorded client: the answer echoes the receiver's 127.0.0.1 URL, which is no upstream's.
    with httpx2.Client(base_url=gateway.url, timeout=30) as h:
        return h.put("/api/v1/account/alerts", headers=owner.auth, json=body)


def spend(gateways, key: str, requests: int) -> list[int]:
    statuses = []
    for i in range(requests):
        with sdk_client(gateways[i % len(gateways)], key) as client:
            try:
                client.chat.completions.create(model="zowy-1", messages=HI, max_tokens=MAX_TOKENS)
                statuses.append(200)
            except Exception as exc:  # the last requests find the package empty
                statuses.append(getattr(exc, "status_code", 0))
    return statuses


def events(deliveries: list[dict]) -> list[dict]:
    return [orjson.loads(d["body"]) for d in deliveries]


def test_one_signed_alert_per_crossing_across_instances(pair, receiver):
    receiver.up()
    owner = kit.new_owner(pair.first, tokens=1000)
    r = set_alerts(pair.second, owner, url=receiver.url, thresholds=[50, 25])
    assert r.status_code == 200, r.text
    assert r.json()["url"] == receiver.url and r.json()["thresholds"] == [50, 25] and r.json()["enabled"] is True

    spend([pair.first, pair.second], owner.customer.key, 4)  # 440 of 1000: 56 % left, nothing crossed
    time.sleep(0.5)
    assert receiver.deliveries == []
    spend([pair.second, pair.first], owner.customer.key, 4)  # 450 left, then 230: crosses 50 %, then 25 %
    support.wait_until(lambda: len(receiver.accepted()) >= 2, timeout=10)
    time.sleep(1.0)  # every worker has checked the accounts it wrote to by now: still one per crossing
    delivered = receiver.accepted()
    assert len(delivered) == 2, [d["body"] for d in receiver.deliveries]
    assert sorted(e["threshold_percent"] for e in events(delivered)) == [25, 50]
    for delivery in delivered:
        headers = {k.lower(): v for k, v in delivery["headers"].items()}
        event = orjson.loads(delivery["body"])
        signing.verify(kit.ALERT_SECRET, headers["x-zowy-timestamp"], headers["x-zowy-signature"], delivery["body"],
                        time.time(), 300)
        assert headers["idempotency-key"] == event["id"] and headers["content-type"] == "application/json"
        assert event["type"] == "balance.low" and event["account"]["id"] == owner.customer.account_id
        assert event["package"]["tokens"] == 1000
        # Measured when a worker looked, which may be a request or two after the crossing.
        assert event["total_tokens"] == 1000 and event["remaining_tokens"] * 100 <= event["threshold_percent"] * 1000
    assert len({d["headers"]["Idempotency-Key"] for d in delivered}) == 2

    with httpx2.Client(base_url=pair.first.url, timeout=30) as h:
        shown = h.get("/api/v1/account/alerts", headers=owner.auth).json()
    assert len(shown["deliveries"]) == 2 and all(d["delivered_at"] and d["attempts"] == 1 for d in shown["deliveries"])

    # A top-up re-arms the thresholds: the next crossing is a new alert.
    body = orjson.dumps({"event_id": f"evt_{uuid.uuid4().hex}", "account": owner.customer.account_id, "tokens": 700})
    with httpx2.Client(base_url=pair.first.url, timeout=30) as h:
        assert h.post("/webhooks/topup", content=body, headers=kit.signed(body)).status_code == 200
    spend([pair.first], owner.customer.key, 1)  # 930 of 1700 -> 820 left: below 50 %, not below 25 %
    support.wait_until(lambda: len(receiver.accepted()) == 3, timeout=10)
    latest = events(receiver.accepted())[-1]
    assert latest["threshold_percent"] == 50 and latest["package"]["id"] != events(delivered)[0]["package"]["id"]


def test_receiver_down_then_up_gets_it_once(pair, receiver):
    owner = kit.new_owner(pair.first, tokens=1000)
    assert set_alerts(pair.first, owner, url=receiver.url, thresholds=[90, 50]).status_code == 200
    spend([pair.first, pair.second], owner.customer.key, 5)  # 890 left crosses 90 %, 450 left crosses 50 %

    def attempts() -> int:
        with httpx2.Client(base_url=pair.second.url, timeout=30) as h:
            shown = h.get("/api/v1/account/alerts", headers=owner.auth).json()["deliveries"]
        return min((d["attempts"] for d in shown), default=0) if len(shown) == 2 else 0

    support.wait_until(lambda: attempts() >= 2, timeout=10)  # refused connections, retried with backoff
    with httpx2.Client(base_url=pair.second.url, timeout=30) as h:
        shown = h.get("/api/v1/account/alerts", headers=owner.auth).json()["deliveries"]
    assert all(d["delivered_at"] is None and d["last_error"] for d in shown)
    receiver.fail_next = 1
    receiver.up()  # back, but the first answer is a 503
    support.wait_until(lambda: len(receiver.accepted()) == 2, timeout=15)
    time.sleep(1.0)
    assert len(receiver.accepted()) == 2
    assert sorted(e["threshold_percent"] for e in events(receiver.accepted())) == [50, 90]
    assert [d["answered"] for d in receiver.deliveries].count(503) == 1
    keys = [d["headers"]["Idempotency-Key"] for d in receiver.deliveries]
    assert len(set(keys)) == 2  # the retried one carried the same key as its failed attempt


def test_alert_settings_are_validated_and_audited(pair):
    owner = kit.new_owner(pair.first)

    def refused(body: dict, param: str) -> str:
        r = set_alerts(pair.first, owner, **body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        return r.json()["error"]["code"]

    refused({"url": "ftp://example.com/x"}, "url")
    refused({"url": "not a url"}, "url")
    refused({"url": "http://[::1/x"}, "url")  # an unclosed IPv6 host is a 400, not a crash
    refused({"url": "https://example.com/x", "thresholds": [101]}, "thresholds[0]")
    refused({"url": "https://example.com/x", "thresholds": []}, "thresholds")
    refused({"thresholds": [10]}, "url")
    with httpx2.Client(base_url=pair.first.url, timeout=30) as h:
        shown = h.get("/api/v1/account/alerts", headers=owner.auth).json()
        assert shown["url"] is None and shown["thresholds"] == [10, 0] and shown["deliveries"] == []
        assert set_alerts(pair.first, owner, url="https://hooks.example.com/zowy", thresholds=[25, 5, 25]).json()["thresholds"] == [25, 5]
        assert set_alerts(pair.first, owner, url=None).json()["url"] is None
        admin = h.get(f"/admin/v1/accounts/{owner.customer.account_id}/alerts",
                      headers={"Authorization": f"Bearer {pair.first.admin_token}"}).json()
        assert admin["url"] is None
        changes = h.get("/admin/v1/audit", params={"account": owner.customer.account_id, "action": "alerts.update"},
                        headers={"Authorization": f"Bearer {pair.first.admin_token}"}).json()["data"]
    assert [c["after"]["url"] for c in changes] == [None, "https://hooks.example.com/zowy"]
    assert changes[1]["before"] is None and changes[0]["before"]["thresholds"] == [25, 5]


def test_private_receivers_and_disabled_alerts_are_refused(tmp_path, models_path):
    from sanic import Sanic

    from app.alerts.rules import check_settings
    from app.core.config import Settings
    from app.core.errors import InvalidRequest

    base = {"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_MODELS_FILE": str(models_path), "ZOWY_DEMO": "off"}
    settings = Settings.from_env({**base, "ZOWY_ALERT_SECRET": "s"})
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/latest", "http://localhost/x"):
        with pytest.raises(InvalidRequest) as info:
            check_settings(settings, url, None)
        assert info.value.code == "url_not_public", url
    assert check_settings(settings, "https://hooks.example.com/x", [0, 50]) == ("https://hooks.example.com/x", (50, 0))

    from app.http.app import create_app

    Sanic.test_mode = True
    app = create_app(Settings.from_env({**base, "ZOWY_ADMIN_TOKEN": "t"}), name=f"alerts_off_{uuid.uuid4().hex[:6]}")
    _, created = app.test_client.post("/admin/v1/accounts", json={"name": "acme"}, headers={"Authorization": "Bearer t"})
    _, response = app.test_client.put("/admin/v1/accounts/acme/alerts", json={"url": "https://hooks.example.com/x"},
                                      headers={"Authorization": "Bearer t"})
    assert created.status == 201
    assert response.status == 400 and response.json["error"]["code"] == "alerts_disabled"


@pytest.fixture(scope="module")
def public_only(tmp_path_factory, models_path):
    """A gateway that delivers alerts to public addresses only (ZOWY_ALERT_PRIVATE_URLS unset)."""
    gw = support.start_gateway(tmp_path_factory.mktemp("alerts-public"), models_path,
                               **{**kit.ENV, "ZOWY_ALERT_PRIVATE_URLS": "false", "ZOWY_ALERT_MAX_ATTEMPTS": "2"})
    yield gw
    gw.stop()


def test_a_customer_learns_nothing_about_the_gateways_network_from_delivery_errors(public_only, receiver):
    receiver.up()
    inside = socket.gethostname()  # a name of this machine: it resolves to a non-public address here
    if any(not re.match(r"^(127|10|172\.(1[6-9]|2\d|3[01])|192\.168)\.", a[4][0]) for a in socket.getaddrinfo(inside, 80)):
        pytest.skip(f"{inside} resolves to a public address")
    urls = {
        "internal name": f"http://{inside}:{receiver.port}/hooks/zowy",
        "loopback in another spelling": f"http://127.1:{receiver.port}/hooks/zowy",
        "no such name": f"http://no-such-host-{uuid.uuid4().hex[:8]}.invalid:{receiver.port}/hooks/zowy",
    }
    owners = {}
    for kind, url in urls.items():
        owner = owners[kind] = kit.new_owner(public_only, tokens=1000)
        if kind == "no such name":  # a dotted name is accepted when set: it is only resolved to deliver
            assert set_alerts(public_only, owner, url=url, thresholds=[100]).status_code == 200
        else:  # refused when set now; such a URL may still be stored from before these rules
            assert set_alerts(public_only, owner, url=url, thresholds=[100]).json()["error"]["code"] == "url_not_public"
            support.run_store(public_only, lambda s, a=owner.customer.account_id, u=url: s.set_alert_settings(
                AlertSettings(a, u, (100,), time.time())))
        spend([public_only], owner.customer.key, 1)

    def errors() -> dict[str, str | None]:
        found = {}
        for kind, owner in owners.items():
            with httpx2.Client(base_url=public_only.url, timeout=30) as h:
                shown = h.get("/api/v1/account/alerts", headers=owner.auth).json()["deliveries"]
            found[kind] = shown[0]["last_error"] if shown and shown[0]["failed_at"] else None
        return found

    support.wait_until(lambda: all(errors().values()), timeout=20)
    assert len(set(errors().values())) == 1, errors()  # one text, whatever the reason
    assert receiver.deliveries == []
    log = public_only.process.log()  # the operator's log says what happened
    assert f"{inside} resolves to 127." in log and "no-such-host-" in log
