"""The client and the CLIs stand apart from the server: importing them loads nothing
of the service, the store or SQLAlchemy, and no import in them (function-local ones
included) leads there."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_MODULES = ("workspace.client", "workspace.client_images", "workspace.cli")
SERVER_PREFIXES = ("workspace.service", "workspace.store", "sqlalchemy", "alembic")


def _is_server(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in SERVER_PREFIXES)


def test_importing_the_clis_loads_no_server_module() -> None:
    code = (
        "import json, sys\n"
        "import workspace.cli.admin, workspace.cli.ws\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded = json.loads(out)
    assert "workspace.cli.ws" in loaded and "workspace.client" in loaded
    assert [m for m in loaded if _is_server(m)] == []


def _path_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, wherever the statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_no_import_in_the_client_leads_to_the_server() -> None:
    """Follows every import statement (function-local ones too, which the test above
    cannot see) from the client and the CLIs through the project's own modules."""
    start = [m for m in CLIENT_MODULES if _path_of(m) is not None]
    start += [f"workspace.cli.{p.stem}" for p in (ROOT / "workspace/cli").glob("*.py")]
    seen: dict[str, str] = {m: "" for m in start}
    todo = list(start)
    while todo:
        module = todo.pop()
        path = _path_of(module)
        if path is None:
            continue
        for name in _imports(module, path):
            if name in seen:
                continue
            seen[name] = module
            if _path_of(name) is not None:
                todo.append(name)
    bad = {name: via for name, via in seen.items() if _is_server(name)}
    assert bad == {}, f"imported by: {bad}"
