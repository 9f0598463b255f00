"""The import rule of app/, read from the code's own imports (AST, every import: top level, inside
functions, under TYPE_CHECKING): packages import only packages of lower layers; no folder's rooms
(its files and sub-folders) import each other in a circle; some libraries and the environment are
reached from one place each.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str            # the importing file, relative to the root (app/x/y.py)
    line: int
    module: str            # the absolute module named (app.core.errors, sanic.response, os)
    target: str | None     # the file of this tree it resolves to, if any


@dataclass
class Tree:
    root: Path             # the folder that holds the package (the repository)
    package: str = "app"
    files: dict[str, ast.Module] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path, package: str = "app") -> "Tree":
        tree = cls(Path(root), package)
        for path in sorted((tree.root / package).rglob("*.py")):
            rel = path.relative_to(tree.root).as_posix()
            tree.files[rel] = ast.parse(path.read_text(encoding="utf-8"), rel)
        for rel, module in tree.files.items():
            tree.imports += tree._imports_of(rel, module)
        return tree

    def module_of(self, rel: str) -> str:
        parts = rel[:-3].split("/")
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def file_of(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for candidate in (base + ".py", base + "/__init__.py"):
            if candidate in self.files:
                return candidate
        return None

    def _imports_of(self, rel: str, module: ast.Module) -> list[Import]:
        here = self.module_of(rel)
        package = here if rel.endswith("__init__.py") else here.rpartition(".")[0]
        out = []
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out.append(Import(rel, node.lineno, alias.name, self.file_of(alias.name)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                for alias in node.names:
                    sub = f"{name}.{alias.name}"
                    if self.file_of(sub):  # a submodule, imported by name
                        out.append(Import(rel, node.lineno, sub, self.file_of(sub)))
                    else:
                        out.append(Import(rel, node.lineno, name, self.file_of(name)))
        return out

    def top(self, rel: str) -> str:
        """The package of the first level under the root package a file belongs to (``cli`` for
        app/cli.py)."""
        parts = rel.split("/")
        return parts[1] if len(parts) > 2 else parts[1][:-3]


def layer_violations(tree: Tree, layers: list[tuple[str, ...]]) -> list[str]:
    """Imports that reach a package of the same layer (another one) or a higher layer."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    out = []
    for imp in tree.imports:
        if imp.target is None:
            continue
        src, dst = tree.top(imp.source), tree.top(imp.target)
        if src == dst or dst == "__init__":
            continue
        if src not in rank or dst not in rank:
            out.append(f"{imp.source}:{imp.line}: {src} or {dst} is in no layer")
        elif rank[dst] >= rank[src]:
            why = "its own layer" if rank[dst] == rank[src] else "a higher layer"
            out.append(f"{imp.source}:{imp.line}: {src} imports {dst} ({imp.module}), of {why}")
    return out


def unplaced(tree: Tree, layers: list[tuple[str, ...]]) -> set[str]:
    """Packages and top-level modules of the tree that no layer names."""
    named = {name for layer in layers for name in layer}
    return {tree.top(rel) for rel in tree.files if tree.top(rel) != "__init__"} - named


def circles(tree: Tree) -> list[list[str]]:
    """For every folder of the tree, its rooms (files, and sub-folders taken whole) that import
    one another in a circle; each circle with the imports that close it."""
    found = []
    folders = {rel.rpartition("/")[0] for rel in tree.files}
    for folder in sorted(folders):
        def room(rel: str) -> str | None:
            if not rel.startswith(folder + "/"):
                return None
            rest = rel[len(folder) + 1:]
            return folder + "/" + rest.split("/")[0]

        edges: dict[str, set[str]] = {}
        why: dict[tuple[str, str], str] = {}
        for imp in tree.imports:
            if imp.target is None:
                continue
            a, b = room(imp.source), room(imp.target)
            if a is None or b is None or a == b:
                continue
            edges.setdefault(a, set()).add(b)
            why.setdefault((a, b), f"{imp.source}:{imp.line} -> {imp.target}")
        for component in _strongly_connected(edges):
            if len(component) > 1:
                members = sorted(component)
                ties = [why[(a, b)] for a in members for b in members if (a, b) in why]
                found.append(members + ["  " + t for t in ties])
    return found


def _strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    nodes = set(edges) | {b for bs in edges.values() for b in bs}
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def library_violations(tree: Tree, allowed: dict[str, tuple[str, ...]]) -> list[str]:
    """Imports of a library (``sanic``) from a file that no pattern of its own allows."""
    out = []
    for imp in tree.imports:
        library = imp.module.split(".")[0]
        if library in allowed and not any(fnmatch(imp.source, pattern) for pattern in allowed[library]):
            out.append(f"{imp.source}:{imp.line}: imports {imp.module}")
    return out


def environment_reads(tree: Tree) -> list[str]:
    """Every place that touches the process environment: ``os.environ``, ``os.getenv`` and their
    kin, however ``os`` or the name was imported."""
    names = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
    out = []
    for rel, module in tree.files.items():
        aliases = {"os"}
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name == "os"}
            elif isinstance(node, ast.ImportFrom) and node.module == "os":
                out += [f"{rel}:{node.lineno}: from os import {a.name}" for a in node.names if a.name in names]
        for node in ast.walk(module):
            if (isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                out.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    return out
