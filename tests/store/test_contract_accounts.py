"""The contract of what accounts run themselves with, on every backend: key controls, owners,
invites, sessions, codes, top-ups, the alert outbox and the audit log."""
from __future__ import annotations

import asyncio

import pytest

from app.core.errors import (
    Conflict,
)
from app.store import (
    Store,
)
from app.store.contracts.alerts import (
    Alert,
    AlertSettings,
)
from app.store.contracts.audit import (
    AuditEvent,
    AuditQuery,
)
from app.store.contracts.grants import (
    Code,
    Topup,
)
from app.store.contracts.keys import (
    KeyRecord,
)
from app.store.contracts.ledger import (
    LedgerQuery,
)
from app.store.contracts.owners import (
    Invite,
    Owner,
    Session,
)
from storekit import DAY, T, account_with, entry, package


# key controls


async def test_key_controls_are_stored_and_updated(store: Store):
    await store.create_account("acc_1", "alice", T)
    record = KeyRecord("key_1", "acc_1", "zk-aaaaaaa", T, name="ci", expires_at=T + DAY, models=("zowy-1",),
                       token_cap=5000, ips=("10.0.0.0/8", "::1/128"))
    await store.create_key(record, "hash-1")
    assert await store.key_by_hash("hash-1") == record
    assert record.allows("zowy-1") and not record.allows("zowy-2")

    after = await store.update_key("key_1", {"models": ("zowy-1", "zowy-2"), "token_cap": None, "name": "prod"})
    assert after.models == ("zowy-1", "zowy-2") and after.token_cap is None and after.name == "prod"
    assert after.ips == ("10.0.0.0/8", "::1/128") and after.expires_at == T + DAY
    assert await store.key("key_1") == after
    cleared = await store.update_key("key_1", {"models": None, "ips": None, "expires_at": None, "per_minute": 7})
    assert cleared.models is None and cleared.ips is None and cleared.expires_at is None and cleared.per_minute == 7
    assert cleared.allows("anything")
    assert await store.update_key("key_9", {"name": "x"}) is None
    # Only controls are written: an id or an account cannot be changed this way.
    assert (await store.update_key("key_1", {"account_id": "acc_2", "id": "key_2"})).account_id == "acc_1"


async def test_key_tokens_sum_the_ledger_of_one_key(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 10_000, T))
    assert await store.key_tokens("key_1") == 0
    await store.record([entry("r1", "acc_1", 30, T + 1), entry("r2", "acc_1", 12, T + 2),
                        entry("r3", "acc_1", 500, T + 3, key_id="key_2")])
    assert await store.key_tokens("key_1") == 42
    assert await store.key_tokens("key_2") == 500
    await store.record([entry("r1", "acc_1", 30, T + 1)])  # a replay adds nothing
    assert await store.key_tokens("key_1") == 42


async def test_ledger_pages_newest_first_with_filters(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 10**9, T))
    batch = [
        entry(f"r{i:02d}", "acc_1", 10 + i, T + i // 2, model="zowy-1" if i % 3 else "zowy-2",
              key_id="key_1" if i % 2 else "key_2", outcome="ok" if i % 5 else "upstream_error")
        for i in range(20)
    ]
    await store.record(batch + [entry("other", "acc_2", 5, T)])
    seen, after = [], None
    while True:
        page = await store.ledger_page("acc_1", LedgerQuery(limit=6, after=after))
        if not page:
            break
        seen += page
        after = (page[-1].created_at, page[-1].request_id)
    expected = sorted(batch, key=lambda e: (e.created_at, e.request_id), reverse=True)
    assert [e.request_id for e in seen] == [e.request_id for e in expected]
    assert seen[0].total_tokens == expected[0].total_tokens and seen[0].key_id == expected[0].key_id

    only = await store.ledger_page("acc_1", LedgerQuery(model="zowy-2", key_id="key_2"))
    assert [e.request_id for e in only] == [e.request_id for e in expected if e.model == "zowy-2" and e.key_id == "key_2"]
    failed = await store.ledger_page("acc_1", LedgerQuery(outcome="upstream_error"))
    assert {e.request_id for e in failed} == {"r00", "r05", "r10", "r15"}
    window = await store.ledger_page("acc_1", LedgerQuery(since=T + 2, until=T + 4))
    assert {e.request_id for e in window} == {"r04", "r05", "r06", "r07"}
    assert await store.ledger_page("acc_9", LedgerQuery()) == []


