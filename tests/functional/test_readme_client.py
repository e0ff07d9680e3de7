"""The README's Python client example, run as it is printed there against a site (the
fake driver): what a program written from the README does."""

from __future__ import annotations

from pathlib import Path

from tests.functional.doc_examples import marked_block, run_example
from tests.functional.harness import WS, Site
from workspace.v1 import workspaces_pb2


def test_the_readme_python_example_runs(site: Site, tmp_path: Path) -> None:
    site.stubs.network()
    site.stubs.import_image("tiny")
    site.add_agent("node1")
    code = marked_block("README.md", "test_readme_client.py")
    out = run_example(code, tmp_path, {"WS_SERVICE": site.cfg.listen})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "beta node1 ['10.213.0.2']"
    assert "beta WORKSPACE_STATE_RUNNING" in lines
    assert lines[-1] == "refused: image 'no-such-image' not found; `ws image list` shows them"
    # One workspace came of the two creates, and the example destroyed it.
    every = workspaces_pb2.ListWorkspacesRequest(include_terminated=True)
    states = [w.state for w in site.stubs.ws.ListWorkspaces(every).workspaces]
    assert states == [WS.WORKSPACE_STATE_TERMINATED]
