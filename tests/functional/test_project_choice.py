"""Which project a new object is charged to (docs/design/usage.md): a user of several
projects must name one (else nothing would count it), and ``require_project`` refuses a
user of none. Over mutual TLS with real user certificates, for every kind of object."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest

from tests.functional.harness import SitePki, Stubs, TlsSite
from tests.functional.test_projects import make, projects, refused
from workspace import rpc
from workspace.cli import admin, ws
from workspace.client import Client
from workspace.config import TlsConfig
from workspace.identity import Identity, Kind
from workspace.v1 import (
    clusters_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> SitePki:
    return SitePki(tmp_path_factory.mktemp("pki"))


def tls_site(tmp_path: Path, site_pki: SitePki, **kw: object) -> TlsSite:
    site = TlsSite(tmp_path / "site", site_pki, **kw)
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1")
    return site


@pytest.fixture
def site(tmp_path: Path, site_pki: SitePki) -> Iterator[TlsSite]:
    s = tls_site(tmp_path, site_pki)
    try:
        yield s
    finally:
        s.close()


def run_as(
    module: ModuleType,
    site: TlsSite,
    tls: TlsConfig,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
) -> tuple[int, str, str]:
    """A CLI's main (``ws`` or ``ws-admin``) as the identity ``tls`` connects with."""
    code = module.main(list(argv), connect=lambda _s: Client(site.address, tls=tls))
    out, err = capsys.readouterr()
    return code, out, err


def add_user(site: TlsSite, project: str, user: str) -> None:
    projects(site).AddProjectUser(projects_pb2.ProjectUserRequest(project=project, user=user))


def all_names(site: TlsSite) -> set[str]:
    listed = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(all_users=True))
    return {w.name for w in listed.workspaces}


def import_req(carol: Stubs, name: str, project: str = "") -> images_pb2.ImportImageRequest:
    digest = carol.upload(b"\7" * 4096)
    return images_pb2.ImportImageRequest(
        name=name,
        project=project,
        partitions=[common_pb2.Partition(name="root", digest=digest, format="raw")],
    )


def cluster_req(project: str = "") -> clusters_pb2.CreateClusterRequest:
    return clusters_pb2.CreateClusterRequest(
        name="c",
        project=project,
        members=[clusters_pb2.ClusterMember(role="w", image="img", count=2, memory_mib=64)],
    )


