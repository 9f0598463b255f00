"""pymongo stays behind app/store/mongo/: nobody else imports it, and none of its exceptions escape."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from app.core.errors import Conflict, StoreUnavailable
from app.store.mongo import driver_errors as _driver_errors

APP = Path(__file__).resolve().parents[2] / "app"


def test_only_the_mongo_store_imports_pymongo():
    importers = []
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("pymongo", "bson", "motor", "gridfs") for n in names):
                importers.append(path.relative_to(APP.parent).as_posix())
    assert importers and all(path.startswith("app/store/mongo/") for path in importers), importers


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("connection reset"),
        NetworkTimeout("timed out"),
        ServerSelectionTimeoutError("no servers"),
        ExecutionTimeout("operation exceeded time limit", 50),
        NotPrimaryError("not primary"),
        OperationFailure("interrupted at shutdown", 11600),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}]}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_driver_failures_become_store_unavailable(error):
    with pytest.raises(StoreUnavailable) as caught:
        with _driver_errors:
            raise error
    assert caught.value.__cause__ is error


def test_duplicate_key_becomes_conflict():
    with pytest.raises(Conflict):
        with _driver_errors:
            raise DuplicateKeyError("E11000 duplicate key", 11000)


def test_other_errors_pass_through():
    with pytest.raises(KeyError):
        with _driver_errors:
            raise KeyError("x")
    with _driver_errors:
        pass
