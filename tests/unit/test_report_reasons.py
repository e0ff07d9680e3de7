"""The reason a workspace shows follows its node's reports (ops/reports.py): a failure's
reason is not carried on once the workspace leaves FAILED (a real SQLite store and the
servicers' plain methods; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.states import Op
from workspace.node.v1 import nodes_pb2
from workspace.store import Workspace
from workspace.v1 import common_pb2


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def report(site: Site, wid: str, state: int, reason: str = "") -> None:
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            workspaces=[nodes_pb2.ObservedWorkspace(workspace_id=wid, state=state, reason=reason)],
        )
    )


def test_a_failure_reason_is_not_carried_on_once_the_workspace_leaves_failed(
    site: Site,
) -> None:
    wid = site.create(name="box").id
    report(site, wid, nodes_pb2.OBSERVED_STATE_FAILED, "create failed: no space left")
    shown = site.core.get("alice", wid)
    assert shown.state == common_pb2.WORKSPACE_STATE_FAILED
    assert shown.reason == "create failed: no space left"
    report(site, wid, nodes_pb2.OBSERVED_STATE_PROPAGATING)  # tried again
    shown = site.core.get("alice", wid)
    assert shown.state == common_pb2.WORKSPACE_STATE_PROPAGATING
    assert shown.reason == ""
    report(site, wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    shown = site.core.get("alice", wid)
    assert (shown.state, shown.reason) == (common_pb2.WORKSPACE_STATE_RUNNING, "")


def test_a_destroy_its_node_cannot_carry_out_says_why(site: Site) -> None:
    """The node fails to remove a workspace being destroyed (a QEMU the kernel cannot
    kill, a disk that cannot be deleted): it is still STOPPING (the node tries again),
    and says why rather than nothing; once gone it says it was destroyed."""
    wid = site.create(name="box").id
    report(site, wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.core.operate("alice", wid, Op.DESTROY)
    failed = "remove failed: Failed to terminate process 4242 with SIGKILL"
    report(site, wid, nodes_pb2.OBSERVED_STATE_FAILED, failed)
    shown = site.core.get("alice", wid)
    assert shown.state == common_pb2.WORKSPACE_STATE_STOPPING
    assert failed in shown.reason
    report(site, wid, nodes_pb2.OBSERVED_STATE_STOPPING)  # tried again: still said
    assert failed in site.core.get("alice", wid).reason
    report(site, wid, nodes_pb2.OBSERVED_STATE_ABSENT)
    shown = site.core.get("alice", wid)
    assert (shown.state, shown.reason) == (common_pb2.WORKSPACE_STATE_TERMINATED, "destroyed")


def test_a_workspace_whose_lease_ended_keeps_saying_so_through_a_failed_removal(
    site: Site,
) -> None:
    wid = site.create(name="box").id
    report(site, wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    expired = "lease expired at "
    with site.store.write() as s:  # what the lease loop's destroy leaves (ops/leases.py)
        ws = s.get(Workspace, wid)
        assert ws is not None
        ws.desired_state, ws.state = "TERMINATED", "STOPPING"
        ws.reason = expired + "2026-01-01T00:00:00Z"
    report(site, wid, nodes_pb2.OBSERVED_STATE_FAILED, "remove failed: busy")
    shown = site.core.get("alice", wid)
    assert shown.reason.startswith(expired) and "remove failed: busy" in shown.reason
    report(site, wid, nodes_pb2.OBSERVED_STATE_ABSENT)
    shown = site.core.get("alice", wid)
    assert shown.state == common_pb2.WORKSPACE_STATE_TERMINATED
    assert shown.reason == expired + "2026-01-01T00:00:00Z"
