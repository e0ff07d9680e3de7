"""Virtual clusters, waiting for capacity, and node drain over real gRPC (fake driver)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import pytest

from agent import link
from tests.functional.harness import WS, Site, wait_for
from workspace.cli.ws import main as ws_main
from workspace.v1 import admin_pb2, clusters_pb2, clusters_pb2_grpc, workspaces_pb2

CS = clusters_pb2.ClusterState


def stub(site: Site) -> clusters_pb2_grpc.ClustersStub:
    return clusters_pb2_grpc.ClustersStub(site.stubs.channel)


def member(
    role: str, count: int = 1, cpus: int = 1, memory_mib: int = 512, image: str = "img"
) -> clusters_pb2.ClusterMember:
    return clusters_pb2.ClusterMember(
        role=role, image=image, cpus=cpus, memory_mib=memory_mib, count=count
    )


def cluster_state(site: Site, ref: str) -> int:
    return stub(site).GetCluster(clusters_pb2.ClusterRef(id=ref)).state


@pytest.fixture
def three_nodes(site: Site) -> Site:
    site.stubs.network()
    site.stubs.import_image("img")
    for n in ("node1", "node2", "node3"):
        site.add_agent(n, cpus=4, memory_mib=4096)
    return site


def test_cluster_is_placed_whole_and_managed_as_one(three_nodes: Site) -> None:
    site = three_nodes
    c = stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="mpi",
            members=[member("head"), member("worker", count=2)],
            affinity=clusters_pb2.AFFINITY_HARD_ANTI,
        )
    )
    assert sorted(m.name for m in c.members) == ["mpi-head-0", "mpi-worker-0", "mpi-worker-1"]
    assert len({m.node for m in c.members}) == 3  # hard anti-affinity: one per node
    assert len({m.nics[0].ip for m in c.members}) == 3
    wait_for(lambda: cluster_state(site, "mpi") == CS.CLUSTER_STATE_RUNNING, what="RUNNING")

    stub(site).StopCluster(clusters_pb2.ClusterRef(id="mpi"))
    wait_for(lambda: cluster_state(site, "mpi") == CS.CLUSTER_STATE_STOPPED, what="STOPPED")
    stub(site).StartCluster(clusters_pb2.ClusterRef(id="mpi"))
    wait_for(lambda: cluster_state(site, "mpi") == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
    stub(site).DestroyCluster(clusters_pb2.ClusterRef(id="mpi"))
    wait_for(lambda: cluster_state(site, "mpi") == CS.CLUSTER_STATE_TERMINATED, what="gone")
    for agent in site.agents.values():
        wait_for(lambda a=agent: a.driver.list_domains() == [], what="domains removed")
    nodes = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert all(n.used_cpus == 0 and n.used_memory_mib == 0 for n in nodes)


def test_members_are_listed_in_the_order_of_roles_then_by_index(three_nodes: Site) -> None:
    """`ws cluster show` (and exec, scp) list the members as their roster does: the
    spec's roles in order, each by index (worker-2 before worker-10; the head after the
    workers if the spec says so)."""
    c = stub(three_nodes).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="big", members=[member("worker", count=11, memory_mib=64), member("head")]
        )
    )
    wanted = [f"big-worker-{i}" for i in range(11)] + ["big-head-0"]
    assert [m.name for m in c.members] == wanted
    shown = stub(three_nodes).GetCluster(clusters_pb2.ClusterRef(id="big"))
    assert [m.name for m in shown.members] == wanted


def test_cluster_that_does_not_fit_leaves_nothing(three_nodes: Site) -> None:
    site = three_nodes
    with pytest.raises(grpc.RpcError) as err:
        stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="big",
                members=[member("head"), member("worker", count=4)],
                affinity=clusters_pb2.AFFINITY_HARD_ANTI,
            )
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "member big-" in err.value.details()
    assert "does not fit" in err.value.details()
    assert "cluster big" in err.value.details()
    listed = site.stubs.ws.ListWorkspaces(
        workspaces_pb2.ListWorkspacesRequest(include_terminated=True)
    ).workspaces
    assert list(listed) == []
    assert (
        list(
            stub(site)
            .ListClusters(clusters_pb2.ListClustersRequest(include_terminated=True))
            .clusters
        )
        == []
    )
    nodes = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert all(n.used_cpus == 0 for n in nodes)


def test_failed_member_tears_down_cluster_when_asked(site: Site) -> None:
    """Under teardown the cluster ends FAILED (as under keep), with the reason, its members
    torn down; it can be neither started nor scaled; `ws cluster destroy` ends it."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"fail_create": ["*-bad-*"]})
    c = stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="tear",
            members=[member("good"), member("bad")],
            on_failure=clusters_pb2.FAILURE_POLICY_TEARDOWN,
        )
    )
    wait_for(lambda: cluster_state(site, c.id) == CS.CLUSTER_STATE_FAILED, what="FAILED")
    ref = clusters_pb2.ClusterRef(id=c.id)
    wait_for(
        lambda: all(
            m.state == WS.WORKSPACE_STATE_TERMINATED for m in stub(site).GetCluster(ref).members
        ),
        what="members torn down",
    )
    got = stub(site).GetCluster(ref)
    assert got.state == CS.CLUSTER_STATE_FAILED  # stays FAILED once its members are gone
    assert got.reason.startswith("torn down after a failure: member tear-bad-0 is FAILED: ")
    assert "injected failure" in got.reason
    for call, words in (
        (
            lambda: stub(site).StartCluster(ref),
            "cannot start cluster tear: it is FAILED and was torn down (torn down after",
        ),
        (
            lambda: stub(site).ScaleCluster(
                clusters_pb2.ScaleClusterRequest(id=c.id, role="good", count=2)
            ),
            "cluster tear is FAILED and was torn down",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in err.value.details()
    assert cluster_state(site, c.id) == CS.CLUSTER_STATE_FAILED
    # Its name is still taken (as a kept FAILED cluster's) until it is destroyed.
    with pytest.raises(grpc.RpcError) as err:
        stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(name="tear", members=[member("good")])
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub(site).DestroyCluster(ref)
    gone = stub(site).GetCluster(ref)
    assert gone.state == CS.CLUSTER_STATE_TERMINATED
    assert gone.reason.startswith("torn down after a failure: member tear-bad-0")


def test_lost_member_tears_down_cluster_saying_so(tmp_path: Path) -> None:
    """A member LOST with its node (DOWN) also tears a teardown cluster down; the
    cluster's reason says the member was lost, not that it failed to start."""
    site = Site(tmp_path, node_grace_s=2)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", fake={"persist": True})
        c = stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="lo",
                members=[member("a")],
                on_failure=clusters_pb2.FAILURE_POLICY_TEARDOWN,
            )
        )
        wait_for(lambda: cluster_state(site, c.id) == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
        site.agents.pop("node1").stop_event.set()  # cut off: node1 DOWN, lo-a-0 LOST
        wait_for(
            lambda: cluster_state(site, c.id) == CS.CLUSTER_STATE_FAILED,
            timeout_s=20,
            what="FAILED",
        )
        got = stub(site).GetCluster(clusters_pb2.ClusterRef(id=c.id))
        assert got.reason == (
            "torn down after member lo-a-0 was LOST with its node: node node1 stopped "
            "reporting; the workspace was not restarted elsewhere"
        )
        assert [m.state for m in got.members] == [WS.WORKSPACE_STATE_TERMINATED]
    finally:
        site.close()


def test_failed_member_is_kept_by_default(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", fake={"fail_create": ["*-bad-*"]})
    c = stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(name="keep", members=[member("good"), member("bad")])
    )
    wait_for(lambda: cluster_state(site, c.id) == CS.CLUSTER_STATE_FAILED, what="FAILED")
    got = stub(site).GetCluster(clusters_pb2.ClusterRef(id=c.id))
    assert "keep-bad-0" in got.reason
    site.stubs.wait_state("keep-good-0", WS.WORKSPACE_STATE_RUNNING)  # kept, and it runs


def test_drained_node_gets_no_new_work(three_nodes: Site) -> None:
    site = three_nodes
    for n in ("node1", "node2"):
        site.stubs.admin.DrainNode(admin_pb2.NodeRef(name=n))
    w = site.stubs.create(name="only-node3")
    assert w.node == "node3"
    site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="node3"))
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="nowhere")
    assert "3 node(s) are DRAINING" in err.value.details()
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)  # running ones keep running
    site.stubs.admin.EnableNode(admin_pb2.NodeRef(name="node1"))
    assert site.stubs.create(name="again").node == "node1"
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node3"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    site.stop_agent("node2")
    site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node2"))
    names = [n.name for n in site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes]
    assert names == ["node1", "node3"]


