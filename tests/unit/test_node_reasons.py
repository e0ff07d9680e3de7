"""What a node and its workspaces say of why: a node whose agent the service refuses (a
certificate other than the one it is bound to) says so when DOWN, not "no heartbeat
since …"; a workspace its node makes anew (no VM there) says it is on new disks."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.test_leases import row
from tests.unit.test_request_validation import Site, build_site
from workspace.errors import PermissionDenied
from workspace.node.v1 import nodes_pb2
from workspace.ops import reports
from workspace.store import Node, Workspace
from workspace.store.site_events import EventRow

BOUND, OTHER = 0xA1, 0xB2
REQ = nodes_pb2.RegisterRequest(
    node="n1", hypervisor="fake", cpus=4, memory_mib=8192, networks=["default"]
)


def node(site: Site) -> Node:
    with site.store.read() as s:
        n = s.get(Node, "n1")
        assert n is not None
        s.expunge(n)
        return n


def grace(site: Site) -> None:
    site.clock.now += site.core.env.cfg.node_grace_s + 1


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path, register=False)
    s.nodes.register(REQ, BOUND)
    return s


def test_a_refused_agent_is_the_reason_its_node_goes_down(site: Site) -> None:
    grace(site)  # no heartbeat taken since, but its agent calls (and is refused)
    with pytest.raises(PermissionDenied, match="another certificate"):
        site.nodes.register(REQ, OTHER)
    assert site.nodes.check_liveness() == ["n1"]
    n = node(site)
    assert n.state == "DOWN"
    assert n.reason == "its agent is refused: registered with another certificate (serial 0xa1)"
    # bound again: back, and the reason goes
    site.nodes.register(REQ, BOUND)
    assert (node(site).state, node(site).reason) == ("READY", "")


def test_a_silent_node_then_refused_says_it_is_refused(site: Site) -> None:
    grace(site)
    assert site.nodes.check_liveness() == ["n1"]
    assert node(site).reason.startswith("no heartbeat since ")
    report = nodes_pb2.ReportStatusRequest(node="n1", full=True)
    with pytest.raises(PermissionDenied):
        site.nodes.report(report, OTHER)
    assert node(site).reason.startswith("its agent is refused: registered with another ")


def test_a_refusal_long_ago_is_not_the_reason(site: Site) -> None:
    with pytest.raises(PermissionDenied):
        site.nodes.register(REQ, OTHER)
    grace(site)
    grace(site)  # refused once, then silent for longer than the grace period
    assert site.nodes.check_liveness() == ["n1"]
    assert node(site).reason.startswith("no heartbeat since ")


def test_a_workspace_its_node_makes_anew_says_so(tmp_path: Path) -> None:
    """A RUNNING workspace its node reports PROPAGATING again (no VM there: a store
    restored from before its destroy, a host that lost its VMs) says it is made anew
    on new disks, in its reason and its state event, and keeps saying so once RUNNING."""
    site = build_site(tmp_path)
    wid = site.create(name="back").id
    site.report(wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    assert row(site, wid).reason == ""
    site.report(wid, nodes_pb2.OBSERVED_STATE_PROPAGATING)
    made = row(site, wid)
    assert made.state == "PROPAGATING" and made.reason == reports.remade("n1")
    assert "made anew on node n1 from its image, on new disks" in made.reason
    site.report(wid, nodes_pb2.OBSERVED_STATE_STARTING)
    site.report(wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    assert (row(site, wid).state, row(site, wid).reason) == ("RUNNING", reports.remade("n1"))
    with site.store.read() as s:
        said = [e.reason for e in s.execute(select(EventRow)).scalars()]
    assert reports.remade("n1") in said
    # a first create's PROPAGATING says nothing of the kind
    other = site.create(name="first").id
    site.report(other, nodes_pb2.OBSERVED_STATE_PROPAGATING)
    site.report(other, nodes_pb2.OBSERVED_STATE_RUNNING)
    assert row(site, other).reason == ""


@pytest.mark.parametrize(
    ("desired", "seen"),
    [
        (None, nodes_pb2.OBSERVED_STATE_RUNNING),
        ("PAUSED", nodes_pb2.OBSERVED_STATE_PAUSED),
        ("STOPPED", nodes_pb2.OBSERVED_STATE_STOPPED),
    ],
)
def test_a_lost_workspace_whose_node_comes_back_no_longer_says_it_is_lost(
    tmp_path: Path, desired: str | None, seen: int
) -> None:
    """LOST with its node, then the node reports it again (a partition healed, an agent
    restarted): its state is the node's, and the LOST reason ("node n1 stopped
    reporting; …") goes. A PAUSED one kept it: `ws show` said PAUSED, its node gone."""
    site = build_site(tmp_path)
    wid = site.create(name="back").id
    site.report(wid, seen)
    if desired is not None:
        with site.store.write() as s:
            s.get(Workspace, wid).desired_state = desired  # type: ignore[union-attr]
    grace(site)
    assert site.nodes.check_liveness() == ["n1"]
    assert "node n1 stopped reporting" in row(site, wid).reason
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            full=True,
            workspaces=[nodes_pb2.ObservedWorkspace(workspace_id=wid, state=seen)],
        )
    )
    back = row(site, wid)
    assert back.state == nodes_pb2.ObservedState.Name(seen).removeprefix("OBSERVED_STATE_")
    assert back.reason == ""
