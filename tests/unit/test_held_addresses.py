"""Every way a workspace is destroyed while its node is DOWN goes through the same path:
TERMINATED at once, its addresses and claim held until the node's word (a real SQLite
store, the operations and the servicers' plain methods; no gRPC)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.unit.test_leases import ABSENT, HOUR, env, make, row
from tests.unit.test_leases import site as site
from tests.unit.test_request_validation import Site
from workspace.domain.events import Kind
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.domain.states import Desired, Op, State
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, leases, nodes, operate
from workspace.store import IpAllocation
from workspace.store.site_events import EventRow

RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING


def addresses(site: Site) -> int:
    with site.store.read() as s:
        return int(s.scalar(select(func.count()).select_from(IpAllocation)) or 0)


def released(site: Site, wid: str) -> list[str]:
    with site.store.read() as s:
        return list(
            s.scalars(
                select(EventRow.reason).where(
                    EventRow.workspace_id == wid, EventRow.kind == Kind.WORKSPACE_RELEASED.value
                )
            )
        )


def full_report(site: Site, *observed: nodes_pb2.ObservedWorkspace) -> None:
    site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=True, workspaces=observed))


def held(site: Site, wid: str) -> None:
    ws = row(site, wid)
    assert (ws.state, ws.desired_state) == (State.TERMINATED.value, Desired.TERMINATED.value)
    assert "held until node n1 confirms the VM is gone: address 10.0.0." in ws.reason
    assert addresses(site) == 1
    assert site.node_usage() != (0, 0)
    assert released(site, wid) == []


def test_a_lease_that_ends_on_a_lost_workspace_holds_its_address(site: Site) -> None:
    wid = make(site, "a", "chem", lease_s=HOUR)
    site.clock.now += HOUR
    assert site.nodes.check_liveness() == ["n1"]
    assert row(site, wid).state == State.LOST.value
    assert leases.check(env(site)).expired == [wid]
    held(site, wid)
    # the node is back and still runs the VM: still held
    full_report(site, nodes_pb2.ObservedWorkspace(workspace_id=wid, state=RUNNING))
    held(site, wid)
    # its reconciliation removed the domain: the next full report does not list it
    full_report(site)
    assert addresses(site) == 0
    assert site.node_usage() == (0, 0)
    assert released(site, wid) == ["node n1 confirmed the VM is gone"]
    full_report(site)  # released once
    assert released(site, wid) == ["node n1 confirmed the VM is gone"]


def test_a_node_down_while_a_destroy_is_under_way_holds_the_address(site: Site) -> None:
    wid = make(site, "a")
    operate.operate(env(site), "alice", wid, Op.DESTROY)
    assert row(site, wid).state == State.STOPPING.value
    site.clock.now += HOUR
    assert site.nodes.check_liveness() == ["n1"]
    held(site, wid)
    assert "its node went down" in row(site, wid).reason
    # an ABSENT observation is the node's word too
    site.report(wid, ABSENT)
    assert addresses(site) == 0
    assert released(site, wid) == ["node n1 confirmed the VM is gone"]


@pytest.mark.parametrize("again", [False, True])
def test_a_destroy_of_a_lost_workspace_answers_at_once(site: Site, again: bool) -> None:
    wid = make(site, "a")
    site.clock.now += HOUR
    site.nodes.check_liveness()
    view = operate.operate(env(site), "alice", wid, Op.DESTROY)
    assert view.state is State.TERMINATED
    if again:  # a second destroy changes nothing
        operate.operate(env(site), "alice", wid, Op.DESTROY)
    held(site, wid)


def test_a_cluster_destroy_holds_its_lost_members_addresses(site: Site) -> None:
    members = (MemberSpec(role="head", image="img"),)
    c = clusters.create(env(site), "alice", ClusterRequest("c1", members))
    (wid,) = [m.id for m in c.members]
    site.report(wid, RUNNING)
    site.clock.now += HOUR
    site.nodes.check_liveness()
    clusters.operate(env(site), "alice", "c1", Op.DESTROY)
    held(site, wid)
    full_report(site)
    assert addresses(site) == 0


def test_removing_the_node_publishes_the_released_workspace(site: Site) -> None:
    """`ws-admin node remove` released what a destroyed LOST workspace held, but wrote it
    outside a unit of work: a `ws watch` open then saw nothing until its next re-read
    and the queue did not wake. It is published as the node's own confirmation is."""
    wid = make(site, "a")
    site.clock.now += HOUR
    site.nodes.check_liveness()
    operate.operate(env(site), "alice", wid, Op.DESTROY)
    held(site, wid)
    notifier = env(site).notifier
    watcher = notifier.subscribe(lambda v: v.id == wid)
    queue_at = notifier.wait_capacity(-1, 0)
    nodes.remove(env(site), "n1")
    assert addresses(site) == 0 and released(site, wid) == ["node n1 was removed"]
    seen = watcher.events.get_nowait()
    assert seen is not None and seen.state is State.TERMINATED
    assert "node n1 was removed" in seen.reason
    assert notifier.wait_capacity(queue_at, 0) > queue_at