async def test_ledger_entries_keep_the_api_they_came_through(store: Store):
    await account_with(store, "acc_1", package("pkg_a", "acc_1", 10**9, T))
    await store.record([
        entry("via-chat", "acc_1", 10, T),
        entry("via-responses", "acc_1", 20, T + 1, api="responses"),
        entry("via-messages", "acc_1", 30, T + 2, api="messages"),
    ])
    assert (await store.ledger_entry("via-responses")).api == "responses"
    assert (await store.ledger_entry("via-chat")).api == "chat"
    for api, expected in (("chat", ["via-chat"]), ("responses", ["via-responses"]), ("messages", ["via-messages"])):
        assert [e.request_id for e in await store.ledger_page("acc_1", LedgerQuery(api=api))] == expected
    assert len(await store.ledger_page("acc_1", LedgerQuery())) == 3


# owners, invites, sessions


async def test_owners_by_email_and_account(store: Store):
    await store.create_account("acc_1", "alice", T)
    owner = Owner("usr_1", "acc_1", "ann@example.com", T)
    assert await store.create_owner(owner, "scrypt$hash") == owner
    await store.create_owner(Owner("usr_2", "acc_1", "bob@example.com", T + 1), "scrypt$other")
    assert await store.owner_login("ann@example.com") == (owner, "scrypt$hash")
    assert await store.owner_login("nobody@example.com") is None
    assert [o.id for o in await store.owners("acc_1")] == ["usr_1", "usr_2"]
    with pytest.raises(Conflict):
        await store.create_owner(Owner("usr_3", "acc_1", "ann@example.com", T), "x")
    with pytest.raises(Conflict):
        await store.create_owner(Owner("usr_4", "acc_9", "new@example.com", T), "x")


async def test_invite_is_claimed_once_and_not_after_expiry(store: Store):
    await store.create_account("acc_1", "alice", T)
    invite = Invite("inv_1", "acc_1", "ann@example.com", T, T + DAY)
    await store.create_invite(invite, "tok-1")
    await store.create_invite(Invite("inv_2", "acc_1", "bob@example.com", T, T + 10), "tok-2")
    with pytest.raises(Conflict):
        await store.create_invite(Invite("inv_3", "acc_9", "c@example.com", T, T + 10), "tok-3")
    claims = await asyncio.gather(*(store.claim_invite("tok-1", T + 5) for _ in range(8)))
    winners = [c for c in claims if c is not None]
    assert winners == [Invite("inv_1", "acc_1", "ann@example.com", T, T + DAY, T + 5)]
    assert await store.claim_invite("tok-1", T + 6) is None
    assert await store.claim_invite("tok-2", T + 11) is None  # expired
    assert await store.claim_invite("tok-9", T) is None


async def test_sessions_expire_and_sign_out(store: Store):
    await store.create_account("acc_1", "alice", T)
    session = Session("sh-1", "acc_1", "usr_1", T, T + 3600)
    await store.create_session(session)
    await store.create_session(Session("sh-2", "acc_1", "usr_1", T, T + 60))
    assert await store.session("sh-1", T + 10) == session
    assert await store.session("sh-1", T + 3600) is None
    assert await store.session("sh-9", T) is None
    assert await store.delete_session("sh-1") is True
    assert await store.session("sh-1", T + 10) is None
    assert await store.delete_session("sh-1") is False
    await store.sweep(T + 61)
    assert await store.session("sh-2", T) is None


# codes and top-ups


def code(cid: str, batch: str = "bat_1", expires: float = T + DAY) -> Code:
    return Code(cid, batch, "pro", 2_000_000, 30, T, expires)


async def test_codes_by_hash_and_batch(store: Store):
    await store.create_codes([(code("code_1"), "h1"), (code("code_2"), "h2"), (code("code_3", "bat_2"), "h3")])
    assert await store.code_by_hash("h2") == code("code_2")
    assert await store.code_by_hash("h9") is None
    assert [c.id for c in await store.codes("bat_1")] == ["code_1", "code_2"]
    with pytest.raises(Conflict):
        await store.create_codes([(code("code_4"), "h1")])
    assert await store.code_by_hash("h1") == code("code_1")


async def test_code_is_claimed_by_exactly_one_of_many(backend, store: Store):
    await store.create_codes([(code("code_1"), "h1"), (code("code_2", expires=T + 1), "h2")])
    other = await backend.store()
    claims = await asyncio.gather(*(
        (store if i % 2 else other).claim_code("code_1", f"acc_{i}", T + 10) for i in range(12)
    ))
    assert claims.count(True) == 1
    winner = f"acc_{claims.index(True)}"
    redeemed = await store.code_by_hash("h1")
    assert redeemed.redeemed_by == winner and redeemed.redeemed_at == T + 10
    assert await store.claim_code("code_2", "acc_1", T + 2) is False  # expired
    assert await store.claim_code("code_9", "acc_1", T) is False


