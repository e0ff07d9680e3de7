"""House rules of the source tree, read from the code with ``ast``:

- no import cycle among the project's modules (imports at module level and in functions);
- no ``from x import _name`` taking a private name of another module;
- no ``obj._name`` reaching into a private member that another module defines (``self``,
  ``cls`` and ``super()`` are the owner's own business);
- no module over 800 lines.

Generated gRPC stubs (``*_pb2*``) are left out.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workspace", "agent", "images")
MAX_LINES = 800

# Private-looking names that are public API: namedtuple methods, CPython hooks.
ALLOWED_PRIVATE = frozenset(
    {"_replace", "_asdict", "_fields", "_field_defaults", "_make", "_getframe", "_exit"}
)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    source: str
    tree: ast.Module
    imports: set[str] = field(default_factory=set)
    defines: set[str] = field(default_factory=set)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: Module, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` in ``module``."""
    if level == 0:
        return target or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def private_definitions(tree: ast.Module) -> set[str]:
    """Private names a module defines: at module level, in class bodies, and as
    ``self._x = ...`` attributes."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        out.add(sub.id)
                    elif isinstance(sub, ast.Attribute):
                        out.add(sub.attr)
    return {name for name in out if is_private(name)}


@cache
def project() -> dict[str, Module]:
    return collect(ROOT, PACKAGES)


def collect(root: Path, packages: tuple[str, ...]) -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            source = path.read_text()
            tree = ast.parse(source, filename=str(path))
            name = module_name(root, path)
            mod = Module(name, path, path.name == "__init__.py", source, tree)
            mod.defines = private_definitions(tree)
            mods[mod.name] = mod
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, node.level, node.module)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            mod.imports |= {t for t in targets if t in mods and t != mod.name}
    return mods


def rel(mod: Module) -> str:
    return str(mod.path.relative_to(ROOT)) if mod.path.is_relative_to(ROOT) else str(mod.path)


# -- import cycles --------------------------------------------------------------------


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; groups of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def shortest_cycle(graph: dict[str, set[str]], group: list[str], start: str) -> list[str]:
    members = set(group)
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return group


def import_cycles(mods: dict[str, Module]) -> list[str]:
    graph = {name: mod.imports for name, mod in mods.items()}
    found = []
    for group in strongly_connected(graph):
        # A package importing its own submodules (re-exports) is not a cycle of design.
        real = [m for m in group if not any(o.startswith(m + ".") for o in group)]
        if len(real) < 2:
            continue
        cycle = shortest_cycle(graph, group, real[0])
        found.append(f"{' -> '.join(cycle)}  (group: {', '.join(group)})")
    return found


# -- private names --------------------------------------------------------------------


def private_imports(mods: dict[str, Module]) -> list[str]:
    found = []
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = resolve(mod, node.level, node.module)
            if base not in mods or base == mod.name:
                continue
            own_package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
            for alias in node.names:
                if not is_private(alias.name):
                    continue
                if base == own_package and f"{base}.{alias.name}" in mods:
                    continue  # a package's own private submodule
                found.append(f"{rel(mod)}:{node.lineno}: from {base} import {alias.name}")
    return found


def foreign_private_uses(mods: dict[str, Module]) -> list[str]:
    defined_in: dict[str, set[str]] = {}
    for mod in mods.values():
        for name in mod.defines:
            defined_in.setdefault(name, set()).add(mod.name)
    found = []
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.Attribute) or not is_private(node.attr):
                continue
            if node.attr in ALLOWED_PRIVATE or node.attr in mod.defines:
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (
                isinstance(owner, ast.Call)
                and isinstance(owner.func, ast.Name)
                and owner.func.id == "super"
            ):
                continue
            others = defined_in.get(node.attr, set()) - {mod.name}
            if others:
                found.append(
                    f"{rel(mod)}:{node.lineno}: {ast.unparse(node)}"
                    f" (defined in {', '.join(sorted(others))})"
                )
    return found


def long_modules(mods: dict[str, Module]) -> list[str]:
    return [
        f"{rel(mod)}: {mod.source.count(chr(10))} lines"
        for mod in mods.values()
        if mod.source.count("\n") > MAX_LINES
    ]


# -- the rules ------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = import_cycles(project())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    found = private_imports(project())
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_no_module_reaches_into_another_modules_private_members() -> None:
    found = foreign_private_uses(project())
    assert not found, "private members of another module used:\n" + "\n".join(found)


def test_no_module_over_the_house_limit() -> None:
    found = long_modules(project())
    assert not found, f"modules over {MAX_LINES} lines:\n" + "\n".join(found)


# -- the checks themselves ------------------------------------------------------------


def test_the_checks_see_the_tree() -> None:
    mods = project()
    assert {"workspace.store.db", "agent", "images"} <= set(mods)
    assert not any("_pb2" in name for name in mods)
    assert "workspace.store.migrations" in mods["workspace.store.db"].imports


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from p import a\n")  # re-export: not a cycle
    (pkg / "a.py").write_text(
        "_SECRET = 1\n"
        "class A:\n"
        "    def _own(self, other: 'A') -> int:\n"
        "        return other._own(self) + A._SECRET2\n"  # its own class: fine
        "    _SECRET2 = 2\n"
        "def f() -> None:\n"
        "    from p.sub import b\n"  # function-level import: counts
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "import p.a\n"
        "from ..a import _SECRET\n"
        "from . import _impl\n"  # its package's own private module: fine
        "x = p.a._SECRET + p.a.A()._own(None)\n"
        "t = (1, 2)._replace\n"
    )
    (pkg / "sub" / "_impl.py").write_text("\n" * (MAX_LINES + 1))
    (pkg / "sub" / "big_pb2.py").write_text("\n" * (MAX_LINES + 1))
    mods = collect(tmp_path, ("p",))
    assert import_cycles(mods) == ["p.a -> p.sub.b -> p.a  (group: p.a, p.sub.b)"]
    assert private_imports(mods) == [f"{pkg}/sub/b.py:2: from p.a import _SECRET"]
    assert foreign_private_uses(mods) == [
        f"{pkg}/sub/b.py:4: p.a._SECRET (defined in p.a)",
        f"{pkg}/sub/b.py:4: p.a.A()._own (defined in p.a)",
    ]
    assert long_modules(mods) == [f"{pkg}/sub/_impl.py: {MAX_LINES + 1} lines"]


def test_cycle_detection_reports_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    groups = strongly_connected(graph)
    assert groups == [["a", "b", "c"]]
    assert shortest_cycle(graph, groups[0], "a") == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_private_definitions_are_found() -> None:
    tree = ast.parse(
        "_X = 1\n"
        "def _f(): pass\n"
        "class C:\n"
        "    _y: int = 0\n"
        "    def _m(self): self._z = 1\n"
        "    def __init__(self): self.__dunder__ = 1\n"
    )
    assert private_definitions(tree) == {"_X", "_f", "_y", "_m", "_z"}