def test_waiting_for_capacity_and_fifo_order(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    first = site.stubs.create(name="first", memory_mib=1500)
    # no room now: without waiting it fails at once, with waiting it is queued
    with pytest.raises(grpc.RpcError):
        site.stubs.create(name="second", memory_mib=1500)
    second = site.stubs.create(name="second", memory_mib=1500, wait_for_capacity_s=60)
    assert second.state == WS.WORKSPACE_STATE_PENDING
    assert "waiting for capacity" in second.reason
    third = site.stubs.create(name="third", memory_mib=100, wait_for_capacity_s=60)
    # `third` would fit now, but only by taking what `second` waits for: it must queue
    assert third.state == WS.WORKSPACE_STATE_PENDING
    queue = site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries
    assert [(e.name, e.position) for e in queue] == [("second", 1), ("third", 2)]

    site.stubs.ws.DestroyWorkspace(site.stubs.ref(first.id))
    site.stubs.wait_state(second.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.wait_state(third.id, WS.WORKSPACE_STATE_RUNNING)  # both fit once it is gone
    assert list(site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries) == []


def test_a_cluster_waiting_for_capacity_is_not_stopped_or_grown_but_keeps_its_turn(
    site: Site,
) -> None:
    """A stop of a cluster waiting for capacity is FAILED_PRECONDITION, as a waiting
    workspace's is (docs/api.md). It made its members STOPPING with no node to stop them:
    the cluster left the queue, never started when room came, and could not be started.
    A grow is refused too: its new member was placed at once, on the node the waiting
    ones held, and the cluster (placed all or nothing) said STARTING, partly placed."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    first = site.stubs.create(name="first", memory_mib=1500)
    ref = clusters_pb2.ClusterRef(id="waits")
    stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="waits", members=[member("w", count=2, memory_mib=300)], wait_for_capacity_s=60
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        stub(site).StopCluster(ref)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "cluster waits is waiting for capacity; destroy it to cancel"
    grow = clusters_pb2.ScaleClusterRequest(id="waits", role="w", count=3)
    with pytest.raises(grpc.RpcError) as err:
        stub(site).ScaleCluster(grow)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot grow cluster waits: it is waiting for capacity" in err.value.details()
    assert cluster_state(site, "waits") == CS.CLUSTER_STATE_PENDING
    queue = site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries
    assert [(e.name, e.position) for e in queue] == [("waits", 1)]
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(first.id))
    wait_for(lambda: cluster_state(site, "waits") == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
    stub(site).StopCluster(ref)
    wait_for(lambda: cluster_state(site, "waits") == CS.CLUSTER_STATE_STOPPED, what="STOPPED")


def test_a_start_of_a_cluster_waiting_for_capacity_is_refused_as_a_workspaces_is(
    site: Site,
) -> None:
    """StartCluster of a cluster waiting for capacity answered OK (changing nothing) while
    StartWorkspace of a waiting workspace is FAILED_PRECONDITION (docs/api.md: operations
    other than destroy are refused while a create waits). Both are refused now; a start of
    the running cluster with a grow waiting is a start asked again, and is accepted."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    first = site.stubs.create(name="first", memory_mib=1500)
    lone = site.stubs.create(name="lone", memory_mib=1200, wait_for_capacity_s=60)
    ref = clusters_pb2.ClusterRef(id="waits")
    stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="waits", members=[member("w", count=2, memory_mib=300)], wait_for_capacity_s=60
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.ws.StartWorkspace(site.stubs.ref(lone.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "workspace lone is waiting for capacity; destroy it to cancel"
    with pytest.raises(grpc.RpcError) as err:
        stub(site).StartCluster(ref)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "cluster waits is waiting for capacity; destroy it to cancel"
    queue = site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries
    assert [e.name for e in queue] == ["lone", "waits"]
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(first.id))
    wait_for(lambda: cluster_state(site, "waits") == CS.CLUSTER_STATE_RUNNING, what="RUNNING")
    # Running, with a grow waiting (no room left for a third member): a start asked again.
    with pytest.raises(grpc.RpcError):
        for n in range(20):  # fill node1
            site.stubs.create(name=f"fill{n}", memory_mib=300)
    grow = clusters_pb2.ScaleClusterRequest(id="waits", role="w", count=3, wait_for_capacity_s=60)
    assert "waiting for capacity" in stub(site).ScaleCluster(grow).message
    stub(site).StartCluster(ref)  # accepted; the grow keeps waiting
    assert [e.name for e in site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries] == [
        "waits"
    ]


def test_backfill_only_on_nodes_useless_to_the_head(site: Site) -> None:
    site.stubs.network()
    site.stubs.network("other", "10.214.0.0/24")
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    site.add_agent("node2", cpus=2, memory_mib=2048, networks=[{"name": "other"}])
    site.stubs.create(name="hog", memory_mib=1500)
    head = site.stubs.create(name="head", memory_mib=1500, wait_for_capacity_s=60)
    assert head.state == WS.WORKSPACE_STATE_PENDING
    # node2 cannot serve `head` (no default network): using it cannot delay it
    small = site.stubs.create(
        name="small", memory_mib=100, networks=["other"], wait_for_capacity_s=60
    )
    assert small.node == "node2"
    assert small.state == WS.WORKSPACE_STATE_SCHEDULED


def test_queued_request_fails_at_its_deadline(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=1, memory_mib=1024)
    site.stubs.create(name="hog", memory_mib=800)
    w = site.stubs.create(name="late", memory_mib=800, wait_for_capacity_s=1)
    got = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_FAILED, timeout_s=15)
    assert "no capacity in time" in got.reason
    assert list(site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries) == []
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)


def test_a_request_no_node_could_ever_hold_is_refused_at_once_not_queued(site: Site) -> None:
    """Waiting only helps what some node could hold once emptied: a request larger than
    every node (even a drained one) or on a network no node has is refused now, with
    the reason, and leaves nothing behind (no row, no queue entry, the name free)."""
    site.stubs.network()
    site.stubs.network("other", "10.77.0.0/24")
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    site.add_agent("node2", cpus=8, memory_mib=8192)  # 32 vCPUs at 4x
    site.stubs.create(name="hog", memory_mib=1800, cpus=2)
    site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="node2"))  # it may come back
    for kwargs in ({"cpus": 64}, {"memory_mib": 16384}, {"networks": ["other"]}):
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.create(name="huge", wait_for_capacity_s=600, **kwargs)
        assert time.monotonic() - t0 < 10  # not the 600 s asked for
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "not queued: even on an empty, READY node of the site, huge does not fit" in (
            err.value.details() or ""
        )
    assert list(site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries) == []
    names = [
        w.name
        for w in site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    ]
    assert names == ["hog"]
    # What the drained node could hold once back still waits for it.
    w = site.stubs.create(name="huge", memory_mib=6000, wait_for_capacity_s=600)
    assert w.state == WS.WORKSPACE_STATE_PENDING


