"""The import rule of app/, as docs/architecture.md states it (the layer list is read from there), held
against the code's own imports; and the checker itself, shown to catch each kind of break."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.import_rules import Tree, circles, environment_reads, layer_violations, library_violations, unplaced

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

LIBRARIES = {
    "sanic": ("app/http/*",),
    "sanic_routing": ("app/http/*",),
    "aiohttp": ("app/upstream/transport*.py", "app/alerts/delivery.py"),
    "sqlite3": ("app/store/sqlite/*",),
    "pymongo": ("app/store/mongo/*",),
    "bson": ("app/store/mongo/*",),
}
ENVIRONMENT = "app/core/config.py"


def layers(doc: str) -> list[tuple[str, ...]]:
    """The ```layers block of the document, lowest first: one line per layer, siblings split by |."""
    block = re.search(r"```layers\n(.*?)```", doc, re.S)
    assert block, "docs/architecture.md has no layers block"
    out = []
    for line in block.group(1).splitlines():
        number, _, names = line.strip().partition(" ")
        if number:
            assert int(number) == len(out) + 1, line
            out.append(tuple(name.strip() for name in names.split("|")))
    return out


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree.read(ROOT)


@pytest.fixture(scope="module")
def documented() -> list[tuple[str, ...]]:
    return layers(DOC.read_text(encoding="utf-8"))


def test_every_package_has_a_layer_and_is_explained(tree, documented):
    assert unplaced(tree, documented) == set()
    text = DOC.read_text(encoding="utf-8")
    packages = {tree.top(rel) for rel in tree.files if rel.count("/") > 1}
    assert packages, "no packages read"
    for package in packages:
        assert f"**{package}/**" in text, f"docs/architecture.md does not say why {package}/ exists"


def test_packages_import_only_lower_layers(tree, documented):
    assert layer_violations(tree, documented) == []


def test_no_folder_has_rooms_in_a_circle(tree):
    assert circles(tree) == []


def test_libraries_stay_in_their_places(tree):
    assert library_violations(tree, LIBRARIES) == []
    importers = {imp.source for imp in tree.imports if imp.module.split(".")[0] in LIBRARIES}
    assert any(path.startswith("app/http/") for path in importers), "the rule checks nothing: no sanic import read"


def test_only_the_settings_touch_the_environment(tree):
    places = environment_reads(tree)
    assert places and {place.split(":")[0] for place in places} == {ENVIRONMENT}


# the checker on a tree of its own

SYNTHETIC = {
    "app/__init__.py": "",
    "app/cli.py": "from .top import b\n",
    "app/low/__init__.py": "",
    "app/low/a.py": "from ..top import b\n",                                   # up a layer
    "app/low/c.py": "from . import d\n",                                        # c <-> d
    "app/low/d.py": "def f():\n    from .c import x\n",                          # (inside a function)
    "app/low/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .f import F\n",
    "app/low/f.py": "from .e import E\nF = E = 1\n",                              # e <-> f (TYPE_CHECKING)
    "app/top/__init__.py": "",
    "app/top/b.py": "import os\nimport sanic\nfrom os import getenv\nx = os.environ.get('A')\n",
    "app/side/__init__.py": "from ..top import b\n",                            # same layer as top
    "app/lone/__init__.py": "",                                                # in no layer
}
SYNTHETIC_LAYERS = [("low",), ("top", "side"), ("cli",)]


@pytest.fixture
def synthetic(tmp_path) -> Tree:
    for rel, text in SYNTHETIC.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Tree.read(tmp_path)


def test_the_checker_finds_a_layer_broken_upward_and_sideways(synthetic):
    found = layer_violations(synthetic, SYNTHETIC_LAYERS)
    assert any(v.startswith("app/low/a.py:1: low imports top") and "higher layer" in v for v in found), found
    assert any(v.startswith("app/side/__init__.py:1: side imports top") and "its own layer" in v for v in found), found
    assert not any(v.startswith("app/cli.py") for v in found)
    assert unplaced(synthetic, SYNTHETIC_LAYERS) == {"lone"}


def test_the_checker_finds_circles_of_files_even_through_functions_and_type_checking(synthetic):
    found = [c[:2] for c in circles(synthetic)]
    assert ["app/low/c.py", "app/low/d.py"] in found
    assert ["app/low/e.py", "app/low/f.py"] in found
    assert ["app/low", "app/top"] not in found  # a.py -> top is no circle: nothing of top imports low


def test_the_checker_finds_circles_of_packages(tmp_path):
    for rel, text in {"app/__init__.py": "", "app/x/__init__.py": "", "app/x/m.py": "from ..y import n\n",
                      "app/y/__init__.py": "", "app/y/n.py": "from ..x.m import z\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert [c[:2] for c in circles(Tree.read(tmp_path))] == [["app/x", "app/y"]]


def test_the_checker_finds_libraries_and_the_environment_out_of_place(synthetic):
    assert library_violations(synthetic, {"sanic": ("app/http/*",)}) == ["app/top/b.py:2: imports sanic"]
    assert library_violations(synthetic, {"sanic": ("app/top/*",)}) == []
    assert sorted(environment_reads(synthetic)) == ["app/top/b.py:3: from os import getenv", "app/top/b.py:4: os.environ"]
