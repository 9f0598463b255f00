"""Where low-balance alerts may be sent: every IPv4 spelling read as ``inet_aton`` reads it,
special-purpose ranges refused, a name resolved once and the connection made to what was checked,
and one neutral text to the customer whatever went wrong."""
from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from app.alerts.delivery import UNREACHABLE, DeliveryFailed, WebhookClient, host_refusal, ipv4_literal, refusal
from app.alerts.rules import check_settings
from app.core.config import Hooks, Settings
from app.core.errors import InvalidRequest

PUBLIC = Settings(hooks=Hooks(alert_secret="s"))
PRIVATE = Settings(hooks=Hooks(alert_secret="s", alert_private_urls=True))

SPELLINGS = ["127.1", "2130706433", "0x7f000001", "0X7F000001", "0177.0.0.1", "0x7f.1", "127.0.1", "0", "0x0",
             "017700000001", "10.1", "167772161", "0xa.0x1.0.1", "192.168.1", "1.2.3.4", "8.8.8.8", "134744072"]


@pytest.mark.parametrize("text", SPELLINGS)
def test_ipv4_spellings_are_read_as_inet_aton_reads_them(text):
    assert ipv4_literal(text) == ipaddress.IPv4Address(socket.inet_aton(text))


@pytest.mark.parametrize("text", ["example.com", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "0x", "1..2", ".1.2.3", "1.2.3.",
                                  "08.1.1.1", "1.2.3.4 x", "0x1g", "4294967296", "", "-1", "+1", "1.2.3.4\n"])
def test_what_is_no_ipv4_address(text):
    assert ipv4_literal(text) is None


@pytest.mark.parametrize("host", [
    "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0", "0.0.0.0", "10.1", "172.16.0.1", "192.168.1",
    "100.64.0.1", "169.254.169.254", "192.0.0.8", "192.0.2.1", "192.88.99.1", "198.18.0.1", "198.51.100.1",
    "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "::127.0.0.1", "::ffff:0:7f00:1",
    "64:ff9b::7f00:1", "64:ff9b::808:808", "64:ff9b:1::1", "2002:7f00:1::1", "2002:808:808::1", "2001::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:db8::1", "3fff::1", "100::1", "fc00::1", "fd12:3456::1",
    "fe80::1", "fe80::1%eth0", "fec0::1", "ff02::1", "ff0e::1", "5f00::1", "4000::1",
    "localhost", "LOCALHOST", "api.localhost", "printer.local", "metadata.google.internal", "nas.home.arpa",
    "db", "vm", "localhost.",
])
def test_special_purpose_hosts_are_refused(host):
    assert host_refusal(host.lower()) is not None, host
    url = f"http://[{host}]/x" if ":" in host else f"http://{host}/x"
    with pytest.raises(InvalidRequest) as info:
        check_settings(PUBLIC, url, None)
    assert info.value.code == "url_not_public" and info.value.param == "url"
    literal = ipv4_literal(host)
    if literal is None or str(literal) == host:
        assert check_settings(PRIVATE, url, None)[0] == url  # ZOWY_ALERT_PRIVATE_URLS=true lets them through
    else:
        with pytest.raises(InvalidRequest) as info:  # but an address is written as a.b.c.d in every mode
            check_settings(PRIVATE, url, None)
        assert info.value.param == "url" and "a.b.c.d" in info.value.message


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "::ffff:8.8.8.8", "2606:4700:4700::1111",
                                  "2a00:1450:4001:81b::200e", "hooks.example.com", "example.com."])
def test_public_hosts_are_accepted(host):
    assert host_refusal(host) is None, host
    url = f"https://[{host}]/x" if ":" in host else f"https://{host}/x"
    assert check_settings(PUBLIC, url, None)[0] == url


@pytest.mark.parametrize("host", ["134744072", "0x8080808", "8.8.2056"])
def test_a_public_address_in_another_spelling_is_refused_for_its_form(host):
    assert host_refusal(host) is None
    with pytest.raises(InvalidRequest) as info:
        check_settings(PUBLIC, f"https://{host}/x", None)
    assert info.value.param == "url" and info.value.code != "url_not_public" and "a.b.c.d" in info.value.message


