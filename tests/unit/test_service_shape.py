"""The service's middle floor keeps its shape: operations, the store and the domain never
import protobuf stubs; no import cycles among the service's packages (function-local
imports count); no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "workspace/ops",
    "workspace/edge",
    "workspace/store",
    "workspace/codec",
    "workspace/domain",
    "workspace/scheduler",
    "workspace/service",
    "workspace/ipam",
]
NO_PROTOS = ["workspace/ops", "workspace/store", "workspace/domain", "workspace/scheduler"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(packages: list[str]) -> dict[str, Path]:
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement, at any depth."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_no_protobuf_below_the_edge() -> None:
    bad = [
        f"{name} imports {mod}"
        for name, path in modules(NO_PROTOS).items()
        for mod, names in imports(path)
        if "_pb2" in mod or any("_pb2" in n for n in names)
    ]
    assert bad == []


def test_no_private_names_across_modules() -> None:
    bad = [
        f"{name} imports {mod}.{n}"
        for name, path in modules(PACKAGES).items()
        for mod, names in imports(path)
        for n in names
        if n.startswith("_") and not n.startswith("__") and mod != name
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    mods = modules(PACKAGES)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for mod, names in imports(path):
            for target in [f"{mod}.{n}" for n in names] + [mod]:
                if target in mods and target != name:
                    deps.add(target)
                    break
        graph[name] = deps
    # A package's __init__ that re-exports its modules is not a cycle with them.
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d) :]
                if not any(d == c or c.startswith(d + ".") for c in cycle[1:]):
                    cycles.append(cycle)
            elif d not in seen:
                visit(d)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    assert cycles == []


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package: str) -> None:
    long = [
        f"{name}: {len(path.read_text().splitlines())} lines"
        for name, path in modules([package]).items()
        if len(path.read_text().splitlines()) > 800 and "_pb2" not in name
    ]
    assert long == []


def test_no_reaching_into_other_objects() -> None:
    """``obj._x`` only on ``self`` or ``cls``: other objects are used through their API."""
    bad = []
    for name, path in modules(PACKAGES).items():
        if "_pb2" in name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                bad.append(f"{name}:{node.lineno}: .{node.attr}")
    assert bad == []
