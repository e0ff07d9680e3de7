"""The preemptible class's quotas, counted apart from the normal ones: over the real service
(insecure mode: the caller is the admin ``local``) and through the CLIs' main functions.
Each refusal names its quota and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import Site, SitePki, TlsSite
from tests.functional.test_projects import make, names, projects, refused, used_cpus
from tests.functional.test_projects_cli import run
from workspace.cli import admin, ws
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    projects_pb2,
    projects_pb2_grpc,
)


def test_preemptible_workspaces_count_against_the_preemptible_quota_only(
    ready_site: Site,
) -> None:
    make(ready_site, instances=1, vcpus=1, preemptible_instances=2)
    stubs = ready_site.stubs
    stubs.create(name="p1", project="p", preemptible=True, cpus=2)  # over vcpus=1: not counted
    stubs.create(name="p2", project="p", preemptible=True)
    why = refused(
        lambda: stubs.create(name="p3", project="p", preemptible=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "preemptible-instances quota of project p" in why
    assert names(ready_site) == {"p1", "p2"}
    # The normal class has its own room: one normal workspace fits the instances quota ...
    stubs.create(name="n1", project="p")
    # ... and a second does not, whatever the preemptible ones hold.
    why = refused(lambda: stubs.create(name="n2", project="p"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "instances quota of project p" in why and "preemptible" not in why
    assert names(ready_site) == {"p1", "p2", "n1"}


@pytest.mark.parametrize(
    ("quota", "ask", "named"),
    [
        ({"preemptible_vcpus": 2}, {"cpus": 3}, "preemptible-vcpus"),
        ({"preemptible_memory_mib": 1024}, {"memory_mib": 2048}, "preemptible-memory-mib"),
    ],
)
def test_preemptible_resource_quotas(
    ready_site: Site, quota: dict[str, int], ask: dict[str, int], named: str
) -> None:
    make(ready_site, **quota)
    before = used_cpus(ready_site)
    why = refused(
        lambda: ready_site.stubs.create(name="big", project="p", preemptible=True, **ask),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert f"{named} quota of project p" in why
    assert names(ready_site) == set()
    assert used_cpus(ready_site) == before
    # The same size in the normal class is not limited by it.
    assert ready_site.stubs.create(name="normal", project="p", **ask).project == "p"


def scratch(gib: int) -> list[common_pb2.Partition]:
    """An extra blank partition of ``gib`` GiB (`ws create --blank scratch:30GiB`)."""
    return [
        common_pb2.Partition(
            name="scratch", mode=common_pb2.PARTITION_MODE_BLANK, size_bytes=gib * 1024**3
        )
    ]


def test_preemptible_disks_count_against_the_preemptible_disk_quota(ready_site: Site) -> None:
    make(ready_site, disk_gib=5, preemptible_disk_gib=40)
    stubs = ready_site.stubs
    # Not against disk-gib (the normal class's), as preemptible vCPUs are not against vcpus ...
    stubs.create(name="big", project="p", preemptible=True, extra_partitions=scratch(30))
    [use] = projects(ready_site).GetQuota(projects_pb2.GetQuotaRequest(project="p")).projects
    assert use.used.disk_gib == 0
    assert 30 < use.used.preemptible_disk_gib <= 31  # the scratch disk and the image's
    assert use.limits.preemptible_disk_gib == 40
    # ... but against their own: a second 30 GiB one goes over 40.
    why = refused(
        lambda: stubs.create(
            name="more", project="p", preemptible=True, extra_partitions=scratch(30)
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "preemptible-disk-gib quota of project p" in why
    assert names(ready_site) == {"big"}
    # The normal class keeps its own room: disk-gib=5 refuses a normal 30 GiB create.
    why = refused(
        lambda: stubs.create(name="normal", project="p", extra_partitions=scratch(30)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "disk-gib quota of project p" in why and "preemptible" not in why


def test_a_preemptible_cluster_over_its_quota_is_refused_whole(ready_site: Site) -> None:
    make(ready_site, preemptible_instances=2)
    req = clusters_pb2.CreateClusterRequest(
        name="c",
        project="p",
        preemptible=True,
        members=[clusters_pb2.ClusterMember(role="w", image="img", count=3, memory_mib=64)],
    )
    cstub = clusters_pb2_grpc.ClustersStub(ready_site.stubs.channel)
    why = refused(lambda: cstub.CreateCluster(req), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "cluster c" in why and "preemptible-instances quota of project p" in why
    assert list(cstub.ListClusters(clusters_pb2.ListClustersRequest()).clusters) == []
    assert names(ready_site) == set()
    assert used_cpus(ready_site) == 0


def test_quota_shows_both_classes(ready_site: Site) -> None:
    make(ready_site, instances=3, preemptible_instances=4, preemptible_vcpus=8)
    projects(ready_site).AddProjectUser(projects_pb2.ProjectUserRequest(project="p", user="local"))
    ready_site.stubs.create(name="n", project="p", cpus=1)
    ready_site.stubs.create(name="a", project="p", cpus=2, preemptible=True)
    ready_site.stubs.create(name="b", project="p", cpus=3, preemptible=True)
    [use] = projects(ready_site).GetQuota(projects_pb2.GetQuotaRequest()).projects
    assert (use.used.instances, use.used.vcpus) == (1, 1)
    assert (use.used.preemptible_instances, use.used.preemptible_vcpus) == (2, 5)
    assert (use.limits.instances, use.limits.preemptible_instances) == (3, 4)


def test_setting_preemptible_quotas_keeps_the_default_limits(ready_site: Site) -> None:
    stub = projects(ready_site)
    stub.CreateProject(
        projects_pb2.Project(name="p", default_limits=common_pb2.Limits(net_mbps=50))
    )
    got = stub.SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(
            project="p",
            keep_default_limits=True,
            preemptible_quota=projects_pb2.Quota(preemptible_instances=3),
        )
    )
    assert got.quota.preemptible_instances == 3 and got.default_limits.net_mbps == 50
    # Without the preemptible quota: they stay; the default limits are replaced.
    got = stub.SetProjectDefaults(projects_pb2.SetProjectDefaultsRequest(project="p"))
    assert got.quota.preemptible_instances == 3 and got.default_limits.net_mbps == 0


def test_a_request_setting_only_quotas_or_leases_keeps_the_default_limits(
    ready_site: Site,
) -> None:
    """A program in another language (or grpcurl) that sets a project's quota leaves
    default_limits and keep_default_limits out: the project's default limits were
    cleared by the quota change. Left out beside another setting, they now stay."""
    stub = projects(ready_site)
    stub.CreateProject(
        projects_pb2.Project(name="p", default_limits=common_pb2.Limits(net_mbps=50))
    )
    for req in (
        projects_pb2.SetProjectDefaultsRequest(project="p", quota=projects_pb2.Quota(instances=4)),
        projects_pb2.SetProjectDefaultsRequest(
            project="p", preemptible_quota=projects_pb2.Quota(preemptible_instances=2)
        ),
        projects_pb2.SetProjectDefaultsRequest(
            project="p", leases=projects_pb2.LeasePolicy(max_lease_s=3600)
        ),
    ):
        got = stub.SetProjectDefaults(req)
        assert got.default_limits.net_mbps == 50, req
    assert (got.quota.instances, got.quota.preemptible_instances) == (4, 2)
    assert got.max_lease_s == 3600
    # Given beside them, they are set as before (here: to the site's default).
    got = stub.SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(
            project="p", quota=projects_pb2.Quota(instances=5), default_limits=common_pb2.Limits()
        )
    )
    assert (got.quota.instances, got.default_limits.net_mbps) == (5, 0)


def test_a_negative_preemptible_quota_is_refused_and_changes_nothing(ready_site: Site) -> None:
    make(ready_site, preemptible_vcpus=4)
    stub = projects(ready_site)
    why = refused(
        lambda: stub.SetProjectDefaults(
            projects_pb2.SetProjectDefaultsRequest(
                project="p", preemptible_quota=projects_pb2.Quota(preemptible_vcpus=-1)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "quota preemptible-vcpus must not be negative" in why
    why = refused(
        lambda: stub.CreateProject(
            projects_pb2.Project(name="q", quota=projects_pb2.Quota(preemptible_instances=-2))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "quota preemptible-instances must not be negative" in why
    listed = stub.ListProjects(projects_pb2.ListProjectsRequest()).projects
    assert [(p.name, p.quota.preemptible_vcpus) for p in listed] == [("p", 4)]


def test_preemptible_quotas_on_the_command_line(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        admin, ready_site, capsys,
        "project", "create", "phys", "--quota", "instances=2",
        "--quota-preemptible-instances", "3", "--quota-preemptible-vcpus", "6",
    )  # fmt: skip
    assert code == 0, err
    assert "preemptible-instances=3" in out and "preemptible-vcpus=6" in out
    code, out, err = run(
        admin, ready_site, capsys, "-o", "json",
        "project", "set", "phys", "--quota-preemptible-memory-mib", "4096",
    )  # fmt: skip
    assert code == 0, err
    quota = json.loads(out)["quota"]
    # Those left out stayed.
    assert (quota["preemptible_instances"], quota["preemptible_vcpus"]) == (3, 6)
    assert quota["preemptible_memory_mib"] == 4096 and quota["instances"] == 2
    code, out, err = run(
        admin, ready_site, capsys, "-o", "json",
        "project", "set", "phys", "--quota-preemptible-disk-gib", "50",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["quota"]["preemptible_disk_gib"] == 50
    code, _, err = run(
        admin, ready_site, capsys, "project", "set", "phys", "--quota-preemptible-vcpus", "-1"
    )
    assert code == 2 and "must be 0 or more" in err
    assert run(admin, ready_site, capsys, "project", "add-user", "phys", "local")[0] == 0
    argv = ("create", "--image", "img", "--preemptible", "--cpus", "2")
    assert run(ws, ready_site, capsys, *argv, "--name", "a")[0] == 0
    code, out, _ = run(ws, ready_site, capsys, "quota")
    assert code == 0
    rows = {tuple(line.split()[1:]) for line in out.splitlines()}
    assert ("instances", "0", "2") in rows
    assert ("preemptible-instances", "1", "3") in rows
    assert ("preemptible-vcpus", "2", "6") in rows
    assert ("preemptible-disk-gib", "1", "50") in rows  # the image's disk, rounded up
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "quota")
    used = json.loads(out)[0]["used"]
    assert (used["instances"], used["preemptible_instances"]) == (0, 1)


def test_project_show_prints_both_classes(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    make(ready_site, instances=5, preemptible_vcpus=8)
    ready_site.stubs.create(name="n", project="p", cpus=1)
    ready_site.stubs.create(name="a", project="p", cpus=3, preemptible=True)
    code, out, err = run(admin, ready_site, capsys, "project", "show", "p")
    assert code == 0, err
    rows = {tuple(line.split()) for line in out.splitlines()}
    assert ("p", "instances", "1", "5") in rows
    assert ("p", "vcpus", "1", "-") in rows
    assert ("p", "preemptible-instances", "1", "-") in rows
    assert ("p", "preemptible-vcpus", "3", "8") in rows
    code, out, _ = run(admin, ready_site, capsys, "-o", "json", "project", "show", "p")
    shown = json.loads(out)
    assert shown["project"]["quota"]["preemptible_vcpus"] == 8
    assert shown["quota"]["used"]["preemptible_vcpus"] == 3 and shown["quota"]["used"]["vcpus"] == 1
    # `ws project show` (here the caller is the admin `local`): use and quotas.
    code, out, _ = run(ws, ready_site, capsys, "-o", "json", "project", "show", "p")
    assert code == 0 and json.loads(out)["used"]["preemptible_instances"] == 1
    code, _, err = run(ws, ready_site, capsys, "project", "show", "nope")
    assert code == 1 and "project 'nope' does not exist" in err


def test_project_quota_of_one_project_is_for_members_only(tmp_path: Path) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        make(site, name="p", preemptible_instances=2)
        make(site, name="q")
        alice = projects_pb2_grpc.ProjectsStub(site.identity("alice", projects=("p",)).channel)
        [mine] = alice.GetQuota(projects_pb2.GetQuotaRequest(project="p")).projects
        assert (mine.project, mine.limits.preemptible_instances) == ("p", 2)
        why = refused(
            lambda: alice.GetQuota(projects_pb2.GetQuotaRequest(project="q")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert "not a member of project 'q'" in why
    finally:
        site.close()


def test_a_class_over_a_lowered_quota_does_not_refuse_the_other(ready_site: Site) -> None:
    """An admin lowers one class's quota below what the project holds: new workspaces of
    that class are refused; the other class, checked apart, keeps its own room."""
    make(ready_site, instances=3, preemptible_instances=3)
    stubs = ready_site.stubs
    for name in ("n1", "n2"):
        stubs.create(name=name, project="p")
    for name in ("p1", "p2"):
        stubs.create(name=name, project="p", preemptible=True)
    projects(ready_site).SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(
            project="p",
            keep_default_limits=True,
            quota=projects_pb2.Quota(instances=1),
            preemptible_quota=projects_pb2.Quota(preemptible_instances=1),
        )
    )
    # Each class over its own quota: refused, naming that class's quota ...
    why = refused(lambda: stubs.create(name="n3", project="p"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "instances quota of project p" in why and "preemptible" not in why
    why = refused(
        lambda: stubs.create(name="p3", project="p", preemptible=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "preemptible-instances quota of project p" in why
    # ... and raising one class's quota again makes room for that class, whatever the
    # other class still holds over its own.
    projects(ready_site).SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(
            project="p",
            keep_default_limits=True,
            preemptible_quota=projects_pb2.Quota(preemptible_instances=3),
        )
    )
    assert stubs.create(name="p3", project="p", preemptible=True).preemptible
    projects(ready_site).SetProjectDefaults(
        projects_pb2.SetProjectDefaultsRequest(
            project="p",
            keep_default_limits=True,
            quota=projects_pb2.Quota(instances=3),
            preemptible_quota=projects_pb2.Quota(preemptible_instances=1),
        )
    )
    assert stubs.create(name="n3", project="p").project == "p"
    assert names(ready_site) == {"n1", "n2", "n3", "p1", "p2", "p3"}