def test_a_create_no_node_could_ever_hold_says_waiting_would_not_help_unasked(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without wait_for_capacity_s, a create (and a cluster create) that could never fit
    got a bare RESOURCE_EXHAUSTED: a program retrying it on that code retried forever. It
    now ends with the same words as when it asks to wait."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="huge", memory_mib=16384)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    said = err.value.details() or ""
    assert "even on an empty, READY node of the site, huge does not fit" in said
    assert said.endswith("so waiting would not help") and "not queued" not in said
    capsys.readouterr()  # and ws says it as the service does
    argv = ["--service", site.address, "create", "--image", "img", "--memory-mib", "16384"]
    assert ws_main(argv) != 0
    assert capsys.readouterr().err.rstrip().endswith("so waiting would not help")
    with pytest.raises(grpc.RpcError) as err:
        stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(name="big", members=[member("w", cpus=64)])
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.value.details() or "").endswith("so waiting would not help")
    # One that fits an emptied node but not now is still the plain refusal.
    site.stubs.create(name="hog", memory_mib=1800)
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="later", memory_mib=1800)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would not help" not in (err.value.details() or "")


def test_a_queued_request_fails_when_the_last_node_that_could_hold_it_is_removed(
    site: Site,
) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    site.add_agent("node2", cpus=8, memory_mib=8192)
    site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="node2"))
    w = site.stubs.create(name="big", memory_mib=6000, wait_for_capacity_s=600)
    assert w.state == WS.WORKSPACE_STATE_PENDING  # node2 may be enabled again
    site.stop_agent("node2")
    site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node2"))
    got = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_FAILED, timeout_s=30)
    assert got.reason.startswith(
        "no longer fits even on an empty node of the site: big does not fit: "
    )
    assert list(site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries) == []


