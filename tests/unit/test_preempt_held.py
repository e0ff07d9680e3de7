"""A workspace placed by preemption is not sent to its node while a workspace it
preempted may still run there, also when that victim was destroyed while the node was
DOWN: TERMINATED at once, but its VM may still run behind the partition until the node
says it is gone (a real SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import CreateRequest, CreateSpec
from workspace.domain.states import Op, State
from workspace.node.v1 import nodes_pb2
from workspace.ops import create, operate, preempt
from workspace.store import Workspace

HOUR = 3600
RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING


def make(site: Site, name: str, memory_mib: int, preemptible: bool) -> str:
    spec = CreateSpec(image="img", name=name, memory_mib=memory_mib, preemptible=preemptible)
    return create.create(site.core.env, "alice", CreateRequest(spec)).id


def held(site: Site) -> set[str]:
    with site.store.read() as s:
        return preempt.held(s, "n1")


def full_report(site: Site, *observed: nodes_pb2.ObservedWorkspace) -> None:
    site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=True, workspaces=observed))


def test_a_victim_destroyed_while_its_node_is_down_holds_the_order_until_the_node_says(
    tmp_path: Path,
) -> None:
    site = build_site(tmp_path)  # n1: 4 vCPUs, 8 GiB
    victim = make(site, "backfill", 7000, preemptible=True)
    site.report(victim, RUNNING)
    new = make(site, "real", 2048, preemptible=False)  # fits only by preempting it
    assert held(site) == {new}
    site.clock.now += HOUR
    assert site.nodes.check_liveness() == ["n1"]
    operate.operate(site.core.env, "alice", victim, Op.DESTROY)  # TERMINATED at once
    # the node is back and its VM still runs: the new workspace is not sent yet
    full_report(site, nodes_pb2.ObservedWorkspace(workspace_id=victim, state=RUNNING))
    assert held(site) == {new}
    # the node removed it: the new workspace goes out
    full_report(site)
    assert held(site) == set()
    with site.store.read() as s:
        row = s.scalars(select(Workspace).where(Workspace.id == new)).one()
        assert row.preempted_by == "" and not row.reason.startswith("waiting for")
        gone = s.scalars(select(Workspace).where(Workspace.id == victim)).one()
        assert gone.state == State.TERMINATED.value and gone.claimed_memory_mib == 0
