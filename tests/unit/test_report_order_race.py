"""A full report says what the node had when it was built, from the orders it had then
(ops/reports.py, docs/design/agent.md "Reports"): a workspace ordered after those orders
must not be taken as gone from the node because the report does not name it. It used to
be: a workspace created and then destroyed while such a report was on its way was
released (its address and its capacity given back) while the agent, which received its
order after building the report, could still be making it, and its address could go to
another workspace while the first VM booted with it. (A real SQLite store and the
servicers' plain methods; no gRPC.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.agent import Agent
from agent.link import decode
from agent.virt.fake import FakeDriver
from tests.unit.test_request_validation import Site, build_site
from workspace import config
from workspace.codec import node as codec
from workspace.config import AgentConfig
from workspace.domain.states import Op
from workspace.node.v1 import nodes_pb2
from workspace.ops.sent_orders import SentOrders
from workspace.v1 import common_pb2


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def full_report(site: Site, sequence: int, *seen: str) -> None:
    """A full report built with the orders of ``sequence``, naming ``seen`` RUNNING."""
    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            full=True,
            orders_sequence=sequence,
            workspaces=[
                nodes_pb2.ObservedWorkspace(workspace_id=w, state=nodes_pb2.OBSERVED_STATE_RUNNING)
                for w in seen
            ],
        )
    )


def address(site: Site, wid: str) -> str:
    return site.core.get("alice", wid).nics[0].ip


def test_a_report_built_before_a_create_was_ordered_does_not_release_it(site: Site) -> None:
    old = site.create(name="old").id
    before = site.nodes.assignments("n1")  # what the agent has when it builds the report
    new = site.create(name="new").id
    ip = address(site, new)
    after = site.nodes.assignments("n1")  # the agent receives the new order...
    assert new in [a.workspace_id for a in after.assignments]
    site.core.operate("alice", new, Op.DESTROY)  # ...and the owner destroys it at once
    # The report the agent built before it received the order is applied now.
    full_report(site, before.sequence, old)
    shown = site.core.get("alice", new)
    assert shown.state != common_pb2.WORKSPACE_STATE_TERMINATED  # the node may be making it
    assert address(site, new) == ip
    other = site.create(name="other").id
    assert address(site, other) != ip  # its address is not given to another workspace
    # A report built once the agent had orders that include it says the truth.
    full_report(site, after.sequence, old, other)
    assert site.core.get("alice", new).state == common_pb2.WORKSPACE_STATE_TERMINATED


def test_a_report_built_after_the_destroy_was_ordered_releases_it(site: Site) -> None:
    new = site.create(name="new").id
    site.core.operate("alice", new, Op.DESTROY)
    latest = site.nodes.assignments("n1")  # without it: the node removes it
    full_report(site, latest.sequence)
    assert site.core.get("alice", new).state == common_pb2.WORKSPACE_STATE_TERMINATED


def test_a_number_this_service_did_not_give_out_releases_nothing_it_sent(site: Site) -> None:
    """Another replica's number, or one from before a restart: not compared; what this
    process sent the node waits for a report that says one of its own numbers."""
    new = site.create(name="new").id
    sent = site.nodes.assignments("n1")
    site.core.operate("alice", new, Op.DESTROY)
    full_report(site, sent.sequence - 1_000_000)
    assert site.core.get("alice", new).state != common_pb2.WORKSPACE_STATE_TERMINATED
    latest = site.nodes.assignments("n1")
    full_report(site, latest.sequence)
    assert site.core.get("alice", new).state == common_pb2.WORKSPACE_STATE_TERMINATED


def test_a_report_with_another_replicas_number_releases_nothing(site: Site) -> None:
    """A full report that failed over to this replica while its node's order stream
    stayed on another: what that replica sent after the report's set is not known here,
    so the report judges no workspace, not even one this process never sent (the other
    replica may have, after the set the report names)."""
    foreign = site.nodes.assignments("n1").sequence - 1_000_000
    other = site.create(name="other").id  # sent by the other replica only, say
    site.core.operate("alice", other, Op.DESTROY)
    full_report(site, foreign)
    assert site.core.get("alice", other).state != common_pb2.WORKSPACE_STATE_TERMINATED
    full_report(site, site.nodes.assignments("n1").sequence)
    assert site.core.get("alice", other).state == common_pb2.WORKSPACE_STATE_TERMINATED


def test_a_report_of_an_agent_that_says_no_sequence_releases_as_before(site: Site) -> None:
    site.nodes.assignments("n1")
    new = site.create(name="new").id
    site.nodes.assignments("n1")
    site.core.operate("alice", new, Op.DESTROY)
    full_report(site, 0)
    assert site.core.get("alice", new).state == common_pb2.WORKSPACE_STATE_TERMINATED


def test_a_pending_create_is_not_judged_missing_by_a_report_built_before_its_order(
    site: Site,
) -> None:
    before = site.nodes.assignments("n1")
    new = site.create(name="new").id
    state = site.core.get("alice", new).state
    ip = address(site, new)
    full_report(site, before.sequence)
    shown = site.core.get("alice", new)
    assert (shown.state, address(site, new)) == (state, ip)


def test_the_agent_says_the_sequence_of_the_orders_it_had_taken(tmp_path: Path) -> None:
    cfg = config.from_dict(
        AgentConfig,
        {
            "node": "n1",
            "service": "unix:/nonexistent",
            "driver": "fake",
            "state_dir": str(tmp_path / "agent"),
            "insecure": True,
        },
    )
    agent = Agent(cfg, FakeDriver(cfg.fake, cfg.state_dir))
    try:
        assert agent.sight(None).orders_sequence == 0  # no orders yet
        aset = nodes_pb2.AssignmentSet(
            sequence=7, assignments=[nodes_pb2.Assignment(workspace_id="w1", name="one")]
        )
        agent.take_orders(*decode(aset))
        sight = agent.sight(None)
        assert sight.orders_sequence == 7
        assert [o.workspace_id for o in sight.observations] == ["w1"]  # named: desired
    finally:
        agent.stop()
    said = codec.report_from_proto(
        nodes_pb2.ReportStatusRequest(node="n1", full=True, orders_sequence=7)
    )
    assert said.orders_sequence == 7


def test_what_was_sent_is_forgotten_once_a_report_judged_it() -> None:
    sent = SentOrders()
    first = sent.stamp("n1", ["a", "b"])
    second = sent.stamp("n1", ["a", "c"])
    assert sent.may_have("n1", first) == {"a", "c"}  # sent after the report's orders
    assert sent.may_have("n1", second) == set()
    third = sent.stamp("n1", ["a"])
    assert sent.may_have("n1", third - 1) == {"a"}  # not a number it gave: all it kept
    sent.stamp("n1", ["d"])
    assert sent.may_have("n1", 0) == set()  # an agent that says none: nothing kept
    assert sent.may_have("n1", 12345) is None  # not its number: the report judges nothing


def test_a_node_sent_many_sets_between_two_reports_is_still_judged() -> None:
    """A busy node (a cluster's creates, a backfill) may be sent more sets between two of
    its full reports than a list of the last few would hold: its report still says a
    number of this process's, and what went out up to it is judged (released if gone)."""
    sent = SentOrders()
    first = sent.stamp("n1", ["a"])
    for _ in range(1000):
        sent.stamp("n1", ["b"])
    taken = sent.stamp("n1", ["c"])
    sent.stamp("n1", ["d"])
    assert sent.may_have("n1", first) == {"b", "c", "d"}  # a left out: judged
    assert sent.may_have("n1", taken) == {"d"}  # b and c judged too
    other = SentOrders()  # another replica, or this one restarted
    other.stamp("n1", ["e"])
    assert other.may_have("n1", taken) is None  # not its number: nothing judged
