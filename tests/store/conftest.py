"""Store backends for the contract suite: SQLite on a temp file, nx-27017 as a real subprocess (the
session's ``nx_server`` of tests/conftest.py), and a real MongoDB when ``TEST_MONGO_URL`` is set.
No in-process fake of MongoDB.
"""
from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from app.store import Store
from tests.support import NxServer

pytest.register_assert_rewrite("storekit")

BACKENDS = ["sqlite", "mongo-nx", "mongo-real"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items) -> None:
    """SQLite runs in process (the fast tier); MongoDB is a server of its own (nx-27017 as a child
    process, or a real one at TEST_MONGO_URL)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and str(callspec.params.get("backend", "")).startswith("mongo"):
            item.add_marker(pytest.mark.processes)


@pytest.fixture
def dedicated_nx(tmp_path: Path):
    """An nx-27017 server of the test's own, for tests that stop and restart it."""
    server = NxServer(tmp_path / "nx-data").start()
    yield server
    server.stop()


class Backend:
    """Makes store instances of one backend that share one database, and reaches it with the raw driver."""

    def __init__(self, name: str, *, sqlite_path: Path | None = None, url: str = "", db_name: str = "") -> None:
        self.name = name
        self.sqlite_path = sqlite_path
        self.url = url
        self.db_name = db_name
        self.stores: list[Store] = []

    @property
    def is_mongo(self) -> bool:
        return self.name.startswith("mongo")

    async def store(self, timeout: float = 5.0) -> Store:
        """A new, initialized store instance (its own connection/client) on the shared database."""
        if self.is_mongo:
            from app.store.mongo import MongoStore

            store: Store = MongoStore(self.url, self.db_name, timeout=timeout)
        else:
            from app.store.sqlite import SqliteStore

            store = SqliteStore(self.sqlite_path, timeout=timeout)
        await store.init()
        self.stores.append(store)
        return store

    def raw_mongo(self):
        import pymongo

        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)
        return client, client[self.db_name]

    def tamper_used(self, account_id: str, package_id: str, delta: int) -> None:
        """Change a package's ``used`` behind the store's back, with the backend's own driver."""
        if self.is_mongo:
            client, db = self.raw_mongo()
            try:
                doc = db.accounts.find_one({"_id": account_id})
                for package in doc["packages"]:
                    if package["id"] == package_id:
                        package["used"] += delta
                db.accounts.update_one({"_id": account_id}, {"$set": {"packages": doc["packages"]}})
            finally:
                client.close()
        else:
            with sqlite3.connect(self.sqlite_path) as db:
                db.execute("UPDATE packages SET used = used + ? WHERE id = ?", (delta, package_id))
            db.close()

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        if self.name == "mongo-real":
            client, _ = self.raw_mongo()
            client.drop_database(self.db_name)
            client.close()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name = request.param
    db_name = f"zowy_test_{uuid.uuid4().hex[:12]}"
    if name == "sqlite":
        chosen = Backend(name, sqlite_path=tmp_path / "zowy.db")
    elif name == "mongo-nx":
        chosen = Backend(name, url=request.getfixturevalue("nx_server").url, db_name=db_name)
    else:
        url = os.environ.get("TEST_MONGO_URL", "")
        if not url:
            pytest.skip("TEST_MONGO_URL is not set")
        chosen = Backend(name, url=url, db_name=db_name)
    try:
        yield chosen
    finally:
        await chosen.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.store()
