"""Who may grow a cluster onto its role's image, over mutual TLS (real identities).

A cluster that could be created grows with the same role spec: by its owner (with the
rights their certificate gives, admin included), by an admin, and by the autoscaler for
whoever turned it on. A user acting on someone else's cluster gains none of the owner's
admin rights: they cannot grow it onto an image they cannot see.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import SitePki, Stubs, TlsSite, wait_for
from tests.functional.test_site_events import events as site_events
from workspace.ops import autoscale
from workspace.v1 import clusters_pb2, common_pb2, images_pb2, projects_pb2, projects_pb2_grpc

IMG = "slurm"  # bob's own, private


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    vetted = tmp_path / "vetted"
    vetted.mkdir()
    want = vetted / "want"  # the signal: 4 workers
    want.write_text("#!/bin/sh\necho 4\n")
    want.chmod(want.stat().st_mode | stat.S_IXUSR)
    s = TlsSite(
        tmp_path / "site",
        SitePki(tmp_path / "pki"),
        autoscale_interval_s=3600,
        autoscale_cooldown_s=0,
        autoscale_commands_dir=str(vetted),
    )
    try:
        s.stubs.network()
        s.add_agent("node1", cpus=16, memory_mib=16384)
        projects_pb2_grpc.ProjectsStub(s.stubs.channel).CreateProject(
            projects_pb2.Project(name="phys")
        )
        s.identity("bob").import_image(IMG)
        yield s
    finally:
        s.close()


def worker(count: int = 1, image: str = IMG) -> clusters_pb2.ClusterMember:
    return clusters_pb2.ClusterMember(role="worker", image=image, memory_mib=128, count=count)


def create(stubs: Stubs, image: str = IMG) -> None:
    stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(name="el", members=[worker(image=image)], project="phys")
    )


def scale(stubs: Stubs, count: int) -> clusters_pb2.ScaleClusterResponse:
    return stubs.clusters.ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id="el", role="worker", count=count)
    )


def workers(stubs: Stubs) -> list[str]:
    c = stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id="el"))
    return sorted(m.name for m in c.members if m.role == "worker")


def franks_cluster(site: TlsSite) -> tuple[Stubs, Stubs]:
    """frank, a member of phys, makes cluster el of the admin's public image "pub".
    Returns the admin's stubs and frank's."""
    admin = site.stubs
    admin.import_image("pub")
    admin.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="pub", public=True))
    projects = projects_pb2_grpc.ProjectsStub(admin.channel)
    projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="phys", user="frank"))
    frank = site.identity("frank")
    create(frank, "pub")
    return admin, frank


def test_an_admins_cluster_of_another_users_image_grows_as_it_was_made(
    site: TlsSite, tmp_path: Path
) -> None:
    admin = site.stubs
    create(admin)
    scale(admin, 2)  # was: image 'slurm' not found
    assert workers(admin) == ["el-worker-0", "el-worker-1"]
    scale(site.identity("root2", admin=True), 3)  # another admin may grow it too
    assert len(workers(admin)) == 3
    # The autoscaler an admin turned on grows it on their behalf.
    assert site.service is not None
    admin.clusters.SetAutoscale(
        clusters_pb2.SetAutoscaleRequest(
            id=f"{site.cfg.default_owner}/el",
            role="worker",
            min=1,
            max=5,
            signal=f"command:{tmp_path / 'vetted/want'}",
        )
    )
    (out,) = autoscale.evaluate(site.service.env)
    assert out.decision.action == "grew", out.decision.detail
    assert len(workers(admin)) == 4


def test_a_project_member_gets_none_of_the_owners_admin_rights(
    site: TlsSite, tmp_path: Path
) -> None:
    """Carol may act on the admin's cluster of her project, but bob's private image is not
    hers to use: neither her scale nor the autoscaler she turns on grows the cluster."""
    admin = site.stubs
    create(admin)
    carol = site.identity("carol", projects=("phys",))
    with pytest.raises(grpc.RpcError) as err:
        scale(carol, 4)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith(
        "cannot scale cluster el, role worker: image 'slurm' not found"
    )
    assert workers(admin) == ["el-worker-0"]  # nothing changed
    carol.clusters.SetAutoscale(
        clusters_pb2.SetAutoscaleRequest(
            id=f"{site.cfg.default_owner}/el",
            role="worker",
            min=1,
            max=5,
            signal=f"command:{tmp_path / 'vetted/want'}",
        )
    )
    assert site.service is not None
    (out,) = autoscale.evaluate(site.service.env)
    assert out.decision.action == "failed"
    assert "image 'slurm' not found" in out.decision.detail
    assert workers(admin) == ["el-worker-0"]


def test_the_owner_grows_from_an_image_their_certificates_project_gives(
    site: TlsSite,
) -> None:
    """Dave sees project phys's images through his certificate alone (no member row): his
    cluster grows, as it was made; bob (no project) may not even see it."""
    erin = site.identity("erin", projects=("phys",))
    digest = erin.upload(b"\0" * 65536)
    erin.images.ImportImage(
        images_pb2.ImportImageRequest(
            name="phys-img",
            project="phys",
            partitions=[
                common_pb2.Partition(
                    name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                )
            ],
        )
    )
    dave = site.identity("dave", projects=("phys",))
    create(dave, "phys-img")
    scale(dave, 2)
    assert workers(dave) == ["el-worker-0", "el-worker-1"]
    with pytest.raises(grpc.RpcError) as err:
        scale(site.identity("bob"), 3)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_owner_taken_out_of_the_project_grows_nothing_in_it(site: TlsSite) -> None:
    """The new members of a project's cluster are charged to the project, as a create in
    it would be: once an admin takes the owner out of it (remove-user), their scale may
    shrink the cluster but not grow it (before, it grew on the project's quota)."""
    admin, frank = franks_cluster(site)
    scale(frank, 2)
    projects = projects_pb2_grpc.ProjectsStub(admin.channel)
    projects.RemoveProjectUser(projects_pb2.ProjectUserRequest(project="phys", user="frank"))
    with pytest.raises(grpc.RpcError) as err:
        scale(frank, 3)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == (
        "cannot grow cluster el: user:frank is not a member of project phys, which its new "
        "members would be charged to"
    )
    assert workers(admin) == ["el-worker-0", "el-worker-1"]
    scale(frank, 1)  # giving back needs no membership
    scale(admin, 3)  # an admin may


def test_a_queued_grow_of_a_revoked_user_is_withdrawn_when_capacity_comes(
    site: TlsSite,
) -> None:
    """frank's grow waited for capacity; his certificate was revoked meanwhile, yet the
    service's queue placed its member when capacity came (and charged it to phys)."""
    admin, frank = franks_cluster(site)
    hog = admin.create(name="hog", image="pub", memory_mib=15950)  # leaves <200 MiB
    grown = frank.clusters.ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id="el", role="worker", count=2, wait_for_capacity_s=600)
    )
    assert "waiting for capacity" in grown.message
    site.revoke("frank")
    admin.ws.DestroyWorkspace(admin.ref(hog.id))
    reason = wait_for(
        lambda: next(
            (
                e.reason
                for e in site_events(site)
                if e.kind == "workspace.refused" and e.state == "rights"
            ),
            None,
        ),
        what="the queued grow withdrawn",
    )
    assert reason.startswith("grow of cluster el waiting for capacity (el-worker-1) withdrawn:")
    assert "the certificate of user:frank, who asked for the grow, has been revoked" in reason
    c = admin.clusters.GetCluster(clusters_pb2.ClusterRef(id="el"))
    assert [(m.role, m.count) for m in c.spec] == [("worker", 1)]  # as before the grow
    live = [m.name for m in c.members if m.state != common_pb2.WORKSPACE_STATE_TERMINATED]
    assert live == ["el-worker-0"]
