"""mongo/init.js declares exactly the collections and indexes of the MongoDB store's INDEXES (app/store/mongo/)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.store.mongo import INDEXES

INIT_JS = Path(__file__).resolve().parents[2] / "mongo" / "init.js"

# Runs init.js against a stand-in for mongosh's `db`, printing every call it makes.
_SHIM = """
const calls = [];
const collection = (name) => ({createIndex: (key, options) => calls.push(["createIndex", name, key, options])});
const database = {
  getName: () => "zowy",
  getCollectionNames: () => ["accounts"],
  createCollection: (name) => calls.push(["createCollection", name]),
  getCollection: collection,
};
globalThis.db = {getSiblingDB: (name) => { calls.push(["getSiblingDB", name]); return database; }};
globalThis.print = () => {};
require(process.argv[2]);
console.log(JSON.stringify(calls));
"""


def expected() -> dict:
    return ordered({collection: [index.spec() for index in indexes] for collection, indexes in INDEXES.items()})


def ordered(declared: dict) -> dict:
    """Index keys as lists of pairs: the field order of a compound index matters, dict equality ignores it."""
    return {c: [{**spec, "key": list(spec["key"].items())} for spec in specs] for c, specs in declared.items()}


def test_init_js_declares_every_index():
    text = INIT_JS.read_text()
    block = re.search(r"// BEGIN INDEXES\s*const INDEXES = (\{.*?\});\s*// END INDEXES", text, re.S)
    assert block, "init.js lost its INDEXES block"
    declared = json.loads(block.group(1))
    assert ordered(declared) == expected()
    for collection, indexes in INDEXES.items():
        for index in indexes:
            assert any(d["name"] == index.name and d["key"] == dict(index.key) for d in declared[collection])


@pytest.mark.processes  # node runs init.js
def test_init_js_runs_and_creates_them(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    shim = tmp_path / "shim.js"
    shim.write_text(_SHIM)
    out = subprocess.run([node, str(shim), str(INIT_JS)], capture_output=True, text=True, timeout=30,
                         env={"ZOWY_MONGO_DB": "zowy_prod", "PATH": ""})
    assert out.returncode == 0, out.stderr
    calls = json.loads(out.stdout)
    assert calls[0] == ["getSiblingDB", "zowy_prod"]
    created = [c[1] for c in calls if c[0] == "createCollection"]
    assert created == [c for c in INDEXES if c != "accounts"]
    made: dict = {collection: [] for collection in created}  # a collection may have no index of its own
    for _, collection, key, options in (c for c in calls if c[0] == "createIndex"):
        made.setdefault(collection, []).append({"key": key, **options})
    assert ordered(made) == expected()