@pytest.mark.parametrize("url", ["http://[::1/x", "http://[zz]/x", "http://8.8.8.8:99999/x", "ftp://8.8.8.8/x", "http:///x"])
def test_a_url_that_is_no_http_url_is_refused_naming_it(url):
    with pytest.raises(InvalidRequest) as info:
        check_settings(PRIVATE, url, None)
    assert info.value.param == "url" and "http(s) URL" in info.value.message


def test_refusal_names_the_range():
    assert "loopback" in refusal(ipaddress.ip_address("127.0.0.1"))
    assert "NAT64" in refusal(ipaddress.ip_address("64:ff9b::808:808"))
    assert "6to4" in refusal(ipaddress.ip_address("2002:808:808::1"))
    assert "Teredo" in refusal(ipaddress.ip_address("2001:0:4136:e378::1"))
    assert refusal(ipaddress.ip_address("::ffff:8.8.8.8")) is None


class FakeDNS(AbstractResolver):
    """Answers names from a table (we cannot run a DNS server here), each lookup a new answer in turn."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        turns = self.answers.get(host)
        if not turns:
            raise OSError(f"{host}: name or service not known")
        addresses = turns.pop(0) if len(turns) > 1 else turns[0]
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV} for a in addresses]

    async def close(self) -> None:
        pass


@pytest.fixture
async def receiver(unused_tcp_port):
    seen: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"host": request.headers.get("Host"), "body": await request.read()})
        return web.Response(status=int(request.query.get("status", "200")))

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield unused_tcp_port, seen
    await runner.cleanup()


async def post(client: WebhookClient, url: str) -> str | None:
    """None when delivered; the customer's text otherwise."""
    await client.start()
    try:
        await client.post(url, b"{}", {"Content-Type": "application/json"})
        return None
    except DeliveryFailed as failure:
        assert failure.detail  # what the server log says
        return str(failure)
    finally:
        await client.close()


async def test_a_name_is_resolved_once_and_the_connection_goes_to_that_address(receiver):
    port, seen = receiver
    dns = FakeDNS({"hooks.example.test": [["127.0.0.1"], ["203.0.113.1"]]})  # a second lookup would answer elsewhere
    assert await post(WebhookClient(2.0, private_urls=True, resolver=dns), f"http://hooks.example.test:{port}/hook") is None
    assert dns.asked == ["hooks.example.test"] and seen[0]["host"] == f"hooks.example.test:{port}"


async def test_a_name_that_resolves_inside_is_refused_before_any_connection(receiver):
    port, seen = receiver
    dns = FakeDNS({
        "inside.example.test": [["127.0.0.1"]],
        "mixed.example.test": [["93.184.215.14", "127.0.0.1"]],  # one private answer is enough to refuse
        "nat64.example.test": [["64:ff9b::7f00:1"]],
    })
    client = WebhookClient(2.0, resolver=dns)
    texts = [await post(client, f"http://{name}:{port}/hook")
             for name in ("inside.example.test", "mixed.example.test", "nat64.example.test")]
    texts.append(await post(client, f"http://no-such-host.example.test:{port}/hook"))  # does not resolve
    texts.append(await post(client, f"http://127.1:{port}/hook"))
    texts.append(await post(client, f"http://0x7f000001:{port}/hook"))
    texts.append(await post(client, f"http://[::ffff:127.0.0.1]:{port}/hook"))
    texts.append(await post(client, f"http://localhost:{port}/hook"))
    assert texts == [UNREACHABLE] * 8 and seen == []
    assert not {"127.1", "0x7f000001", "::ffff:127.0.0.1"} & set(dns.asked)  # an address in any spelling is judged as it is


async def test_every_failure_reads_the_same_to_the_customer(receiver, unused_tcp_port_factory):
    port, seen = receiver
    closed = unused_tcp_port_factory()
    client = WebhookClient(1.0, private_urls=True)
    assert await post(client, f"http://127.0.0.1:{closed}/hook") == UNREACHABLE  # nothing listens there
    assert await post(client, f"http://no-such-host.invalid:{port}/hook") == UNREACHABLE
    assert await post(client, f"http://127.0.0.1:{port}/hook?status=503") == "HTTP 503 from the receiver"
    assert await post(client, f"http://127.0.0.1:{port}/hook") is None and len(seen) == 2
