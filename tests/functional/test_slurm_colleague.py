"""ws-slurm beside a colleague in its project, over mutual TLS: the colleague's workspaces
named like Slurm nodes (a lone node's name with a ``ws-slurm-`` request id, a job's
member ``slurm-<job>-<node>-0``: another batch user of the project running ws-slurm for
its own Slurm cluster, say) are never taken for ws-slurm's own. Resume makes the node's
own workspace, and neither suspend nor the cleanup of powered-down nodes destroys the
colleague's. Until ``mine``, ws-slurm claimed whatever it saw named so: resume said
"already has workspace" and made nothing, suspend destroyed the colleague's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import WS, SitePki, Stubs, TlsSite, wait_for
from tests.functional.test_slurm import MAPPING, RecordingScontrol
from workspace.slurm import cli
from workspace.slurm.resumefile import JOB_ENV
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    s = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        s.stubs.network()
        s.stubs.import_image("slurm", context="nocloud")
        s.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="slurm", public=True))
        s.add_agent("node1", cpus=8, memory_mib=8192)
        projects = projects_pb2_grpc.ProjectsStub(s.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="hpc"))
        for user in ("slurm", "carol"):
            projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="hpc", user=user))
        yield s
    finally:
        s.close()


def _colleagues(carol: Stubs) -> list[str]:
    """carol's workspace c1 (a ws-slurm request id) and job 42's member for node c2."""
    lone = carol.create(
        name="c1", image="slurm", cpus=1, memory_mib=256, request_id="ws-slurm-carol-0"
    )
    req = clusters_pb2.CreateClusterRequest(name="slurm-42", request_id="ws-slurm-carol-42")
    req.members.add(role="c2", image="slurm", cpus=1, memory_mib=256, count=1)
    cluster = clusters_pb2_grpc.ClustersStub(carol.channel).CreateCluster(req)
    return [lone.id, cluster.members[0].id]


def test_a_colleagues_workspaces_named_like_nodes_survive_resume_suspend_and_cleanup(
    site: TlsSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = site.identity("carol")
    theirs = _colleagues(carol)
    for name in ("SLURM_JOB_ID", "SLURM_RESUME_FILE", *JOB_ENV):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "nodes.toml").write_text(MAPPING)
    config = tmp_path / "slurm.toml"
    log = tmp_path / "ws-slurm.log"
    config.write_text(
        f'service = "{site.address}"\nidentity = "{site.pki.user("slurm")}"\n'
        f'controller = "10.213.0.1"\nproject = "hpc"\nmapping_file = "nodes.toml"\n'
        f'log_file = "{log}"\nlock_file = "{tmp_path / "nodes.lock"}"\n'
    )
    scontrol = RecordingScontrol()

    def slurm(*argv: str) -> int:
        return cli.main(["--config", str(config), *argv], None, scontrol)

    def live() -> list[common_pb2.Workspace]:
        every = workspaces_pb2.ListWorkspacesRequest(all_users=True)
        listed = site.stubs.ws.ListWorkspaces(every).workspaces
        return [w for w in listed if w.desired_state != common_pb2.DESIRED_STATE_TERMINATED]

    def owned() -> list[tuple[str, str]]:
        return sorted((w.name, w.owner) for w in live())

    # Node c1 resumed: ws-slurm makes its own c1 beside carol's.
    assert slurm("resume", "c1") == 0, log.read_text()
    assert owned() == [("c1", "carol"), ("c1", "slurm"), ("slurm-42-c2-0", "carol")]
    assert "already has workspace" not in log.read_text()
    (own,) = [w for w in live() if w.owner == "slurm"]
    assert scontrol.addresses == {"c1": own.nics[0].ip}  # its address, not carol's
    # Slurm says c2 is powered down (carol's member is named like its node), c1 is up:
    # a run's cleanup leaves carol's alone; suspend of c1 and c2 destroys only ws-slurm's.
    scontrol.node_states = {"c1": "ALLOCATED+CLOUD", "c2": "IDLE+CLOUD+POWERED_DOWN"}
    assert slurm("suspend", "c5") == 0
    assert slurm("suspend", "c[1-2]") == 0, log.read_text()
    wait_for(
        lambda: owned() == [("c1", "carol"), ("slurm-42-c2-0", "carol")],
        what="only ws-slurm's c1 to go",
    )
    # resume-fail of c2 finds no workspace of its own there, and says so.
    assert slurm("resume-fail", "c2") == 0
    assert scontrol.down["c2"] == "ws: resume made no workspace for it (see the ws-slurm log)"
    for ref in theirs:
        got = site.stubs.get(ref)
        assert got.desired_state == common_pb2.DESIRED_STATE_RUNNING, got
        assert got.state != WS.WORKSPACE_STATE_TERMINATED
