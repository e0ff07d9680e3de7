"""Projects and quotas over the real service (insecure mode: the caller is the admin
``local``): each refusal names its quota and leaves nothing behind."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.functional.harness import Site
from workspace.v1 import (
    admin_pb2,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)

GIB = 1024**3


def projects(site: Site) -> projects_pb2_grpc.ProjectsStub:
    return projects_pb2_grpc.ProjectsStub(site.stubs.channel)


def make(site: Site, name: str = "p", **quota: int) -> projects_pb2.Project:
    return projects(site).CreateProject(
        projects_pb2.Project(name=name, quota=projects_pb2.Quota(**quota))
    )


def refused(fn: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def names(site: Site) -> set[str]:
    listed = site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    return {w.name for w in listed.workspaces}


def used_cpus(site: Site) -> int:
    nodes = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    return sum(n.used_cpus for n in nodes)


def test_instances_quota(ready_site: Site) -> None:
    make(ready_site, instances=1)
    first = ready_site.stubs.create(name="one", project="p")
    assert first.project == "p"
    why = refused(
        lambda: ready_site.stubs.create(name="two", project="p"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "instances quota of project p" in why
    assert names(ready_site) == {"one"}
    # Outside the project, no project quota applies.
    assert ready_site.stubs.create(name="three").project == ""


@pytest.mark.parametrize(
    ("quota", "ask", "named"),
    [
        ({"vcpus": 2}, {"cpus": 3}, "vcpus"),
        ({"memory_mib": 1024}, {"memory_mib": 2048}, "memory-mib"),
        ({"disk_gib": 1}, {"grow_bytes": {"root": 2 * GIB}}, "disk-gib"),
    ],
)
def test_resource_quotas(
    ready_site: Site, quota: dict[str, int], ask: dict[str, Any], named: str
) -> None:
    make(ready_site, **quota)
    before = used_cpus(ready_site)
    why = refused(
        lambda: ready_site.stubs.create(name="big", project="p", **ask),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert f"{named} quota of project p" in why
    assert names(ready_site) == set()
    assert used_cpus(ready_site) == before


def test_a_cluster_over_quota_is_refused_whole(ready_site: Site) -> None:
    make(ready_site, instances=2)
    req = clusters_pb2.CreateClusterRequest(
        name="c",
        project="p",
        members=[clusters_pb2.ClusterMember(role="w", image="img", count=3, memory_mib=64)],
    )
    cstub = clusters_pb2_grpc.ClustersStub(ready_site.stubs.channel)
    why = refused(lambda: cstub.CreateCluster(req), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "cluster c" in why and "instances quota of project p" in why
    assert list(cstub.ListClusters(clusters_pb2.ListClustersRequest()).clusters) == []
    assert names(ready_site) == set()
    assert used_cpus(ready_site) == 0


def test_an_unknown_project_is_not_found(ready_site: Site) -> None:
    why = refused(
        lambda: ready_site.stubs.create(name="x", project="nope"), grpc.StatusCode.NOT_FOUND
    )
    assert "project 'nope' does not exist" in why
    assert names(ready_site) == set()


def test_image_bytes_quota_at_import(site: Site) -> None:
    make(site, name="small", image_bytes=1000)
    digest = site.stubs.upload(b"\1" * 4096)
    req = images_pb2.ImportImageRequest(
        name="big:1",
        project="small",
        partitions=[common_pb2.Partition(name="root", digest=digest, format="raw")],
    )
    why = refused(lambda: site.stubs.images.ImportImage(req), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "image-bytes quota of project small" in why
    refused(
        lambda: site.stubs.images.GetImage(images_pb2.GetImageRequest(name="big:1")),
        grpc.StatusCode.NOT_FOUND,
    )


def test_quota_shows_use_and_limits_of_your_projects(ready_site: Site) -> None:
    stub = projects(ready_site)
    make(ready_site, instances=5, vcpus=8)
    stub.AddProjectUser(projects_pb2.ProjectUserRequest(project="p", user="local"))
    ready_site.stubs.create(name="one", cpus=2)  # the caller's only project: p
    (mine,) = stub.GetQuota(projects_pb2.GetQuotaRequest()).projects
    assert mine.project == "p"
    assert (mine.limits.instances, mine.limits.vcpus) == (5, 8)
    assert (mine.used.instances, mine.used.vcpus, mine.used.memory_mib) == (1, 2, 512)
    listed = stub.ListProjects(projects_pb2.ListProjectsRequest()).projects
    assert [(p.name, list(p.users)) for p in listed] == [("p", ["local"])]


def test_project_requests_are_checked(site: Site) -> None:
    stub = projects(site)
    bad = [
        projects_pb2.Project(name="Bad Name"),
        projects_pb2.Project(name="p", quota=projects_pb2.Quota(vcpus=-1)),
        projects_pb2.Project(name="p", default_lease_s=7200, max_lease_s=3600),
    ]
    for p in bad:
        refused(lambda p=p: stub.CreateProject(p), grpc.StatusCode.INVALID_ARGUMENT)
    created = stub.CreateProject(
        projects_pb2.Project(
            name="p",
            default_lease_s=8 * 3600,
            max_lease_s=72 * 3600,
            on_expiry=projects_pb2.LEASE_ACTION_DESTROY,
        )
    )
    assert (created.default_lease_s, created.on_expiry) == (
        8 * 3600,
        projects_pb2.LEASE_ACTION_DESTROY,
    )
    refused(
        lambda: stub.CreateProject(projects_pb2.Project(name="p")), grpc.StatusCode.ALREADY_EXISTS
    )
    refused(
        lambda: stub.AddProjectUser(projects_pb2.ProjectUserRequest(project="q", user="ana")),
        grpc.StatusCode.NOT_FOUND,
    )
    refused(
        lambda: stub.AddProjectUser(projects_pb2.ProjectUserRequest(project="p", user="A B")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_publish_makes_an_image_public(ready_site: Site) -> None:
    images = ready_site.stubs.images
    # The admin's image outside any project is a site image, public from the start.
    assert images.GetImage(images_pb2.GetImageRequest(name="img")).public
    hidden = images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=False))
    assert not hidden.public
    assert not images.GetImage(images_pb2.GetImageRequest(name="img")).public
    shown = images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
    assert shown.public
    refused(
        lambda: images.SetImagePublic(images_pb2.SetImagePublicRequest(name="nope", public=True)),
        grpc.StatusCode.NOT_FOUND,
    )
