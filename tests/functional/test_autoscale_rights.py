"""An autoscaler grows a cluster with the rights of whoever turned it on, and only while
they have them: after their certificate is revoked, or they are taken out of the
cluster's project, its grows are refused (the decision and a ``workspace.refused`` site
event say why) until someone with rights turns it on again."""

from __future__ import annotations

from pathlib import Path

from tests.functional.harness import SitePki, TlsSite
from tests.functional.test_autoscale import IMG, script
from tests.functional.test_site_events import events as site_events
from workspace.ops import autoscale
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
)


def _site(tmp_path: Path) -> tuple[TlsSite, Path]:
    vetted = tmp_path / "vetted"
    vetted.mkdir()
    want = tmp_path / "want"
    want.write_text("1\n")
    sig = script(vetted, f"cat {want}", name="want")
    site = TlsSite(
        tmp_path / "site",
        SitePki(tmp_path / "pki"),
        autoscale_commands_dir=str(vetted),
        autoscale_interval_s=3600,
        autoscale_cooldown_s=0,
    )
    site.stubs.network()
    site.stubs.import_image(IMG, context="nocloud")
    site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name=IMG, public=True))
    site.add_agent("node1")
    return site, sig


def _cluster(stub: clusters_pb2_grpc.ClustersStub, project: str = "") -> None:
    stub.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="auto",
            project=project,
            members=[clusters_pb2.ClusterMember(role="worker", image=IMG, memory_mib=128)],
        )
    )


def _turn_on(stub: clusters_pb2_grpc.ClustersStub, sig: Path, ref: str = "auto") -> None:
    """``ref``: OWNER/NAME for someone else's cluster (a bare name is the caller's own)."""
    stub.SetAutoscale(
        clusters_pb2.SetAutoscaleRequest(
            id=ref, role="worker", min=0, max=4, signal=f"command:{sig}"
        )
    )


def _evaluate(site: TlsSite) -> autoscale.Outcome:
    assert site.service is not None
    (out,) = autoscale.evaluate(site.service.env, revoked=site.service.auth.revoked())
    return out


def _workers(stub: clusters_pb2_grpc.ClustersStub) -> int:
    return len(stub.GetCluster(clusters_pb2.ClusterRef(id="auto")).members)


def _rights_refusals(site: TlsSite) -> list[str]:
    return [
        e.reason for e in site_events(site) if e.kind == "workspace.refused" and e.state == "rights"
    ]


def test_a_revoked_setter_grows_nothing_until_turned_on_again(tmp_path: Path) -> None:
    site, sig = _site(tmp_path)
    try:
        mallory = clusters_pb2_grpc.ClustersStub(site.identity("mallory").channel)
        _cluster(mallory)
        _turn_on(mallory, sig)
        (tmp_path / "want").write_text("2\n")
        assert _evaluate(site).decision.action == "grew"
        site.revoke("mallory")
        (tmp_path / "want").write_text("3\n")
        d = _evaluate(site).decision
        assert d.action == "failed", d.detail
        revoked = "the certificate of user:mallory, who turned the autoscaler on, has been revoked"
        assert revoked in d.detail
        admin = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
        assert _workers(admin) == 2
        (reason,) = _rights_refusals(site)
        assert reason.startswith("autoscale of cluster auto, role worker: the certificate of")
        assert _evaluate(site).decision.action == "failed"
        assert len(_rights_refusals(site)) == 1  # the same refusal is no news
        # Someone with rights (here the admin) turns it on again: it grows.
        _turn_on(admin, sig, "mallory/auto")
        assert _evaluate(site).decision.action == "grew"
        assert _workers(admin) == 3
    finally:
        site.close()


def test_a_setter_taken_out_of_the_project_grows_nothing(tmp_path: Path) -> None:
    site, sig = _site(tmp_path)
    try:
        projects = projects_pb2_grpc.ProjectsStub(site.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        for user in ("alice", "bob"):
            projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user=user))
        alice = clusters_pb2_grpc.ClustersStub(site.identity("alice").channel)
        bob = clusters_pb2_grpc.ClustersStub(site.identity("bob").channel)
        _cluster(alice, project="physics")
        _turn_on(bob, sig, "alice/auto")  # a member of the cluster's project
        (tmp_path / "want").write_text("2\n")
        assert _evaluate(site).decision.action == "grew"
        projects.RemoveProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="bob"))
        (tmp_path / "want").write_text("3\n")
        d = _evaluate(site).decision
        assert d.action == "failed"
        assert "user:bob, who turned the autoscaler on, may no longer act on cluster auto" in (
            d.detail
        )
        assert _workers(alice) == 2
        # The owner turns it on again, and then leaves the project herself: the new
        # members would be charged to a project she no longer belongs to.
        _turn_on(alice, sig)
        assert _evaluate(site).decision.action == "grew"
        projects.RemoveProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="alice"))
        (tmp_path / "want").write_text("4\n")
        d = _evaluate(site).decision
        assert d.action == "failed"
        assert "user:alice, who turned the autoscaler on, is no longer a member of project " in (
            d.detail
        )
        assert len(_rights_refusals(site)) == 2
        # Shrinking needs no rights it could misuse: it still follows the signal.
        (tmp_path / "want").write_text("1\n")
        assert _evaluate(site).decision.action == "shrank"
    finally:
        site.close()
