"""The reboots a node carried out: what the agent reports (ObservedWorkspace
.applied_reboot_count), what the service keeps of it (ops/reports.py) and shows
(Workspace.applied_reboot_count), and what an older agent, which does not send it,
leaves (a real SQLite store and the servicers' plain methods; no gRPC)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.codec import node as codec_node
from workspace.domain.model import Observation
from workspace.domain.states import Observed, Op
from workspace.node.v1 import nodes_pb2
from workspace.store import Workspace
from workspace.v1 import common_pb2

RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def report(site: Site, wid: str, applied: int | None, state: int = RUNNING) -> None:
    """A report of ``wid`` as an agent sends it (``applied`` None: an older agent)."""
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            workspaces=[
                nodes_pb2.ObservedWorkspace(
                    workspace_id=wid, state=state, applied_reboot_count=applied
                )
            ],
        )
    )


def test_the_count_crosses_the_node_codec_and_an_older_agents_report_has_none() -> None:
    obs = Observation("w1", Observed.RUNNING, applied_reboot_count=3)
    sent = codec_node.observation_to_proto(obs)
    assert sent.HasField("applied_reboot_count") and sent.applied_reboot_count == 3
    assert codec_node.observation_from_proto(sent) == obs
    zero = codec_node.observation_to_proto(replace(obs, applied_reboot_count=0))
    assert zero.HasField("applied_reboot_count")  # 0 is said, not left out
    assert codec_node.observation_from_proto(zero) == replace(obs, applied_reboot_count=0)
    old = nodes_pb2.ObservedWorkspace(workspace_id="w1", state=RUNNING)  # an older agent
    assert codec_node.observation_from_proto(old) == replace(obs, applied_reboot_count=None)
    assert not codec_node.observation_to_proto(replace(obs, applied_reboot_count=None)).HasField(
        "applied_reboot_count"
    )
    bad = nodes_pb2.ObservedWorkspace(workspace_id="w1", state=RUNNING, applied_reboot_count=-2)
    assert codec_node.observation_from_proto(bad) == replace(obs, applied_reboot_count=None)


def test_a_new_workspace_shows_the_count_once_its_node_reports_it(site: Site) -> None:
    wid = site.create(name="box").id
    assert not site.core.get("alice", wid).HasField("applied_reboot_count")  # not said yet
    report(site, wid, 0)
    shown = site.core.get("alice", wid)
    assert shown.HasField("applied_reboot_count") and shown.applied_reboot_count == 0


def test_a_reboot_is_shown_carried_out_once_the_node_reports_it(site: Site) -> None:
    wid = site.create(name="box").id
    report(site, wid, 0)
    asked = site.core.operate("alice", wid, Op.REBOOT)
    assert (asked.reboot_count, asked.applied_reboot_count) == (1, 0)  # not yet carried out

    before = _row(site, wid).updated_at
    site.clock.now += 5
    watcher = site.core.env.notifier.subscribe(lambda view: view.id == wid)
    report(site, wid, 1)  # nothing but the count changed: still news for watchers
    assert watcher.events.get_nowait().applied_reboot_count == 1  # type: ignore[union-attr]
    assert _row(site, wid).updated_at == before + 5  # other replicas pick it up too
    shown = site.core.get("alice", wid)
    assert (shown.state, shown.reboot_count, shown.applied_reboot_count) == (
        common_pb2.WORKSPACE_STATE_RUNNING,
        1,
        1,
    )

    report(site, wid, 0)  # a report sent before the reboot, arriving late
    assert site.core.get("alice", wid).applied_reboot_count == 1  # never goes back
    report(site, wid, 7)  # more than was ever asked: at most the reboots asked for
    assert site.core.get("alice", wid).applied_reboot_count == 1
    report(site, wid, None)  # the node's agent was downgraded: what it said stays
    assert site.core.get("alice", wid).applied_reboot_count == 1
    assert watcher.events.empty()  # none of those changed anything


def test_an_older_agent_leaves_the_count_unset(site: Site) -> None:
    wid = site.create(name="box").id
    report(site, wid, None)
    site.core.operate("alice", wid, Op.REBOOT)
    report(site, wid, None)
    shown = site.core.get("alice", wid)
    assert shown.reboot_count == 1 and not shown.HasField("applied_reboot_count")
    assert _row(site, wid).applied_reboot_count == -1  # stored: not reported


def _row(site: Site, wid: str) -> Workspace:
    with site.store.read() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None
        return ws
