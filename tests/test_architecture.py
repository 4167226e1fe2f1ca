"""The layout's rules, checked on the source (docs/architecture.md explains them).

Every ``import`` counts, at module level or inside a function or an ``if
TYPE_CHECKING`` block: a cycle that only shows at run time is still a cycle for
the reader. ``from a.b import c`` is an import of ``a.b.c`` when that is a
module and of ``a.b`` otherwise (as Python itself resolves it); importing a
module is not counted as importing the packages above it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "cfn"

# Bottom to top: a top-level part of cfn may import only parts in lower layers (or
# itself). The root package (``cfn/__init__.py``, the public API) sits above
# what it re-exports and below the CLI, which prints its version.
LAYERS: list[set[str]] = [
    {"errors", "_version"},
    {"keys", "settings"},
    {"system"},
    {"worktree", "profiles"},
    {"coordination"},
    {"store"},
    {"providers", "mcp"},
    {"agents"},
    {"deploy"},
    {"loop"},
    {"troubleshoot"},
    {"health"},
    {"portal"},
    {"demo", ""},
    {"cli"},
    {"__main__"},
]

# What may touch SQL: the store, nothing else (SQLAlchemy, a DB-API driver, a cursor,
# or an SQL statement in a string).
SQL_MODULES = ("sqlalchemy", "alembic", "sqlite3", "psycopg", "psycopg2", "asyncpg")
SQL_TEXT = re.compile(
    r"\bSELECT\b[\s\S]+\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bCREATE\s+(TABLE|INDEX)\b|\bPRAGMA\b"
)


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) if parts else None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        wanted: list[str] = []
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                wanted.append(full if full in known else module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
        ):
            # importlib.import_module("cfn.x") is an import too (computed names: below).
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                wanted = [arg.value]
        for target in wanted:
            if target != "cfn" and not target.startswith("cfn."):
                continue
            resolved = _resolve(target, known)
            if resolved is not None and resolved != name:
                yield Import(name, resolved, node.lineno)


@cache
def all_imports() -> tuple[Import, ...]:
    known = modules()
    return tuple(imp for name, path in known.items() for imp in imports_of(name, path, known))


def top(module: str) -> str:
    """``cfn.loop.app`` -> ``loop``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(nodes: Iterable[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walk_sees_imports_inside_functions_and_type_checking_blocks(
    tmp_path: Path,
) -> None:
    # The checker itself must see what a reader sees, or the tests below prove nothing.
    known = {"cfn": PACKAGE, "cfn.a": PACKAGE, "cfn.a.b": PACKAGE, "cfn.c": PACKAGE}
    sample = tmp_path / "x.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from cfn.c import Thing\n"
        "def f():\n    from cfn.a import b\n    import cfn.a.b.zzz\n"
        "    from . import c\n    import os\n"
        "    importlib.import_module('cfn.a.b')\n    importlib.import_module(name)\n"
    )
    got = sorted((i.target, i.line) for i in imports_of("cfn.x", sample, known))
    assert got == [("cfn.a.b", 5), ("cfn.a.b", 6), ("cfn.a.b", 9), ("cfn.c", 3), ("cfn.c", 7)]
    assert cycles(["a", "b", "c"], {"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    # And on the real tree it finds the imports a reader sees.
    assert Import("cfn.loop.app", "cfn.settings", 0).target in {
        i.target for i in all_imports() if i.source == "cfn.loop.app"
    }


def test_no_module_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports():
        # A package importing its own submodule is the package's content, not a dependency.
        if not imp.target.startswith(imp.source + "."):
            edges[imp.source].add(imp.target)
    assert cycles(sorted(modules()), edges) == []


def test_no_package_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports():
        if top(imp.source) != top(imp.target):
            edges[top(imp.source)].add(top(imp.target))
    assert cycles(sorted({top(m) for m in modules()}), edges) == []


def test_every_top_level_part_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    assert {top(m) for m in modules()} <= layered


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=lambda i: "+".join(sorted(LAYERS[i])))
def test_imports_go_down_the_layers(layer: int) -> None:
    rank = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    wrong = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if top(imp.source) in LAYERS[layer]
        and top(imp.target) != top(imp.source)
        and rank[top(imp.target)] >= layer
    ]
    assert wrong == []


def _sql_uses(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                if name.split(".")[0] in SQL_MODULES:
                    yield f"line {node.lineno}: imports {name}"
        elif isinstance(node, ast.Attribute) and node.attr == "cursor":
            yield f"line {node.lineno}: uses a cursor"
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL_TEXT.search(node.value)
        ):
            yield f"line {node.lineno}: SQL text {node.value[:60]!r}"


def test_the_sql_check_catches_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import sqlite3\nfrom sqlalchemy import text\n"
        "def f(conn):\n    cur = conn.cursor()\n"
        "    return 'SELECT id FROM tasks WHERE x = 1', \"UPDATE agents SET a=1\"\n"
        "NOT_SQL = 'select a provider from the table below'\n"
    )
    assert len(list(_sql_uses(sample))) == 5


def test_no_sql_outside_store() -> None:
    found = [
        f"{module_name(path)} {use}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "store" not in path.relative_to(PACKAGE).parts[:1]
        for use in _sql_uses(path)
    ]
    assert found == []


# import_module with a computed name cannot be followed by the walk above; each one
# must load only modules of its own package or third-party SDKs.
COMPUTED_IMPORTS = {
    "cfn.cli.main": "the command modules, cfn.cli.* (the lazy command table COMMANDS)",
    "cfn.store": "its own submodules, on first use of a name (store/__init__.py __getattr__)",
    "cfn.mcp.serve": "the four servers' modules, cfn.mcp.servers.* (routing.SERVERS)",
}


def test_computed_imports_are_the_known_ones() -> None:
    found = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and not isinstance(node.args[0], ast.Constant)
            ):
                found.add(name)
    assert found == set(COMPUTED_IMPORTS)


def test_no_asyncio_wait_for() -> None:
    """``asyncio.timeout`` only: on Python 3.11 ``asyncio.wait_for`` drops a cancellation
    that arrives as the awaited thing finishes, and a stopped task runs on."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "wait_for"
                and isinstance(node.value, ast.Name)
                and node.value.id == "asyncio"
            ):
                found.append(f"{name}:{node.lineno}")
    assert found == []
