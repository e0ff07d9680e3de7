"""Elastic clusters over the real service (fake driver): `ws cluster scale` grows a role
all or nothing and shrinks it highest index first, the running members' rosters are
rewritten through their guest agents, and every refusal names its reason and changes
nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from tests.functional.test_keys import orders_of, own_config
from workspace.cli import admin as admin_cli
from workspace.cli import ws as ws_cli
from workspace.client import Client
from workspace.ops import site_events
from workspace.v1 import (
    admin_pb2,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)

CS = clusters_pb2.ClusterState
IMG = "cimg"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, roster_push_interval_s=0.2, autoscale_interval_s=3600)
    try:
        s.stubs.network()
        s.stubs.import_image(IMG, context="nocloud")
        yield s
    finally:
        s.close()


def stub(site: Site) -> clusters_pb2_grpc.ClustersStub:
    return clusters_pb2_grpc.ClustersStub(site.stubs.channel)


def make(site: Site, name: str = "ela", workers: int = 2, **kw: Any) -> clusters_pb2.Cluster:
    return stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name=name,
            members=[
                clusters_pb2.ClusterMember(role="head", image=IMG, memory_mib=256),
                clusters_pb2.ClusterMember(role="worker", image=IMG, memory_mib=256, count=workers),
            ],
            **kw,
        )
    )


def get(site: Site, ref: str = "ela") -> clusters_pb2.Cluster:
    return stub(site).GetCluster(clusters_pb2.ClusterRef(id=ref))


def running(site: Site, ref: str = "ela") -> clusters_pb2.Cluster:
    return wait_for(
        lambda: (
            (c := get(site, ref)).state == CS.CLUSTER_STATE_RUNNING
            and all(m.state == WS.WORKSPACE_STATE_RUNNING for m in c.members)
            and c
        ),
        what=f"cluster {ref} RUNNING",
    )


def scale(site: Site, count: int, role: str = "worker", ref: str = "ela", **kw: Any) -> Any:
    return stub(site).ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id=ref, role=role, count=count, **kw)
    )


def member_names(c: clusters_pb2.Cluster) -> list[str]:
    return sorted(m.name for m in c.members)


def spec_counts(c: clusters_pb2.Cluster) -> dict[str, int]:
    return {m.role: m.count for m in c.spec}


def used_cpus(site: Site) -> int:
    return sum(n.used_cpus for n in site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes)


def refused(fn: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def guest_file(site: Site, c: clusters_pb2.Cluster, name: str, path: str) -> str:
    m = next(m for m in c.members if m.name == name)
    data = site.agents[m.node].driver.guest_file(m.id, path)  # type: ignore[attr-defined]
    return data.decode() if data else ""


def roster_names(site: Site, c: clusters_pb2.Cluster, name: str) -> list[str]:
    text = guest_file(site, c, name, "/etc/workspace/cluster.json")
    return [m["name"] for m in json.loads(text)["members"]] if text else []


def hosts_names(site: Site, c: clusters_pb2.Cluster, name: str) -> set[str]:
    text = guest_file(site, c, name, "/etc/hosts")
    return {line.split()[1] for line in text.splitlines()[4:]}


def test_grow_then_shrink_highest_index_first(site: Site) -> None:
    site.add_agent("node1")
    make(site)
    running(site)
    used = used_cpus(site)

    got = scale(site, 4)
    assert (got.previous, got.count) == (2, 4)
    assert list(got.added) == ["ela-worker-2", "ela-worker-3"]
    assert "worker 2 → 4" in got.message
    c = running(site)
    assert member_names(c) == [
        "ela-head-0",
        "ela-worker-0",
        "ela-worker-1",
        "ela-worker-2",
        "ela-worker-3",
    ]
    assert spec_counts(c)["worker"] == 4
    assert used_cpus(site) == used + 2
    # The new members share the role's shape and got their own addresses.
    new = [m for m in c.members if m.name in got.added]
    assert all(m.memory_mib == 256 and m.role == "worker" for m in new)
    assert len({m.nics[0].ip for m in c.members}) == 5

    got = scale(site, 1)
    assert list(got.removed) == ["ela-worker-3", "ela-worker-2", "ela-worker-1"]
    c = wait_for(
        lambda: (
            (c := get(site)).state == CS.CLUSTER_STATE_RUNNING
            and member_names(c) == ["ela-head-0", "ela-worker-0"]
            and c
        ),
        what="the removed members gone",
    )
    assert spec_counts(c)["worker"] == 1
    wait_for(lambda: used_cpus(site) == used - 1, what="capacity released")

    # Idempotent: the same count again changes nothing and says so.
    again = scale(site, 1)
    assert not again.added and not again.removed
    assert "already has 1 member(s): nothing to do" in again.message

    # Growing again takes the lowest free index.
    assert list(scale(site, 2).added) == ["ela-worker-1"]

    assert site.service is not None
    scaled = [e for e in site_events.after(site.service.env, 0) if e.kind == "cluster.scaled"]
    assert [(e.previous, e.state, e.subject) for e in scaled] == [
        ("2", "4", "worker"),
        ("4", "1", "worker"),
        ("1", "2", "worker"),
    ]
    assert all(e.cluster == c.id and "asked by" in e.reason for e in scaled)


def test_a_roles_blank_disks_are_every_members_the_grown_ones_too(site: Site) -> None:
    site.add_agent("node1")
    blank = common_pb2.Partition(
        name="scratch", size_bytes=8 * 2**20, mode=common_pb2.PARTITION_MODE_BLANK, ext4=True
    )
    head = clusters_pb2.ClusterMember(role="head", image=IMG, memory_mib=256)
    worker = clusters_pb2.ClusterMember(
        role="worker", image=IMG, memory_mib=256, count=2, extra_partitions=[blank]
    )
    stub(site).CreateCluster(clusters_pb2.CreateClusterRequest(name="ela", members=[head, worker]))
    running(site)
    assert list(scale(site, 3).added) == ["ela-worker-2"]
    c = running(site)
    orders = orders_of(site)
    disks = {
        name: [(d.partition.name, d.partition.size_bytes, d.partition.ext4) for d in o.disks]
        for name, o in orders.items()
    }
    assert [d[0] for d in disks["ela-head-0"]] == ["root"]
    for name in ("ela-worker-0", "ela-worker-1", "ela-worker-2"):
        assert disks[name][1:] == [("scratch", 8 * 2**20, True)], name
        mounts = own_config(orders[name])["mounts"]
        assert [m[1] for m in mounts] == ["/mnt/scratch"], name
    shown = {m.role: [(x.name, x.size_bytes, x.ext4) for x in m.extra_partitions] for m in c.spec}
    assert shown == {"head": [], "worker": [("scratch", 8 * 2**20, True)]}


def test_a_bad_blank_disk_of_a_role_refuses_the_cluster_whole(site: Site) -> None:
    site.add_agent("node1")
    clash = common_pb2.Partition(name="root", size_bytes=2**20)  # the image's own
    worker = clusters_pb2.ClusterMember(role="worker", image=IMG, extra_partitions=[clash])
    why = refused(
        lambda: stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(name="bad", members=[worker])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert why.startswith("cluster bad, member worker: ") and "already has that name" in why
    assert not stub(site).ListClusters(clusters_pb2.ListClustersRequest()).clusters
    assert not site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces


def test_running_members_learn_the_new_roster(site: Site) -> None:
    site.add_agent("node1")
    make(site)
    running(site)
    scale(site, 3)
    c = running(site)
    everyone = member_names(c)
    assert "ela-worker-2" in everyone
    # The old members' files are rewritten through their guest agents...
    for name in ("ela-head-0", "ela-worker-0", "ela-worker-1"):
        wait_for(lambda n=name: sorted(roster_names(site, c, n)) == everyone, what=f"{name} roster")
        assert hosts_names(site, c, name) == set(everyone)
        me = json.loads(guest_file(site, c, name, "/etc/workspace/cluster.json"))
        assert me["name"] == name
    # ...and the new member boots with the new roster in its seed.
    files = {
        f["path"]: f["content"] for f in own_config(orders_of(site)["ela-worker-2"])["write_files"]
    }
    assert "ela-worker-1" in files["/etc/hosts"] and "ela-worker-2" in files["/etc/hosts"]

    scale(site, 1)
    c = wait_for(
        lambda: (c := get(site)).state == CS.CLUSTER_STATE_RUNNING and len(c.members) == 2 and c,
        what="shrunk",
    )
    for name in ("ela-head-0", "ela-worker-0"):
        wait_for(
            lambda n=name: sorted(roster_names(site, c, n)) == ["ela-head-0", "ela-worker-0"],
            what=f"{name} roster after the shrink",
        )
        assert "ela-worker-1" not in guest_file(site, c, name, "/etc/hosts")


def test_a_member_without_a_guest_agent_is_retried_and_the_others_are_not_held(
    site: Site,
) -> None:
    site.add_agent("node1", fake={"no_guest_agent": ["ela-worker-0"]})
    make(site)
    running(site)
    scale(site, 3)
    c = running(site)
    wait_for(lambda: "ela-worker-2" in roster_names(site, c, "ela-head-0"), what="head roster")
    assert roster_names(site, c, "ela-worker-0") == []  # never reachable, nothing written
    assert site.service is not None
    assert c.members[0].id not in site.service.rosters.applied or True
    retry = site.service.rosters.retrying()
    worker0 = next(m.id for m in c.members if m.name == "ela-worker-0")
    assert worker0 in retry and worker0 not in site.service.rosters.applied


def test_grow_beyond_capacity_is_refused_whole(site: Site) -> None:
    site.add_agent("node1", cpus=4, memory_mib=1024)
    make(site)
    before = running(site)
    used = used_cpus(site)
    why = refused(lambda: scale(site, 10), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "cannot place 8 new member(s) of cluster ela" in why
    after = get(site)
    assert member_names(after) == member_names(before)
    assert spec_counts(after)["worker"] == 2
    assert used_cpus(site) == used


def test_grow_beyond_the_project_quota_is_refused_whole(site: Site) -> None:
    site.add_agent("node1")
    projects_pb2_grpc.ProjectsStub(site.stubs.channel).CreateProject(
        projects_pb2.Project(name="p", quota=projects_pb2.Quota(instances=4))
    )
    make(site, project="p")
    before = running(site)
    assert list(scale(site, 3).added) == ["ela-worker-2"]
    why = refused(lambda: scale(site, 4), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "cannot scale cluster ela to 4 worker" in why
    assert "instances quota of project p" in why
    after = get(site)
    assert len(after.members) == len(before.members) + 1
    assert spec_counts(after)["worker"] == 3


@pytest.mark.parametrize(
    ("role", "count", "code", "match"),
    [
        (
            "nope",
            3,
            grpc.StatusCode.INVALID_ARGUMENT,
            "cluster ela has no role 'nope' (its roles: head, worker)",
        ),
        ("worker", -1, grpc.StatusCode.INVALID_ARGUMENT, "count must be 0 or more, not -1"),
        (
            "worker",
            1000,
            grpc.StatusCode.INVALID_ARGUMENT,
            "1001 members with 1000 worker; at most 1000",
        ),
    ],
)
def test_bad_scales_change_nothing(
    site: Site, role: str, count: int, code: grpc.StatusCode, match: str
) -> None:
    site.add_agent("node1")
    make(site)
    before = running(site)
    assert match in refused(lambda: scale(site, count, role=role), code)
    after = get(site)
    assert member_names(after) == member_names(before)
    assert spec_counts(after) == spec_counts(before)


def test_scaling_every_member_away_or_a_destroyed_cluster_is_refused(site: Site) -> None:
    site.add_agent("node1")
    stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="solo", members=[clusters_pb2.ClusterMember(role="w", image=IMG, memory_mib=64)]
        )
    )
    running(site, "solo")
    why = refused(lambda: scale(site, 0, role="w", ref="solo"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "would leave no member" in why and "ws cluster destroy solo" in why
    stub(site).DestroyCluster(clusters_pb2.ClusterRef(id="solo"))
    why = refused(lambda: scale(site, 3, role="w", ref="solo"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "cluster solo is TERMINAT" in why and "cannot be scaled" in why
    why = refused(lambda: scale(site, 1, ref="none"), grpc.StatusCode.NOT_FOUND)
    assert "no cluster 'none'" in why


def test_the_image_of_a_role_scaled_to_no_member_is_not_deleted_under_it(site: Site) -> None:
    """A role scaled to 0 (workers overnight) has no live workspace of its image, and
    `ws image delete` took the image: the next grow failed "not found", or grew from
    another image pushed under the name since. Refused now until the cluster is gone."""
    from workspace.v1 import images_pb2

    site.add_agent("node1")
    site.stubs.import_image("wimg:1", b"\1" * 65536, context="nocloud")
    stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="ela",
            members=[
                clusters_pb2.ClusterMember(role="head", image=IMG, memory_mib=256),
                clusters_pb2.ClusterMember(role="worker", image="wimg:1", memory_mib=256),
            ],
        )
    )
    running(site)
    scale(site, 0)
    wait_for(lambda: member_names(get(site)) == ["ela-head-0"], what="the worker gone")
    delete = site.stubs.images.DeleteImage
    why = refused(
        lambda: delete(images_pb2.GetImageRequest(name="wimg:1")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "image wimg:1 is the image of role worker of cluster " in why
    assert "destroy the cluster first" in why
    assert list(scale(site, 1).added) == ["ela-worker-0"]  # it still grows from it
    stub(site).DestroyCluster(clusters_pb2.ClusterRef(id="ela"))
    wait_for(lambda: get(site).state == CS.CLUSTER_STATE_TERMINATED, what="cluster gone")
    assert delete(images_pb2.GetImageRequest(name="wimg:1")).name == "wimg:1"


def test_a_stopped_cluster_shrinks_but_is_not_grown_until_started(site: Site) -> None:
    """A grow of a STOPPED cluster started its new members beside the stopped ones: the
    cluster then said STARTING for good, and `ws cluster scale --wait` waited for a
    RUNNING it never reached."""
    site.add_agent("node1")
    make(site, workers=2)
    running(site)
    stub(site).StopCluster(clusters_pb2.ClusterRef(id="ela"))
    wait_for(lambda: get(site).state == CS.CLUSTER_STATE_STOPPED, what="cluster STOPPED")
    why = refused(lambda: scale(site, 3), grpc.StatusCode.FAILED_PRECONDITION)
    assert why == (
        "cannot grow cluster ela: it is STOPPED (its new members would run beside stopped "
        "ones); `ws cluster start ela` first"
    )
    assert [m.name for m in get(site).members] == ["ela-head-0", "ela-worker-0", "ela-worker-1"]
    scale(site, 1)  # a shrink is fine
    wait_for(
        lambda: (
            (c := get(site)).state == CS.CLUSTER_STATE_STOPPED
            and [m.name for m in c.members] == ["ela-head-0", "ela-worker-0"]
            and c
        ),
        what="cluster STOPPED with one worker",
    )
    stub(site).StartCluster(clusters_pb2.ClusterRef(id="ela"))
    running(site)
    scale(site, 2)
    running(site)


def test_a_start_or_stop_asked_again_after_a_shrink_is_accepted(site: Site) -> None:
    """A start of a RUNNING cluster and a stop of a STOPPED one are accepted and change
    nothing (a retry whose answer was lost, on another replica too: docs/api.md). Once a
    scale had removed a member they were refused FAILED_PRECONDITION, naming the member
    the cluster no longer shows ("ela-worker-1 was destroyed; nothing to start")."""
    site.add_agent("node1")
    make(site, workers=2)
    running(site)
    scale(site, 1)
    site.stubs.wait_state("ela-worker-1", WS.WORKSPACE_STATE_TERMINATED)
    ref = clusters_pb2.ClusterRef(id="ela")
    again = stub(site).StartCluster(ref)
    assert again.state == CS.CLUSTER_STATE_RUNNING
    assert member_names(again) == ["ela-head-0", "ela-worker-0"]
    stub(site).StopCluster(ref)
    wait_for(lambda: get(site).state == CS.CLUSTER_STATE_STOPPED, what="cluster STOPPED")
    again = stub(site).StopCluster(ref)
    assert again.state == CS.CLUSTER_STATE_STOPPED
    assert member_names(again) == ["ela-head-0", "ela-worker-0"]
    # What was not asked before is still done: a start starts the members left.
    stub(site).StartCluster(ref)
    running(site)


def test_a_member_grown_while_others_are_being_destroyed_boots_without_them(
    site: Site,
) -> None:
    """The roster a new member's seed carries is the one the running members are given:
    members on their way out (a shrink whose node has not confirmed yet) are not in it
    (they were, and its seed's size bound left them out)."""
    site.add_agent("node1")
    make(site, workers=3)
    running(site)
    site.stop_agent("node1")  # the shrink's members stay STOPPING: nothing confirms
    scale(site, 1)
    scale(site, 2)  # ela-worker-1 and -2 still hold their names: the new one is -3
    names = {m.name: m.state for m in get(site).members}
    assert names["ela-worker-1"] == names["ela-worker-2"] == WS.WORKSPACE_STATE_STOPPING
    orders = orders_of(site)
    for name in ("ela-worker-3", "ela-worker-0"):
        files = {f["path"]: f["content"] for f in own_config(orders[name])["write_files"]}
        about = json.loads(files["/etc/workspace/cluster.json"])
        assert [m["name"] for m in about["members"]] == [
            "ela-head-0",
            "ela-worker-0",
            "ela-worker-3",
        ], name
        assert "ela-worker-1" not in files["/etc/hosts"]


def test_a_member_failing_during_a_scale_is_reported(site: Site) -> None:
    site.add_agent("node1", fake={"fail_create": ["ela-worker-2"]})
    make(site)
    running(site)
    scale(site, 3)
    c = wait_for(
        lambda: (c := get(site)).state == CS.CLUSTER_STATE_FAILED and c, what="cluster FAILED"
    )
    assert "member ela-worker-2 is FAILED" in c.reason
    assert site.stubs.get("ela-worker-0").state == WS.WORKSPACE_STATE_RUNNING  # kept (KEEP)


def test_ws_cluster_scale_wait_names_the_member_that_failed(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.add_agent("node1", fake={"fail_create": ["ela-worker-2"]})
    make(site)
    running(site)
    argv = ["--service", site.address, "cluster", "scale", "ela", "--role", "worker"]
    assert ws_cli.main([*argv, "--count", "3", "--wait", "--timeout", "60"]) == 1
    err = capsys.readouterr().err
    assert "cluster ela FAILED during the scale" in err and "ela-worker-2" in err


def test_a_scale_waits_for_capacity_when_asked(site: Site) -> None:
    site.add_agent("node1", cpus=4, memory_mib=1024)
    make(site)
    running(site)
    got = scale(site, 8, wait_for_capacity_s=60)
    assert "(waiting for capacity)" in got.message
    c = get(site)
    waiting = [m for m in c.members if m.name in got.added]
    assert all(m.state == WS.WORKSPACE_STATE_PENDING and not m.node for m in waiting)
    # A stop meanwhile would leave the waiting members STOPPING with no node, for good.
    why = refused(
        lambda: stub(site).StopCluster(clusters_pb2.ClusterRef(id="ela")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert why.startswith(f"cluster ela has members waiting for capacity ({got.added[0]}, ")
    site.add_agent("node2", cpus=8, memory_mib=4096)
    running(site)


def test_ws_cluster_scale_and_show(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.add_agent("node1")
    make(site)
    running(site)
    base = ["--service", site.address]
    assert (
        ws_cli.main(
            [*base, "cluster", "scale", "ela", "--role", "worker", "--count", "3", "--wait"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "cluster ela: worker 2 → 3: added ela-worker-2" in out
    assert (
        ws_cli.main(
            [*base, "-o", "json", "cluster", "scale", "ela", "--role", "worker", "--count", "3"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["previous"] == 3 and data["count"] == 3 and "nothing to do" in data["message"]
    assert len(data["cluster"]["members"]) == 4
    # A count no cluster can have is a usage error (exit 2), told before asking.
    for bad in ("-2", "99999999999999999999"):
        argv = [*base, "cluster", "scale", "ela", "--role", "worker", "--count", bad]
        with pytest.raises(SystemExit) as exited:
            ws_cli.main(argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--count: must be 0 or more, got -2" in err
    assert "--count: must be at most 2147483647" in err and "Traceback" not in err
    with Client(site.address) as client:
        assert client.scale_cluster("ela", "worker", 3).message.endswith("nothing to do")


def test_grown_members_keep_the_clusters_hard_affinity(site: Site) -> None:
    """HARD_ANTI: a new member goes to a node none of the others is on, and a grow past
    the nodes left is refused whole; HARD: new members join the others' node."""
    for node in ("n1", "n2", "n3", "n4"):
        site.add_agent(node)
    make(site, "anti", workers=1, affinity=clusters_pb2.AFFINITY_HARD_ANTI)
    running(site, "anti")
    scale(site, 3, ref="anti")
    c = running(site, "anti")
    assert len(c.members) == 4 and len({m.node for m in c.members}) == 4
    with pytest.raises(grpc.RpcError) as err:
        scale(site, 4, ref="anti")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert member_names(get(site, "anti")) == [
        "anti-head-0",
        "anti-worker-0",
        "anti-worker-1",
        "anti-worker-2",
    ]

    make(site, "pack", workers=1, affinity=clusters_pb2.AFFINITY_HARD)
    (node,) = {m.node for m in running(site, "pack").members}
    scale(site, 3, ref="pack")
    assert {m.node for m in running(site, "pack").members} == {node}


def test_grown_members_end_with_the_clusters_lease(site: Site) -> None:
    """A cluster made with a 2-hour lease, grown later: the new member ends when the
    others do, not two hours (or the project's default) after the grow."""
    site.add_agent("node1")
    make(site, "leased", workers=1, lease_s=7200)
    before = running(site, "leased")
    ends = {m.name: m.lease_expires_at.ToSeconds() for m in before.members}
    assert len(set(ends.values())) == 1 and next(iter(ends.values())) > 0, ends
    scale(site, 2, ref="leased")
    after = running(site, "leased")
    grown = {m.name: m.lease_expires_at.ToSeconds() for m in after.members}
    assert sorted(grown) == ["leased-head-0", "leased-worker-0", "leased-worker-1"]
    assert set(grown.values()) == set(ends.values())


def test_a_member_destroyed_on_its_own_leaves_the_cluster(site: Site) -> None:
    """`ws destroy` of one member (as a Slurm suspend does) once left the cluster
    TERMINATING for good: no stop, start or scale worked after. The member leaves the
    cluster; the others keep it RUNNING, and a scale brings the member back."""
    site.add_agent("node1")
    make(site, "rep", workers=2)
    running(site, "rep")
    gone = next(m for m in get(site, "rep").members if m.name == "rep-worker-1")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(gone.id))
    site.stubs.wait_state(gone.id, WS.WORKSPACE_STATE_TERMINATED)
    c = get(site, "rep")
    assert c.state == CS.CLUSTER_STATE_RUNNING, c
    assert c.reason.startswith("rep-worker-1 was destroyed on its own")  # not silently
    live = [m.name for m in c.members if m.state != WS.WORKSPACE_STATE_TERMINATED]
    assert sorted(live) == ["rep-head-0", "rep-worker-0"]
    # The others can be stopped and started as a cluster, and scaled back.
    stub(site).StopCluster(clusters_pb2.ClusterRef(id="rep"))
    wait_for(lambda: get(site, "rep").state == CS.CLUSTER_STATE_STOPPED, what="rep STOPPED")
    stub(site).StartCluster(clusters_pb2.ClusterRef(id="rep"))
    running(site, "rep")
    assert list(scale(site, 2, ref="rep").added) == ["rep-worker-1"]
    c = running(site, "rep")
    assert c.reason == ""
    assert sorted(m.name for m in c.members if m.state == WS.WORKSPACE_STATE_RUNNING) == [
        "rep-head-0",
        "rep-worker-0",
        "rep-worker-1",
    ]
    # Destroying every member one by one ends the cluster.
    for m in c.members:
        if m.state != WS.WORKSPACE_STATE_TERMINATED:
            site.stubs.ws.DestroyWorkspace(site.stubs.ref(m.id))
    wait_for(lambda: get(site, "rep").state == CS.CLUSTER_STATE_TERMINATED, what="rep TERMINATED")


def test_a_member_destroyed_on_its_own_twice_is_named_once(site: Site) -> None:
    """A member put back by a scale and destroyed on its own again: the cluster named it
    twice ("rep-worker-0, rep-worker-0 were destroyed on their own"): the one it had
    replaced counted again once both were TERMINATED."""
    site.add_agent("node1")
    make(site, "rep", workers=1)
    running(site, "rep")
    for _ in range(2):
        gone = next(m for m in get(site, "rep").members if m.name == "rep-worker-0")
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(gone.id))
        site.stubs.wait_state(gone.id, WS.WORKSPACE_STATE_TERMINATED)
        c = get(site, "rep")
        assert c.reason.startswith("rep-worker-0 was destroyed on its own;"), c.reason
        assert list(scale(site, 1, ref="rep").added) == ["rep-worker-0"]  # put back
        running(site, "rep")


def test_a_scale_to_the_members_left_makes_it_the_count(site: Site) -> None:
    """After `ws destroy` of one of 2 workers, `ws cluster scale --count 1` (keep what is
    left) said "already has 1 member(s): nothing to do": the spec kept 2, and the
    cluster said for good that the member left (RUNNING 2/3). The count now follows,
    whichever index left."""
    site.add_agent("node1")
    make(site, "rep", workers=2)
    running(site, "rep")
    gone = next(m for m in get(site, "rep").members if m.name == "rep-worker-0")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(gone.id))
    site.stubs.wait_state(gone.id, WS.WORKSPACE_STATE_TERMINATED)
    assert get(site, "rep").reason.startswith("rep-worker-0 was destroyed on its own")
    r = scale(site, 1, ref="rep")
    assert (list(r.added), list(r.removed)) == ([], [])
    assert r.message.startswith("cluster rep: worker 2 → 1: keeps the 1 member(s) it has")
    c = get(site, "rep")
    assert (c.state, c.reason, spec_counts(c)) == (
        CS.CLUSTER_STATE_RUNNING,
        "",
        {"head": 1, "worker": 1},
    )
    assert member_names(c) == ["rep-head-0", "rep-worker-1"]
    assert "nothing to do" in scale(site, 1, ref="rep").message
    assert site.service is not None
    scaled = [e for e in site_events.after(site.service.env, 0) if e.kind == "cluster.scaled"]
    assert [(e.previous, e.state, e.cluster) for e in scaled] == [("2", "1", c.id)]


def test_ws_cluster_events_tells_the_members_and_the_scaling(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws cluster events NAME`: every member's events and the cluster's own (its
    scaling), nothing of a workspace beside it; `--kind cluster` only the scaling; a
    followed stream gets the next scale; an unknown cluster or kind is a clear error."""
    site.add_agent("node1")
    c = make(site, workers=1)
    site.stubs.create(name="beside", image=IMG)
    running(site)
    scale(site, 2)
    grown = running(site)

    def cli(*argv: str) -> int:
        return ws_cli.main(["--service", site.address, *argv])

    capsys.readouterr()
    assert cli("cluster", "events", "ela", "-o", "json") == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    members = {m.id for m in grown.members}
    assert {e["workspace_id"] for e in got if e["workspace_id"]} == members
    assert {e["cluster"] for e in got} == {c.id}
    created = {e["workspace_name"] for e in got if e["kind"] == "workspace.created"}
    assert created == {"ela-head-0", "ela-worker-0", "ela-worker-1"}
    assert [(e["previous"], e["state"]) for e in got if e["kind"] == "cluster.scaled"] == [
        ("1", "2")
    ]

    assert cli("cluster", "events", c.id, "--kind", "cluster") == 0  # by id too
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "cluster.scaled" in lines[0] and "worker" in lines[0], lines
    assert "1 -> 2" in lines[0] and "by user:local" in lines[0]

    assert cli("cluster", "events", "nope") != 0
    assert "nope" in capsys.readouterr().err
    assert cli("cluster", "events", "ela", "--kind", "clusters") == 2  # said before asking
    assert "unknown event kind(s) 'clusters'" in capsys.readouterr().err

    # The same through `ws-admin events --cluster` (an admin's view of the site's events).
    assert admin_cli.main(["--service", site.address, "events", "--cluster", "ela", "-o",
                           "json"]) == 0  # fmt: skip
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == got
    argv = ["--service", site.address, "events", "--cluster", c.id, "--kind", "cluster"]
    assert admin_cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == lines
    member = "ela-worker-1"
    argv = ["--service", site.address, "events", "--cluster", "ela", "--workspace", member]
    assert admin_cli.main([*argv, "-o", "json"]) == 0  # both filters must match
    mine = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert mine and mine == [e for e in got if e["workspace_name"] == member]
    assert admin_cli.main(["--service", site.address, "events", "--cluster", "nope"]) == 1
    assert "no cluster 'nope'" in capsys.readouterr().err

    seen: list[str] = []
    with Client(site.address) as client:
        stream = client.watch_cluster_events("ela", follow=True, timeout_s=30, kinds=("cluster",))
        for e in stream:  # what was, then what comes
            seen.append(f"{e.previous}->{e.state}")
            if len(seen) == 1:
                scale(site, 1)
            else:
                break
        stream.close()
    assert seen == ["1->2", "2->1"]
