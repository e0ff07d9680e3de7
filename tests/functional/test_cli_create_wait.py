"""`ws create --wait` and `ws cluster create --wait` whose wait runs out, against an
in-process service and fake-driver agent through ws.main: the object was made, so it is
printed on stdout as it is (a script learns its id), the error on stderr, exit 1; and
`--wait-timeout` is accepted beside `--timeout`."""

from __future__ import annotations

import json

import pytest

from tests.functional.harness import Site
from workspace.cli import ws
from workspace.client import Client
from workspace.v1 import admin_pb2, clusters_pb2, workspaces_pb2


def run(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ws.main(list(argv), connect=lambda _s: Client(site.address))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def full_site(ready_site: Site) -> Site:
    """No node takes new work: a create that may wait for capacity stays PENDING."""
    ready_site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="node1"))
    return ready_site


@pytest.mark.parametrize("flag", ["--timeout", "--wait-timeout"])
def test_a_create_whose_wait_runs_out_prints_the_workspace(
    full_site: Site, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    name = f"late{flag.count('-')}"
    argv = ["create", "--image", "img", "--wait-for-capacity", "60", "--wait", flag, "0.01"]
    code, out, err = run(full_site, capsys, "-o", "json", *argv, "--name", name)
    assert code == 1
    assert "timed out after 0 s waiting for workspace" in err
    shown = json.loads(out)
    listed = full_site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    assert (shown["id"], shown["name"]) == next(
        (w.id, w.name) for w in listed.workspaces if w.name == name
    )
    assert shown["state"] == "PENDING"

    code, out, err = run(full_site, capsys, *argv, "--name", f"{name}t")
    assert code == 1 and "timed out" in err
    assert f"{name}t" in out and "PENDING" in out  # the usual text of `ws create`


def test_a_cluster_create_whose_wait_runs_out_prints_the_cluster(
    full_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        full_site, capsys,
        "-o", "json", "cluster", "create", "slow", "--member", "w=img,count=2",
        "--wait-for-capacity", "60", "--wait", "--wait-timeout", "0.01",
    )  # fmt: skip
    assert code == 1 and "timed out after 0 s waiting for cluster" in err
    shown = json.loads(out)
    listed = full_site.stubs.clusters.ListClusters(clusters_pb2.ListClustersRequest()).clusters
    assert [(c.id, c.name) for c in listed] == [(shown["id"], "slow")]
