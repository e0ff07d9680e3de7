"""The README's Python client example, run as it is printed there against a site (the
fake driver): what a program written from the README does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.functional.harness import ROOT, WS, Site
from workspace.v1 import workspaces_pb2


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"test_readme_client\.py -->\n```python\n(.*?)```", text, re.S)
    assert m, "README has no Python client example marked for this test"
    return m.group(1)


def test_the_readme_python_example_runs(site: Site, tmp_path: Path) -> None:
    site.stubs.network()
    site.stubs.import_image("tiny")
    site.add_agent("node1")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = dict(os.environ, PYTHONPATH=str(ROOT), WS_SERVICE=site.cfg.listen, HOME=str(tmp_path))
    env.pop("WS_IDENTITY", None)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "beta node1 ['10.213.0.2']"
    assert "beta WORKSPACE_STATE_RUNNING" in lines
    assert lines[-1] == "refused: image 'no-such-image' not found; `ws image list` shows them"
    # One workspace came of the two creates, and the example destroyed it.
    every = workspaces_pb2.ListWorkspacesRequest(include_terminated=True)
    states = [w.state for w in site.stubs.ws.ListWorkspaces(every).workspaces]
    assert states == [WS.WORKSPACE_STATE_TERMINATED]
