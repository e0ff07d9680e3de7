"""The reason a workspace shows follows its node's reports (ops/reports.py): a failure's
reason is not carried on once the workspace leaves FAILED (a real SQLite store and the
servicers' plain methods; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.node.v1 import nodes_pb2
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
