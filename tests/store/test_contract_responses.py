"""The contract of stored responses, on every backend: kept per account until they expire, read back
by id (several at once), never another account's, deleted once; expired ones are not read and are
swept (SQLite) or dropped by a TTL index (MongoDB)."""
from __future__ import annotations

import time

import orjson
import pytest

from app.store import Store
from app.store.contracts.responses import StoredResponse


def stored(response_id: str, account: str = "acc_1", ttl: float = 3600, chain=(), now: float | None = None) -> StoredResponse:
    now = now or time.time()
    response = orjson.dumps({"id": response_id, "output": [{"type": "message"}], "text": {"format": {"schema": {"$schema": "x", "a.b": 1}}}})
    return StoredResponse(response_id, account, now, now + ttl, tuple(chain), response, orjson.dumps([{"id": f"in_{response_id}"}]))


async def test_saved_responses_are_read_back_per_account(store: Store):
    now = time.time()
    first = stored("resp_1", now=now)
    second = stored("resp_2", chain=("resp_1",), now=now)
    for item in (first, second, stored("resp_other", account="acc_2", now=now)):
        await store.save_response(item)
    got = {s.id: s for s in await store.stored_responses("acc_1", ["resp_1", "resp_2", "resp_other", "resp_none"], now)}
    assert set(got) == {"resp_1", "resp_2"}
    assert got["resp_2"] == second and got["resp_2"].chain == ("resp_1",)
    assert orjson.loads(got["resp_1"].response)["text"]["format"]["schema"] == {"$schema": "x", "a.b": 1}
    assert await store.stored_responses("acc_2", ["resp_1"], now) == []
    assert await store.stored_responses("acc_1", [], now) == []


async def test_delete_once_and_never_another_accounts(store: Store):
    now = time.time()
    await store.save_response(stored("resp_1", now=now))
    assert await store.delete_response("acc_2", "resp_1", now) is False
    assert await store.delete_response("acc_1", "resp_1", now) is True
    assert await store.delete_response("acc_1", "resp_1", now) is False
    assert await store.stored_responses("acc_1", ["resp_1"], now) == []


async def test_expired_responses_are_not_read_and_are_dropped(backend, store: Store):
    now = time.time()
    await store.save_response(stored("resp_old", ttl=60, now=now - 120))
    await store.save_response(stored("resp_new", ttl=3600, now=now))
    assert [s.id for s in await store.stored_responses("acc_1", ["resp_old", "resp_new"], now)] == ["resp_new"]
    assert await store.delete_response("acc_1", "resp_old", now) is False
    await store.sweep(now)
    if backend.is_mongo:
        # MongoDB's TTL monitor drops it (whenever it runs): the index says when.
        client, db = backend.raw_mongo()
        try:
            # By its key: nx-27017 names indexes its own way.
            ttl = [i for i in db.responses.list_indexes() if dict(i["key"]) == {"expires_at": 1}]
            assert ttl and ttl[0]["expireAfterSeconds"] == 0
            assert db.responses.find_one({"_id": "resp_new"})["expires_at"].timestamp() == pytest.approx(now + 3600, abs=1)
        finally:
            client.close()
    else:
        # Asked as of a moment before it expired, a swept response is gone all the same.
        assert [s.id for s in await store.stored_responses("acc_1", ["resp_old", "resp_new"], now - 100)] == ["resp_new"]


async def test_many_ids_at_once(store: Store):
    now = time.time()
    ids = [f"resp_{n}" for n in range(620)]
    for response_id in ids:
        await store.save_response(stored(response_id, now=now))
    assert len(await store.stored_responses("acc_1", ids + ids[:5], now)) == 620