def test_a_user_of_two_projects_must_name_one_for_every_kind_of_object(site: TlsSite) -> None:
    make(site, name="chem", instances=1)
    make(site, name="physics")
    # Made while carol was in no project (a certificate naming none): outside any.
    legacy = site.identity("carol").create(name="legacy")
    stubs = site.identity("carol", projects=("chem",))
    assert legacy.project == ""
    add_user(site, "physics", "carol")
    said = "you are a member of chem, physics: say which with --project"
    for what, call in [
        ("create", lambda: stubs.create(name="noproj", cpus=4)),
        ("cluster", lambda: stubs.clusters.CreateCluster(cluster_req())),
        ("import", lambda: stubs.images.ImportImage(import_req(stubs, "mine:1"))),
        (
            "save",
            lambda: stubs.images.SaveImage(
                images_pb2.SaveImageRequest(workspace="legacy", image="mine:2")
            ),
        ),
    ]:
        why = refused(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert why == said, what
    # Nothing was made: no workspace, cluster or image, and the save did not begin.
    assert all_names(site) == {"legacy"}
    assert not stubs.clusters.ListClusters(clusters_pb2.ListClustersRequest()).clusters
    shown = {i.name for i in stubs.images.ListImages(images_pb2.ListImagesRequest()).images}
    assert shown == {"img"}
    assert stubs.get("legacy").saving_as == ""
    # Naming one charges it: chem's instances quota counts, and refuses the next.
    assert stubs.create(name="named", project="physics").project == "physics"
    assert stubs.create(name="chem1", project="chem").project == "chem"
    why = refused(
        lambda: stubs.create(name="chem2", project="chem"), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "instances quota of project chem" in why
    made = stubs.images.ImportImage(import_req(stubs, "mine:1", project="physics"))
    assert made.project == "physics"


def test_the_cli_says_which_projects(
    site: TlsSite, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    make(site, name="chem")
    make(site, name="physics")
    add_user(site, "physics", "carol")
    tls = site.pki.tls(site.pki.user("carol", projects=("chem",)))

    def as_carol(*argv: str) -> tuple[int, str, str]:
        return run_as(ws, site, tls, capsys, *argv)

    code, _, err = as_carol("create", "--image", "img", "--name", "noproj", "--cpus", "4")
    assert code != 0 and "you are a member of chem, physics: say which with --project" in err
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\1" * 8192)
    code, _, err = as_carol("image", "push", "env:1", str(disk))
    assert code != 0 and "say which with --project" in err
    # ... before its bytes were sent: carol holds no blob of it (HasBlobs says missing).
    digest = "sha256:" + hashlib.sha256(disk.read_bytes()).hexdigest()
    carol = Client(site.address, tls)
    try:
        assert carol.has_blobs([digest]) == [digest]
    finally:
        carol.close()
    assert all_names(site) == set()
    code, _, err = as_carol("create", "--image", "img", "--name", "p", "--project", "physics")
    assert code == 0, err


def test_require_project_refuses_a_user_of_no_project(tmp_path: Path, site_pki: SitePki) -> None:
    site = tls_site(tmp_path, site_pki, require_project=True)
    try:
        dave = site.identity("dave")
        said = "you belong to no project; ask an admin to add you: ws-admin project add-user P dave"
        for what, call in [
            ("create", lambda: dave.create(name="x")),
            ("cluster", lambda: dave.clusters.CreateCluster(cluster_req())),
            ("import", lambda: dave.images.ImportImage(import_req(dave, "d:1"))),
        ]:
            assert refused(call, grpc.StatusCode.FAILED_PRECONDITION) == said, what
        assert all_names(site) == set()
        # An admin outside any project still may (a site's own workspaces and images).
        assert site.stubs.create(name="site-own").project == ""
        # Once in a project, the user's objects are charged to it.
        make(site, name="geo")
        add_user(site, "geo", "dave")
        assert dave.create(name="x").project == "geo"
    finally:
        site.close()


def test_without_require_project_a_user_of_no_project_is_as_before(site: TlsSite) -> None:
    erin = site.identity("erin")
    assert erin.create(name="free").project == ""


def test_remove_user_says_what_stays_in_the_project(
    site: TlsSite, capsys: pytest.CaptureFixture[str]
) -> None:
    make(site, name="chem")
    add_user(site, "chem", "carol")
    carol = site.identity("carol")
    carol.create(name="a")
    carol.create(name="b")
    code, out, err = run_as(
        admin, site, site.client_tls(), capsys, "project", "remove-user", "chem", "carol"
    )
    assert code == 0, err
    assert out.strip() == (
        "user carol is no longer a recorded member of chem; 2 live workspace(s) of theirs "
        "stay in chem and count against its quota until destroyed (`ws list --all-users`)"
    )
    # Nothing left: it says only the removal.
    add_user(site, "chem", "frank")
    code, out, _ = run_as(
        admin, site, site.client_tls(), capsys, "project", "remove-user", "chem", "frank"
    )
    assert out.strip() == "user frank is no longer a recorded member of chem"


def test_a_certificate_of_the_deleted_project_joins_not_the_one_made_again(
    site: TlsSite, tmp_path: Path
) -> None:
    """The admin deleted physics and made it again to start afresh; bob's certificate,
    issued for the old physics, still made him a member of the new one."""
    make(site, name="physics")
    ca = site.pki.ca

    def bob_issued_now(out: str) -> Stubs:
        d = tmp_path / out
        ca.issue(Identity(Kind.USER, "bob", projects=("physics",)), d)
        stubs = Stubs(rpc.channel(site.address, site.pki.tls(d)))
        site.channels.append(stubs.channel)
        return stubs

    def quota_of(bob: Stubs) -> list[str]:
        got = projects_pb2_grpc.ProjectsStub(bob.channel).GetQuota(projects_pb2.GetQuotaRequest())
        return [q.project for q in got.projects]

    old = bob_issued_now("old")
    assert quota_of(old) == ["physics"]
    # Certificates carry whole seconds: the deletion is in a later second than the issue.
    time.sleep(1.05 - time.time() % 1)
    projects(site).DeleteProject(projects_pb2.DeleteProjectRequest(name="physics"))
    make(site, name="physics")
    why = refused(lambda: old.create(name="again"), grpc.StatusCode.PERMISSION_DENIED)
    assert "your certificate names project 'physics', but it was issued before" in why
    assert "Get a new certificate" in why
    why = refused(
        lambda: old.create(name="again", project="physics"), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "Get a new certificate" in why
    assert quota_of(old) == []
    # A certificate issued now makes bob a member of the new physics.
    new = bob_issued_now("new")
    assert quota_of(new) == ["physics"]
    assert new.create(name="after").project == "physics"
    assert "again" not in all_names(site)
