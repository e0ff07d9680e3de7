"""A lease ending on a real service with a fake-driver agent: the service's lease loop
warns, then stops the workspace through the node like a user's stop; usage stops too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.virt.base import DomainState
from tests.functional.harness import WS, Site, iter_events, wait_for
from workspace.v1 import clusters_pb2, common_pb2, usage_pb2

CS = clusters_pb2.ClusterState


@pytest.fixture
def lease_site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, lease_check_interval_s=0.2, lease_warning_s=2)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1")
        yield s
    finally:
        s.close()


def test_a_lease_expiry_stops_the_workspace_on_its_node(lease_site: Site) -> None:
    stubs = lease_site.stubs
    ws = stubs.create(name="short", lease_s=4)
    assert ws.HasField("lease_expires_at")
    reasons: list[str] = []
    for event in iter_events(stubs, ws.id):
        reasons.append(event.workspace.reason)
        if event.workspace.state == WS.WORKSPACE_STATE_STOPPED:
            break
        assert len(reasons) < 100, reasons
    assert any(r.startswith("lease ends at ") for r in reasons), reasons
    assert any(r.startswith("lease expired at ") for r in reasons), reasons
    stopped = stubs.get(ws.id)
    assert stopped.desired_state == common_pb2.DESIRED_STATE_STOPPED
    # the node acted on it: its domain is shut off, not gone
    (dom,) = [
        d for d in lease_site.agents["node1"].driver.list_domains() if d.workspace_id == ws.id
    ]
    assert dom.state is DomainState.SHUTOFF

    def cpu_hours() -> float:
        r = stubs.ws.GetUsage(usage_pb2.GetUsageRequest())
        return sum(row.core_hours for row in r.rows)

    first = cpu_hours()
    assert first > 0
    assert cpu_hours() == first  # stopped: no more core-hours


def test_a_clusters_ended_lease_is_extended_once_for_every_member(lease_site: Site) -> None:
    """A cluster stopped at its lease's end: a grow said to extend one member, which left
    the others' leases ended; `ws lease extend CLUSTER` (ExtendClusterLease) extends all,
    and `ws cluster start` then starts every member on its node."""
    stubs = lease_site.stubs
    member = clusters_pb2.ClusterMember(role="w", image="img", memory_mib=256, count=3)
    req = clusters_pb2.CreateClusterRequest(name="mpi", members=[member], lease_s=3)
    stubs.clusters.CreateCluster(req)
    ref = clusters_pb2.ClusterRef(id="mpi")
    wait_for(
        lambda: stubs.clusters.GetCluster(ref).state == CS.CLUSTER_STATE_STOPPED,
        what="the lease loop to stop the cluster",
    )
    with pytest.raises(grpc.RpcError) as grow:
        stubs.clusters.ScaleCluster(clusters_pb2.ScaleClusterRequest(id="mpi", role="w", count=4))
    assert "`ws lease extend mpi DURATION` first" in (grow.value.details() or "")
    extended = stubs.clusters.ExtendClusterLease(
        clusters_pb2.ExtendClusterLeaseRequest(id="mpi", add_s=3600)
    )
    assert len({m.lease_expires_at.seconds for m in extended.members}) == 1
    stubs.clusters.StartCluster(ref)
    wait_for(
        lambda: stubs.clusters.GetCluster(ref).state == CS.CLUSTER_STATE_RUNNING,
        what="every member running again",
    )
    watch = clusters_pb2.WatchClusterEventsRequest(id="mpi", kinds=["lease.extended"])
    events = list(stubs.clusters.WatchClusterEvents(watch))
    assert sorted(e.workspace_name for e in events) == ["", "mpi-w-0", "mpi-w-1", "mpi-w-2"]