async def test_topup_event_is_stored_once(store: Store):
    first = Topup("evt_1", "acc_1", "pkg_t1", "pro", 2_000_000, 30, T)
    assert await store.record_topup(first) == (first, True)
    again = Topup("evt_1", "acc_2", "pkg_other", "business", 1, 1, T + 5)
    assert await store.record_topup(again) == (first, False)
    results = await asyncio.gather(*(store.record_topup(Topup("evt_2", "acc_1", "pkg_t2", "pro", 5, 1, T + i)) for i in range(6)))
    assert [new for _, new in results].count(True) == 1
    assert len({stored for stored, _ in results}) == 1


# alerts


async def test_alert_settings_round_trip(store: Store):
    assert await store.alert_settings("acc_1") is None
    await store.set_alert_settings(AlertSettings("acc_1", "https://hooks.example.com/a", (10, 0), T))
    assert await store.alert_settings("acc_1") == AlertSettings("acc_1", "https://hooks.example.com/a", (10, 0), T)
    await store.set_alert_settings(AlertSettings("acc_1", None, (25,), T + 1))
    assert await store.alert_settings("acc_1") == AlertSettings("acc_1", None, (25,), T + 1)


def alert(aid: str, next_at: float = T, account: str = "acc_1") -> Alert:
    return Alert(aid, account, "https://hooks.example.com/a", '{"type":"balance.low"}', T, next_at)


async def test_alert_outbox_enqueues_once_and_leases(backend, store: Store):
    assert await store.enqueue_alert(alert("alr_1")) is True
    assert await store.enqueue_alert(alert("alr_1")) is False
    await store.enqueue_alert(alert("alr_2", next_at=T + 100))
    other = await backend.store()
    claims = await asyncio.gather(store.claim_alerts("w1", T + 1, 30, 10), other.claim_alerts("w2", T + 1, 30, 10))
    claimed = [a for c in claims for a in c]
    assert [a.id for a in claimed] == ["alr_1"]  # alr_2 is not due; nobody leases alr_1 twice
    leased = claimed[0]
    assert leased.attempts == 1 and leased.lease_until == T + 31
    owner = leased.lease_owner
    stranger = "w2" if owner == "w1" else "w1"
    assert await store.claim_alerts(stranger, T + 2, 30, 10) == []
    assert await store.retry_alert("alr_1", stranger, T + 5, "nope") is False

    # The receiver failed: back off; due again at T + 5.
    assert await store.retry_alert("alr_1", owner, T + 5, "503 from receiver") is True
    assert await store.claim_alerts("w1", T + 4, 30, 10) == []
    again = await store.claim_alerts("w1", T + 5, 30, 10)
    assert [(a.id, a.attempts, a.last_error) for a in again] == [("alr_1", 2, "503 from receiver")]
    # A worker died holding the lease: once it expires another worker takes the alert over.
    taken = await store.claim_alerts("w2", T + 36, 30, 10)
    assert [(a.id, a.attempts, a.lease_owner) for a in taken] == [("alr_1", 3, "w2")]
    assert await store.finish_alert("alr_1", "w1", T + 37) is False
    assert await store.finish_alert("alr_1", "w2", T + 37) is True
    assert [a.id for a in await store.claim_alerts("w1", T + 1000, 30, 10)] == ["alr_2"]  # delivered ones never again
    listed = await store.alerts("acc_1")
    assert {a.id: a.delivered_at for a in listed}["alr_1"] == T + 37


async def test_alert_gives_up_after_last_attempt(store: Store):
    await store.enqueue_alert(alert("alr_1"))
    [leased] = await store.claim_alerts("w1", T, 30, 10)
    assert await store.retry_alert("alr_1", "w1", T + 1, "timeout", give_up=True) is True
    assert await store.claim_alerts("w1", T + 10_000, 30, 10) == []
    [failed] = await store.alerts("acc_1")
    assert failed.failed_at == T + 1 and failed.delivered_at is None and failed.last_error == "timeout"


# audit log


async def test_audit_pages_newest_first_with_filters(store: Store):
    events = [
        AuditEvent(f"aud_{i:02d}", T + i // 2, "admin" if i % 2 else "owner:usr_1", "key.create" if i % 3 else "package.grant",
                   "acc_1" if i < 8 else "acc_2", f"key_{i}", None if i % 4 else {"plan": "pro"}, {"n": i}, "10.0.0.1")
        for i in range(12)
    ]
    for event in events:
        await store.append_audit(event)
    seen, after = [], None
    while page := await store.audit(AuditQuery(limit=5, after=after)):
        seen += page
        after = (page[-1].at, page[-1].id)
    assert seen == sorted(events, key=lambda e: (e.at, e.id), reverse=True)
    grants = await store.audit(AuditQuery(account_id="acc_1", action="package.grant"))
    assert [e.id for e in grants] == ["aud_06", "aud_03", "aud_00"]
    assert grants[-1].before == {"plan": "pro"} and grants[-1].after == {"n": 0}
    assert [e.id for e in await store.audit(AuditQuery(since=T + 5, until=T + 6))] == ["aud_11", "aud_10"]