def test_a_member_no_node_could_ever_hold_is_refused_a_group_too_big_for_now_waits(
    site: Site,
) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=4096)
    with pytest.raises(grpc.RpcError) as err:
        stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="c",
                members=[member("head", memory_mib=512), member("w", count=2, cpus=64)],
                wait_for_capacity_s=600,
            )
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "empty, READY node of the site, member c-w-0 does not fit" in (err.value.details() or "")
    listed = stub(site).ListClusters(clusters_pb2.ListClustersRequest()).clusters
    assert list(listed) == []
    # Each member would fit a node, but not all of them together on one (HARD affinity),
    # nor on as many different nodes as members (HARD_ANTI): those wait, as nodes may be
    # added to the site meanwhile.
    site.add_agent("node2", cpus=4, memory_mib=4096)
    for affinity, size in (
        (clusters_pb2.AFFINITY_HARD, 1500),  # 3 x 1500 MiB on one 4 GiB node
        (clusters_pb2.AFFINITY_HARD_ANTI, 500),  # 3 members on 3 of 2 nodes
    ):
        c = stub(site).CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name=f"c{affinity}",
                members=[member("w", count=3, memory_mib=size)],
                affinity=affinity,
                wait_for_capacity_s=600,
            )
        )
        assert c.state == CS.CLUSTER_STATE_PENDING


