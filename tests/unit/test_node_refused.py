"""A node whose agent the service refuses (a certificate other than the one the node is
bound to) says so in its reason when it is DOWN, not "no heartbeat since …"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.errors import PermissionDenied
from workspace.node.v1 import nodes_pb2
from workspace.store import Node

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
    assert n.reason.startswith(
        "its agent is refused: registered with another certificate (serial 0xa1)"
    ), n.reason
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
