"""The client's cluster, admin and workspace RPCs against in-process fake servicers:
request ids and the retry of a create, cluster waits, keyword arguments."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.unit.cluster_examples import CS, WS
from tests.unit.cluster_examples import cluster as _cluster
from workspace import errors, rpc
from workspace.client import Client, ClusterWaitFailed, ClusterWaitTimeout
from workspace.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

# -- the client against in-process fake servicers ----------------------------------------


class FakeClusters(clusters_pb2_grpc.ClustersServicer):
    def __init__(self) -> None:
        self.creates: list[clusters_pb2.CreateClusterRequest] = []
        self.fail_creates = 0
        self.fail_with = "failed to connect: connection reset"
        self.states: list[tuple[int, int]] = [
            (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING)
        ]
        self.gets = 0
        # The time each GetCluster had left when it arrived (its caller's deadline).
        self.get_deadlines: list[float] = []

    def CreateCluster(self, request: Any, context: Any) -> clusters_pb2.Cluster:
        self.creates.append(request)
        if self.fail_creates:
            self.fail_creates -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, self.fail_with)
        c = _cluster(CS.CLUSTER_STATE_STARTING)
        c.request_id = request.request_id
        return c

    def GetCluster(self, request: Any, context: Any) -> clusters_pb2.Cluster:
        self.get_deadlines.append(context.time_remaining())
        if request.id not in ("c1", "mpi"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no cluster {request.id!r}")
        state, member = self.states[min(self.gets, len(self.states) - 1)]
        self.gets += 1
        c = _cluster(state, member)
        c.reason = "mpi-worker-0 failed" if state == CS.CLUSTER_STATE_FAILED else ""
        return c


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def DrainNode(self, request: Any, context: Any) -> admin_pb2.Node:
        self.requests.append(request)
        return admin_pb2.Node(name=request.name, state=admin_pb2.NODE_STATE_DRAINING)

    def GetSchedulerInput(self, request: Any, context: Any) -> admin_pb2.SchedulerInput:
        self.requests.append(request)
        return admin_pb2.SchedulerInput(json='{"version": 1}')

    def ListQueue(self, request: Any, context: Any) -> admin_pb2.ListQueueResponse:
        return admin_pb2.ListQueueResponse(entries=[admin_pb2.QueueEntry(name="q", position=1)])


class FakeWorkspaces(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self) -> None:
        self.creates: list[workspaces_pb2.CreateWorkspaceRequest] = []

    def CreateWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        self.creates.append(request)
        return common_pb2.Workspace(id="w1", state=WS.WORKSPACE_STATE_PENDING)


Served = tuple[Client, FakeClusters, FakeAdmin, FakeWorkspaces]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = rpc.server(8)
    csvc, asvc, wsvc = FakeClusters(), FakeAdmin(), FakeWorkspaces()
    clusters_pb2_grpc.add_ClustersServicer_to_server(csvc, server)
    admin_pb2_grpc.add_AdminServicer_to_server(asvc, server)
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(wsvc, server)
    address = f"unix:{tmp_path}/s.sock"
    rpc.bind(server, address)
    server.start()
    client = Client(address, timeout_s=5)
    try:
        yield client, csvc, asvc, wsvc
    finally:
        client.close()
        server.stop(0).wait()


def test_create_cluster_adds_a_request_id_and_retries(served: Served) -> None:
    client, csvc, _, _ = served
    req = clusters_pb2.CreateClusterRequest(
        name="mpi", members=[clusters_pb2.ClusterMember(role="a", image="i")]
    )
    csvc.fail_creates = 1
    c = client.create_cluster(req)
    first, second = csvc.creates
    assert first.request_id and first.request_id == second.request_id == c.request_id
    assert req.request_id == ""  # the caller's message is left alone
    # The service went away under the call (it may have made the cluster): sent again,
    # the same id, until it answers (test_client.py has the workspace's cases).
    csvc.creates.clear()
    csvc.fail_creates = 3
    assert client.create_cluster(req, request_id="cut").request_id == "cut"
    assert [r.request_id for r in csvc.creates] == ["cut"] * 4
    # Nothing left this process (no service there): sent again once, then the error.
    csvc.creates.clear()
    csvc.fail_with = "failed to connect to all addresses; last error: refused"
    csvc.fail_creates = 2
    with pytest.raises(errors.Unavailable):
        client.create_cluster(req, request_id="mine")
    assert [r.request_id for r in csvc.creates] == ["mine", "mine"]


def test_create_cluster_from_keywords(served: Served) -> None:
    client, csvc, _, _ = served
    client.create_cluster(
        name="mpi",
        members=[
            {"role": "head", "image": "a", "networks": ("default",), "requirements": {"gpu": 1}},
            clusters_pb2.ClusterMember(role="worker", image="b", count=16),
        ],
        affinity="hard-anti",
        on_failure="teardown",
        wait_for_capacity_s=60,
    )
    sent = csvc.creates[0]
    assert (sent.name, sent.affinity, sent.on_failure, sent.wait_for_capacity_s) == (
        "mpi",
        clusters_pb2.AFFINITY_HARD_ANTI,
        clusters_pb2.FAILURE_POLICY_TEARDOWN,
        60,
    )
    assert list(sent.members[0].networks) == ["default"]
    assert dict(sent.members[0].requirements) == {"gpu": "1"}
    assert sent.members[1].count == 16 and len(sent.request_id) == 36
    with pytest.raises(TypeError, match="not both"):
        client.create_cluster(sent, name="x")
    with pytest.raises(ValueError, match="not one of"):
        client.create_cluster(name="x", affinity="diagonal")


def test_create_cluster_names_the_project_charged(served: Served) -> None:
    # A member of several projects must name one (as `ws cluster create --project`);
    # the keywords had no project, so such a user could not create a cluster with them.
    client, csvc, _, _ = served
    client.create_cluster(name="mpi", members=[{"role": "w", "image": "a"}], project="phys")
    assert csvc.creates[0].project == "phys"
    req = clusters_pb2.CreateClusterRequest(name="mpi", project="bio")
    client.create_cluster(req)
    assert csvc.creates[1].project == "bio"
    with pytest.raises(TypeError, match="not both"):
        client.create_cluster(req, project="phys")


def test_wait_for_cluster_state(served: Served) -> None:
    client, csvc, _, _ = served
    csvc.states = [
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING),
        (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING),
    ]
    seen: list[tuple[int, int]] = []
    c = client.wait_for_cluster_state(
        "mpi",
        [CS.CLUSTER_STATE_RUNNING],
        10,
        lambda c: seen.append((c.state, c.members[0].state)),
        poll_s=0.01,
    )
    assert c.state == CS.CLUSTER_STATE_RUNNING and csvc.gets == 4
    assert seen == [  # only changes, members included
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING),
        (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING),
    ]


def test_wait_for_cluster_state_fails_and_times_out(served: Served) -> None:
    client, csvc, _, _ = served
    csvc.states = [(CS.CLUSTER_STATE_FAILED, WS.WORKSPACE_STATE_FAILED)]
    with pytest.raises(
        ClusterWaitFailed, match="cluster mpi is FAILED: mpi-worker-0 failed"
    ) as exc:
        client.wait_for_cluster_state("mpi", [CS.CLUSTER_STATE_RUNNING], 5, poll_s=0.01)
    assert exc.value.cluster.state == CS.CLUSTER_STATE_FAILED
    # FAILED can be waited for
    got = client.wait_for_cluster_state("mpi", [CS.CLUSTER_STATE_FAILED], 5, poll_s=0.01)
    assert got.state == CS.CLUSTER_STATE_FAILED
    csvc.gets, csvc.states = 0, [(CS.CLUSTER_STATE_PENDING, WS.WORKSPACE_STATE_PENDING)]
    start = time.monotonic()
    # Named as the user knows it, with its id (it was the id alone).
    with pytest.raises(
        ClusterWaitTimeout, match=r"waiting for cluster mpi \(c1\) to be RUNNING; it is PENDING"
    ):
        client.wait_for_cluster_state("c1", [CS.CLUSTER_STATE_RUNNING], 0.3, poll_s=0.05)
    assert time.monotonic() - start < 3
    gone = client.wait_for_cluster_state("gone", [CS.CLUSTER_STATE_TERMINATED], 1)
    assert gone.state == CS.CLUSTER_STATE_TERMINATED and gone.id == "gone"
    # Never seen (a wrong name or id): the service's NOT_FOUND as it is, not "no longer
    # exists", which said a cluster that never was had been there.
    with pytest.raises(errors.NotFound, match=r"^no cluster 'gone'$") as missing:
        client.wait_for_cluster_state("gone", [CS.CLUSTER_STATE_RUNNING], 1)
    assert missing.value.code == "NOT_FOUND"


def test_a_cluster_wait_reads_within_its_own_timeout(served: Served) -> None:
    """As a workspace wait: a read is given what is left of the wait when that is less
    than the client's timeout, so a service that does not answer does not keep the wait
    going that long past its own."""
    client, csvc, _, _ = served
    csvc.states = [(CS.CLUSTER_STATE_PENDING, WS.WORKSPACE_STATE_PENDING)]
    with Client(client.address, timeout_s=60) as patient, pytest.raises(ClusterWaitTimeout):
        patient.wait_for_cluster_state("c1", [CS.CLUSTER_STATE_RUNNING], 2, poll_s=0.2)
    assert len(csvc.get_deadlines) >= 2
    assert all(t < 2.5 for t in csvc.get_deadlines), csvc.get_deadlines  # not 60


def test_admin_and_workspace_rpcs(served: Served) -> None:
    client, _, asvc, wsvc = served
    assert client.drain_node("n1").state == admin_pb2.NODE_STATE_DRAINING
    text = client.get_scheduler_input(
        cpus=2, memory_mib=64, networks=["a"], image="i", requirements={"gpu": "1"}
    )
    assert text == '{"version": 1}'
    sent = asvc.requests[1]
    assert (sent.cpus, sent.memory_mib, list(sent.networks), sent.image) == (2, 64, ["a"], "i")
    assert dict(sent.requirements) == {"gpu": "1"}
    assert [e.name for e in client.list_queue()] == ["q"]
    client.create_workspace("img", requirements={"hypervisor": "xen"}, wait_for_capacity_s=30)
    req = wsvc.creates[0]
    assert dict(req.requirements) == {"hypervisor": "xen"} and req.wait_for_capacity_s == 30
