"""An embedded store file of an earlier release opens with its keys intact and gains the new key columns."""
from __future__ import annotations

import sqlite3

from app.store.sqlite import SqliteStore

OLD_KEYS = """
CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, per_minute INTEGER, per_hour INTEGER
);
INSERT INTO accounts VALUES ('acc_1', 'alice', 1.0);
INSERT INTO api_keys VALUES ('key_1', 'acc_1', 'hash-1', 'zk-aaaaaaa', 2.0, NULL, 5, NULL);
"""


async def test_old_key_table_is_upgraded_in_place(tmp_path):
    path = tmp_path / "zowy.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_KEYS)
    db.close()
    store = SqliteStore(path)
    await store.init()
    key = await store.key_by_hash("hash-1")
    assert (key.id, key.per_minute, key.name, key.models, key.token_cap, key.ips, key.expires_at) == (
        "key_1", 5, None, None, None, None, None)
    updated = await store.update_key("key_1", {"models": ("zowy-1",), "token_cap": 10})
    assert updated.models == ("zowy-1",) and updated.token_cap == 10
    await store.close()
    again = SqliteStore(path)  # a second start finds nothing to add and keeps what was set
    await again.init()
    assert await again.key("key_1") == updated
    await again.close()
