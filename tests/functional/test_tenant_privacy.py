"""What one tenant's refusals say of another's objects: nothing by name (docs/design/ops.md,
"Who may do what"). Over mutual TLS with real user certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import SitePki, TlsSite
from tests.functional.test_projects import make, projects, refused
from workspace.ops import pages
from workspace.v1 import (
    clusters_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    usage_pb2,
    workspaces_pb2,
)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    s = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        yield s
    finally:
        s.close()


def with_node(site: TlsSite, *projects: str) -> None:
    """The site gets its network, a node and the projects named."""
    site.stubs.network()
    site.add_agent("node1")
    for name in projects:
        make(site, name=name)


def test_deleting_an_image_in_use_names_only_the_workspaces_the_caller_sees(
    site: TlsSite,
) -> None:
    with_node(site, "phys", "chem")
    alice = site.identity("alice", projects=("phys",))
    bob = site.identity("bob", projects=("phys",))
    carol = site.identity("carol", projects=("chem",))
    digest = alice.upload(b"\5" * 65536)
    alice.images.ImportImage(
        images_pb2.ImportImageRequest(
            name="envA:1",
            partitions=[
                common_pb2.Partition(
                    name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                )
            ],
        )
    )
    site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="envA:1", public=True))
    a1 = alice.create(name="a1", image="envA:1")
    b1 = bob.create(name="b1", image="envA:1")  # alice's project: she sees it
    carol.create(name="secret-chem-project", image="envA:1")
    why = refused(
        lambda: alice.images.DeleteImage(images_pb2.GetImageRequest(name="envA:1")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert why == (
        f"image envA:1 is in use by 3 live workspace(s): alice/a1 ({a1.id}), bob/b1 "
        f"({b1.id}) and 1 other user's workspace; destroy them first (theirs by their "
        "owners or an admin)"
    )
    assert "carol" not in why and "secret" not in why
    # An admin sees every one of them.
    why = refused(
        lambda: site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name="envA:1")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "carol/secret-chem-project" in why and "other user" not in why


def _import(stubs: object, name: str, data: bytes) -> images_pb2.Image:
    digest = stubs.upload(data)  # type: ignore[attr-defined]
    req = images_pb2.ImportImageRequest(
        name=name,
        partitions=[
            common_pb2.Partition(
                name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
            )
        ],
    )
    image: images_pb2.Image = stubs.images.ImportImage(req)  # type: ignore[attr-defined]
    return image


def test_an_image_name_belongs_to_the_project_holding_its_versions(site: TlsSite) -> None:
    """Another project can take neither a new version of a NAME nor, while other versions
    of it exist, a deleted one; the NAME is free again once no version is left."""
    make(site, name="physics")
    make(site, name="chem")
    alice = site.identity("alice", projects=("physics",))
    dave = site.identity("dave", projects=("physics",))
    bob = site.identity("bob", projects=("chem",))
    _import(alice, "phys-base:1", b"\1" * 65536)
    _import(alice, "phys-base:2", b"\2" * 65536)
    why = refused(
        lambda: _import(bob, "phys-base:3", b"\3" * 65536), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "already exists" in why and "physics" not in why and "alice" not in why
    _import(dave, "phys-base:3", b"\3" * 65536)  # the same project: its name
    alice.images.DeleteImage(images_pb2.GetImageRequest(name="phys-base:1"))
    refused(lambda: _import(bob, "phys-base:1", b"\4" * 65536), grpc.StatusCode.ALREADY_EXISTS)
    refused(lambda: _import(bob, "phys-base", b"\4" * 65536), grpc.StatusCode.ALREADY_EXISTS)
    for v in ("2", "3"):
        site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name=f"phys-base:{v}"))
    assert _import(bob, "phys-base:1", b"\4" * 65536).project == "chem"


def test_a_clusters_user_data_is_shown_to_its_owner_and_admins_only(site: TlsSite) -> None:
    """A role's user-data (tokens, passwords in a cloud-config) was in every project
    member's `ws cluster show -o json`, though they may not read the owner's console
    (docs/design/guests.md) and a workspace's user-data is shown to no one."""
    with_node(site, "phys")
    alice = site.identity("alice", projects=("phys",))
    bob = site.identity("bob", projects=("phys",))
    admin = site.identity("root", admin=True)
    site.stubs.import_image("img", context="nocloud")
    site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
    secret = b"#cloud-config\nwrite_files:\n- path: /etc/token\n  content: s3cret\n"
    made = alice.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="mpi",
            members=[clusters_pb2.ClusterMember(role="w", image="img", user_data=secret)],
        )
    )
    assert made.spec[0].user_data == secret
    ref = clusters_pb2.ClusterRef(id="mpi")
    assert alice.clusters.GetCluster(ref).spec[0].user_data == secret
    assert admin.clusters.GetCluster(clusters_pb2.ClusterRef(id=made.id)).spec[0].user_data
    shown = bob.clusters.GetCluster(clusters_pb2.ClusterRef(id=made.id))
    assert shown.name == "mpi" and shown.spec[0].role == "w"
    assert shown.spec[0].user_data == b""
    listed = bob.clusters.ListClusters(clusters_pb2.ListClustersRequest()).clusters
    assert [c.spec[0].user_data for c in listed] == [b""]
    stopped = bob.clusters.StopCluster(clusters_pb2.ClusterRef(id=made.id))
    assert stopped.spec[0].user_data == b""


