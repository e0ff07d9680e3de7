"""Declared bandwidth capacity: a node that declared disk_mbps/net_mbps is never promised
more than that by the workspaces' reservations (the bandwidth filter), and its refusal
reads like the other filters'."""

from __future__ import annotations

import json

from workspace.config import SchedulerConfig
from workspace.scheduler import Affinity, NodeView, Request, Snapshot, place, place_group
from workspace.scheduler.engine import member_context, place_on
from workspace.scheduler.explain import explain
from workspace.scheduler.filters import BandwidthFilter
from workspace.scheduler.replay import from_json, to_json

CFG = SchedulerConfig()


def node(name: str, **kw: object) -> NodeView:
    base: dict[str, object] = {"state": "READY", "cpus": 64, "memory_mib": 65536}
    return NodeView(name=name, **(base | kw))  # type: ignore[arg-type]


def test_a_node_with_100_mbit_takes_two_50_mbit_workspaces_and_refuses_a_third() -> None:
    snap = Snapshot([node("n1", net_mbps=100)], CFG)
    want = Request(1, 512, net_mbps=50)
    assert place_on(snap, want).node == "n1"
    assert place_on(snap, want).node == "n1"
    third = place_on(snap, want)
    assert third.node is None
    assert third.reason() == "no node can host it: 1 node(s) have too little free bandwidth"
    # a workspace reserving nothing still fits
    assert place_on(snap, Request(1, 512)).node == "n1"


def test_undeclared_capacity_bounds_nothing() -> None:
    assert place([node("n1")], Request(1, 512, net_mbps=10**6, disk_mbps=10**6), CFG).node == "n1"


def test_used_bandwidth_counts_and_disk_and_network_are_apart() -> None:
    n = node("n1", net_mbps=100, used_net_mbps=60, disk_mbps=200, used_disk_mbps=0)
    assert place([n], Request(1, 512, net_mbps=40, disk_mbps=200), CFG).node == "n1"
    assert place([n], Request(1, 512, net_mbps=41), CFG).node is None
    assert place([n], Request(1, 512, disk_mbps=201), CFG).node is None


def test_the_filter_passes_other_nodes() -> None:
    nodes = [node("a", net_mbps=100, used_net_mbps=90), node("b", net_mbps=1000)]
    p = place(nodes, Request(1, 512, net_mbps=50), CFG)
    assert p.node == "b"
    assert p.rejected == {"have too little free bandwidth": 1}


def test_a_group_never_overbooks_a_node_and_rolls_back_whole() -> None:
    nodes = [node("a", net_mbps=100), node("b", net_mbps=100)]
    three = [Request(1, 512, net_mbps=60, member=f"m{i}") for i in range(3)]
    result = place_group(nodes, three, CFG)
    assert result.placements is None
    assert result.reason() == "2 node(s) have too little free bandwidth"
    two = place_group(nodes, three[:2], CFG)
    assert two.placements is not None
    assert sorted(p.node for p in two.placements) == ["a", "b"]


def test_filter_reason_and_activity() -> None:
    f = BandwidthFilter()
    snap = Snapshot([node("a", net_mbps=10)], CFG)
    req = Request(1, 512, net_mbps=11)
    ctx = member_context(snap, req, Affinity.NONE, 0, (0, 0, None))
    assert f.active(req, ctx)
    assert f.host_passes(snap.hosts[0], req, ctx) == "have too little free bandwidth"
    assert not f.active(Request(1, 512), ctx)


def test_explain_names_the_bandwidth_filter() -> None:
    nodes = [node("a", net_mbps=100, used_net_mbps=80)]
    ex = explain(nodes, [Request(1, 512, net_mbps=50, member="w")], CFG)
    (verdict,) = ex.steps[0].verdicts
    assert (verdict.filter, verdict.reason) == ("bandwidth", "have too little free bandwidth")


def test_replay_input_keeps_bandwidth_and_old_inputs_load() -> None:
    nodes = [node("a", net_mbps=100, used_net_mbps=20), node("b")]
    reqs = [Request(1, 512, net_mbps=30, member="w"), Request(1, 512)]
    text = to_json(nodes, reqs, CFG)
    back_nodes, back_reqs, _, _ = from_json(text)
    assert back_nodes == nodes and back_reqs == reqs
    data = json.loads(text)
    assert "net_mbps" not in data["nodes"][1] and "net_mbps" not in data["requests"][1]
