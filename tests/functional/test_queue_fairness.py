"""A request waiting at the head of the capacity queue holds only the node(s) it will be
placed on: the rest of the site keeps working, and the head is placed when its node
frees (over real gRPC, fake driver)."""

from __future__ import annotations

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.v1 import admin_pb2, clusters_pb2, clusters_pb2_grpc

HELD = "1 node(s) are held for the request waiting at the head of the capacity queue"


@pytest.fixture
def busy(site: Site) -> Site:
    """Three nodes of 4 vCPUs and 4 GiB, each partly used: node1 and node2 have about
    1.5 GiB free, node3 about 2 GiB."""
    site.stubs.network()
    site.stubs.import_image("img")
    for n in ("node1", "node2", "node3"):
        site.add_agent(n, cpus=4, memory_mib=4096)
    placed = [site.stubs.create(name=f"x{i}", memory_mib=m) for i, m in ((1, 2500), (2, 2500))]
    placed.append(site.stubs.create(name="x3", memory_mib=2000))
    assert [w.node for w in placed] == ["node1", "node2", "node3"]
    return site


def queue(site: Site) -> list[admin_pb2.QueueEntry]:
    return list(site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries)


def test_a_waiting_request_holds_one_node_and_the_others_keep_working(busy: Site) -> None:
    site = busy
    hog = site.stubs.create(name="hog", memory_mib=3500, wait_for_capacity_s=600)
    assert hog.state == WS.WORKSPACE_STATE_PENDING
    [head] = queue(site)
    assert (head.name, list(head.holds)) == ("hog", ["node3"])  # the closest to fitting it

    # Later creates, normal or preemptible, run on the other nodes meanwhile.
    small = [
        site.stubs.create(name=f"s{i}", memory_mib=512, preemptible=bool(i % 2)) for i in range(4)
    ]
    assert sorted(w.node for w in small) == ["node1", "node1", "node2", "node2"]
    # Once those are full, a create is refused (a preemptible one: a normal one would
    # preempt s1 or s3), and the refusal says why node3 is not used.
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="s4", memory_mib=512, preemptible=True)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 node(s) have too little free memory, " + HELD in (err.value.details() or "")
    assert "no nodes are registered" not in (err.value.details() or "")
    # One that waits says so too, behind the head.
    q2 = site.stubs.create(name="q2", memory_mib=512, preemptible=True, wait_for_capacity_s=600)
    assert q2.state == WS.WORKSPACE_STATE_PENDING
    assert HELD in q2.reason
    assert [(e.name, e.position, list(e.holds)) for e in queue(site)] == [
        ("hog", 1, ["node3"]),
        ("q2", 2, []),
    ]
    # Each owner sees their place in the queue (`ws show`), not who else waits.
    assert site.stubs.get("hog").reason.startswith("waiting for capacity (1st in the queue): ")
    assert site.stubs.get("q2").reason.startswith("waiting for capacity (2nd in the queue): ")

    # node3 frees: the head is placed there (nothing else took it meanwhile).
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(site.stubs.get("x3").id))
    got = site.stubs.wait_state(hog.id, WS.WORKSPACE_STATE_RUNNING, timeout_s=30)
    assert got.node == "node3"
    [left] = queue(site)
    assert left.name == "q2"  # now the head: it holds the node closest to fitting it
    assert len(left.holds) == 1
    assert site.stubs.get("q2").reason.startswith("waiting for capacity (1st in the queue): ")
    # Cancelling it says so (it was never on a node that could be unreachable).
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(q2.id))
    gone = site.stubs.get(q2.id)
    assert gone.state == WS.WORKSPACE_STATE_TERMINATED
    assert gone.reason == "destroyed while waiting for capacity"
    assert queue(site) == []


def test_a_cluster_at_the_head_holds_the_fewest_nodes_that_hold_it(busy: Site) -> None:
    site = busy
    clusters = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
    c = clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="pair",
            members=[
                clusters_pb2.ClusterMember(role="w", image="img", cpus=1, memory_mib=3000, count=2)
            ],
            wait_for_capacity_s=600,
        )
    )
    assert c.state == clusters_pb2.CLUSTER_STATE_PENDING
    [head] = queue(site)
    # node3 has the most free; node1 and node2 tie, the first in name order is taken.
    assert (head.kind, list(head.holds)) == ("cluster", ["node1", "node3"])
    s = site.stubs.create(name="s", memory_mib=512)
    assert s.node == "node2"
    # `ws cluster show` says its place in the queue, as `ws show` of a workspace does.
    shown = clusters.GetCluster(clusters_pb2.ClusterRef(id="pair"))
    assert shown.reason.startswith("waiting for capacity (1st in the queue): "), shown.reason
    assert "waiting for capacity" not in shown.reason.removeprefix("waiting for capacity")
    for name in ("x1", "x3"):
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(site.stubs.get(name).id))
    wait_for(
        lambda: (
            clusters.GetCluster(clusters_pb2.ClusterRef(id="pair")).state
            == clusters_pb2.CLUSTER_STATE_RUNNING
        ),
        timeout_s=30,
        what="the cluster RUNNING",
    )
    members = clusters.GetCluster(clusters_pb2.ClusterRef(id="pair")).members
    assert sorted(m.node for m in members) == ["node1", "node3"]
    assert queue(site) == []


def test_a_cluster_destroyed_while_waiting_says_so(busy: Site) -> None:
    """A waiting cluster, destroyed: TERMINATED, and it said it was still "waiting for
    capacity: ..." (the reason it had while PENDING was kept), as `ws cluster show` and
    `ws cluster list --all` printed it."""
    clusters = clusters_pb2_grpc.ClustersStub(busy.stubs.channel)
    c = clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="big",
            members=[clusters_pb2.ClusterMember(role="w", image="img", memory_mib=3900)],
            wait_for_capacity_s=600,
        )
    )
    assert c.state == clusters_pb2.CLUSTER_STATE_PENDING
    clusters.DestroyCluster(clusters_pb2.ClusterRef(id="big"))
    gone = clusters.GetCluster(clusters_pb2.ClusterRef(id="big"))
    assert gone.state == clusters_pb2.CLUSTER_STATE_TERMINATED
    assert gone.reason == "destroyed while waiting for capacity"
    assert [m.reason for m in gone.members] == ["destroyed while waiting for capacity"]
    assert queue(busy) == []


def test_a_grow_waits_behind_the_requests_queued_before_it(site: Site) -> None:
    """A cluster's grow queued after a workspace waits behind it (first come, first
    served): it took the cluster's creation as its time in the queue, and went first."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=4, memory_mib=4096)
    clusters = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
    member = clusters_pb2.ClusterMember(role="w", image="img", memory_mib=600, count=1)
    clusters.CreateCluster(clusters_pb2.CreateClusterRequest(name="ela", members=[member]))
    ref = clusters_pb2.ClusterRef(id="ela")
    wait_for(lambda: clusters.GetCluster(ref).state == clusters_pb2.CLUSTER_STATE_RUNNING)
    site.stubs.create(name="x", memory_mib=3200)
    site.stubs.create(name="ahead", memory_mib=2000, wait_for_capacity_s=600)
    clusters.ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id="ela", role="w", count=2, wait_for_capacity_s=600)
    )
    assert [(e.name, e.position) for e in queue(site)] == [("ahead", 1), ("ela", 2)]