def _pages(stubs: object, size: int) -> list[list[str]]:
    """The names on each page of ListImages, ``size`` a page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        resp = stubs.images.ListImages(  # type: ignore[attr-defined]
            images_pb2.ListImagesRequest(page_size=size, page_token=token)
        )
        pages.append([i.name for i in resp.images])
        token = resp.next_page_token
        if not token:
            return pages


def test_image_pages_hold_only_the_images_the_caller_sees(site: TlsSite) -> None:
    """ListImages is paged (as ListWorkspaces is): full pages of what the caller sees,
    by name, another project's images never on one (nor a gap where they are)."""
    make(site, name="phys")
    make(site, name="chem")
    alice = site.identity("alice", projects=("phys",))
    bob = site.identity("bob", projects=("chem",))
    for i, name in enumerate(("b-phys:1", "d-phys:1", "f-phys:1", "g-phys:1")):
        _import(alice, name, bytes([i + 1]) * 65536)
    for i, name in enumerate(("a-chem:1", "c-chem:1", "e-chem:1")):
        _import(bob, name, bytes([i + 10]) * 65536)
    site.stubs.import_image("h-site:1", b"\x20" * 65536)  # an admin's: public
    mine = ["b-phys:1", "d-phys:1", "f-phys:1", "g-phys:1", "h-site:1"]
    assert _pages(alice, 2) == [mine[:2], mine[2:4], mine[4:]]
    assert _pages(alice, 5) == [mine]
    assert _pages(alice, 0) == [mine]  # 0: all of them
    assert _pages(bob, 3) == [["a-chem:1", "c-chem:1", "e-chem:1"], ["h-site:1"]]
    every = sorted([*mine[:4], "a-chem:1", "c-chem:1", "e-chem:1", "h-site:1"])
    assert [n for page in _pages(site.stubs, 3) for n in page] == every  # the admin
    for req in (
        images_pb2.ListImagesRequest(page_size=-1),
        images_pb2.ListImagesRequest(page_size=2, page_token="%%%"),
        # a ListWorkspaces token: was read as an image name (a wrong page)
        images_pb2.ListImagesRequest(page_token=pages.encode("workspaces", "1.0", "w1")),
    ):
        refused(lambda req=req: alice.images.ListImages(req), grpc.StatusCode.INVALID_ARGUMENT)


def test_a_project_made_again_shows_its_members_nothing_of_the_old_one(site: TlsSite) -> None:
    """Usage and terminated workspaces keep their project's name: carol, whose certificate
    names a physics made again after alice's was deleted, saw alice's usage in it."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1")
    make(site, name="physics")
    alice = site.identity("alice", projects=("physics",))
    old = alice.create(name="old-secret", project="physics")
    alice.wait_state(old.id, common_pb2.WORKSPACE_STATE_RUNNING)
    alice.ws.DestroyWorkspace(alice.ref(old.id))
    alice.wait_state(old.id, common_pb2.WORKSPACE_STATE_TERMINATED)
    projects(site).DeleteProject(projects_pb2.DeleteProjectRequest(name="physics"))
    make(site, name="physics")
    carol = site.identity("carol", projects=("physics",))
    assert not carol.ws.GetUsage(usage_pb2.GetUsageRequest()).rows
    listed = carol.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(include_terminated=True))
    assert not listed.workspaces
    refused(lambda: carol.get(old.id), grpc.StatusCode.NOT_FOUND)
    # alice keeps her own; the admin sees it, for the old project's bill.
    (mine,) = alice.ws.GetUsage(usage_pb2.GetUsageRequest()).rows
    assert (mine.key, mine.project) == (old.id, "physics")
    admin = site.stubs.admin.GetUsage(usage_pb2.GetUsageRequest()).rows
    assert [r.key for r in admin] == [old.id]


def test_a_project_image_is_deleted_by_its_owner_only(site: TlsSite) -> None:
    """docs/security.md's table said a user may act on their project's images ("yes"):
    a member sees and uses another member's image, but only its owner (or an admin)
    deletes it."""
    make(site, name="phys")
    alice = site.identity("alice", projects=("phys",))
    carol = site.identity("carol", projects=("phys",))
    _import(alice, "tool:1", b"\x07" * 65536)
    shown = carol.images.GetImage(images_pb2.GetImageRequest(name="tool:1"))
    assert shown.owner == "alice"
    why = refused(
        lambda: carol.images.DeleteImage(images_pb2.GetImageRequest(name="tool:1")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert why == "image tool:1 belongs to alice; only its owner can delete it"
    alice.images.DeleteImage(images_pb2.GetImageRequest(name="tool:1"))


def test_a_project_member_stops_a_workspace_but_only_its_owner_updates_it(
    site: TlsSite,
) -> None:
    """The role table said a user may act on their project's workspaces ("yes"), but `ws
    update` (size, network policy, limits) is the owner's or an admin's, as the README
    says: the table names it now."""
    with_node(site, "phys")
    alice = site.identity("alice", projects=("phys",))
    carol = site.identity("carol", projects=("phys",))
    _import(alice, "tool:1", b"\x08" * 65536)
    w = alice.create(name="a1", image="tool:1")
    change = workspaces_pb2.UpdateWorkspaceRequest(id=w.id, connectivity="cluster")
    why = refused(lambda: carol.ws.UpdateWorkspace(change), grpc.StatusCode.PERMISSION_DENIED)
    assert why == "only the owner of workspace a1 (alice) or an admin may update it"
    carol.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))  # as the table says
    assert alice.ws.UpdateWorkspace(change).connectivity == "cluster"