def test_cluster_waits_whole_and_is_never_partly_started(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=3000)
    hog = site.stubs.create(name="hog", memory_mib=1500)
    c = stub(site).CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="later", members=[member("w", count=2, memory_mib=1000)], wait_for_capacity_s=60
        )
    )
    assert c.state == CS.CLUSTER_STATE_PENDING
    assert all(m.state == WS.WORKSPACE_STATE_PENDING and not m.node for m in c.members)
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(hog.id))
    wait_for(lambda: cluster_state(site, c.id) == CS.CLUSTER_STATE_RUNNING, what="RUNNING")


def test_an_agent_whose_node_was_removed_says_so_once(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reports are refused (NOT_FOUND); it once logged a bare 'report to service
    failed: NOT_FOUND' at every heartbeat, with no word of why."""
    site.stubs.network()
    site.add_agent("node1")
    caplog.set_level(logging.DEBUG, logger="agent")
    site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node1"))
    said = "the service does not know node node1 (removed with `ws-admin node remove`?)"
    wait_for(lambda: any(said in r.getMessage() for r in caplog.records), what="a refusal")
    time.sleep(3.5)  # three more heartbeats (1 s in this harness)
    told = [r for r in caplog.records if said in r.getMessage()]
    assert [r.levelno for r in told if r.levelno > logging.DEBUG] == [logging.ERROR]
    assert not any("NOT_FOUND" in r.getMessage() for r in caplog.records)


def test_a_node_removed_between_register_and_stream_registers_again_quietly(
    site: Site, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent is not connected until its order stream delivers: removed in between,
    its stream fails, it registers again, and no report was sent (and refused) meanwhile."""
    site.stubs.network()
    removed: list[str] = []

    class RemovedFirst(link.nodes_pb2_grpc.NodesStub):
        def __init__(self, channel: grpc.Channel) -> None:
            super().__init__(channel)
            watch = self.WatchAssignments

            def watch_after_removal(req: object, **kw: object) -> object:
                if not removed:  # the first stream only
                    site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name=req.node))  # type: ignore[attr-defined]
                    removed.append(req.node)  # type: ignore[attr-defined]
                return watch(req, **kw)

            self.WatchAssignments = watch_after_removal  # type: ignore[method-assign]

    monkeypatch.setattr(link.nodes_pb2_grpc, "NodesStub", RemovedFirst)
    caplog.set_level(logging.DEBUG, logger="agent")
    agent = site.add_agent("node1")
    assert removed == ["node1"] and agent.link.connected()
    said = "the service does not know node node1"
    assert not any(said in r.getMessage() for r in caplog.records)
    registered = [r for r in caplog.records if "node node1 registered" in r.getMessage()]
    assert len(registered) == 2
    (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    assert (node.name, node.state) == ("node1", admin_pb2.NODE_STATE_READY)


def test_an_agent_that_lost_its_service_says_why_it_retries(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Its log line names the status and what gRPC said, not a bare status code."""
    site.stubs.network()
    site.add_agent("node1")
    caplog.set_level(logging.INFO, logger="agent")
    site.stop_service()
    said = f"service {site.node_address}: UNAVAILABLE: "
    line = wait_for(
        lambda: next((r.getMessage() for r in caplog.records if said in r.getMessage()), None),
        what="the reconnect warning",
    )
    why = line.split(said, 1)[1]
    assert "; retrying in " in why and len(why.split("; retrying in ")[0]) > 10, line
    assert "StatusCode." not in line
