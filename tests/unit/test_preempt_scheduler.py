"""Preemption as a pure function: the fewest victims that make a request fit."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.errors import InvalidArgument
from workspace.scheduler import Affinity, NodeView, Request, place, place_group, replay
from workspace.scheduler.explain import explain_file
from workspace.scheduler.explain import main as explain_main
from workspace.scheduler.preempt import Victim, cost, plan, victims_to_dicts

# No overhead and no overcommit: the arithmetic in the tests is the node's.
CFG = SchedulerConfig(
    cpu_overcommit=1.0, overhead_fixed_mib=0, overhead_per_gib_mib=0, overhead_per_vcpu_mib=0
)


def node(name: str, victims: list[Victim], cpus: int = 8, memory_mib: int = 8192, **kw: object):
    used_c = sum(v.cpus for v in victims if v.node == name)
    used_m = sum(v.memory_mib for v in victims if v.node == name)
    base: dict[str, object] = {"state": "READY", "networks": ("default",)}
    base.update(kw)
    return NodeView(
        name=name,
        cpus=cpus,
        memory_mib=memory_mib,
        used_cpus=used_c,
        used_memory_mib=used_m,
        **base,  # type: ignore[arg-type]
    )


def vic(vid: str, node_: str, cpus: int = 1, memory_mib: int = 1024, rank: int = 0) -> Victim:
    return Victim(vid, node_, cpus, memory_mib, rank=rank)


def released(nodes: list[NodeView], gone: list[Victim]) -> list[NodeView]:
    out = []
    for n in nodes:
        mine = [v for v in gone if v.node == n.name]
        out.append(
            replace(
                n,
                used_cpus=n.used_cpus - sum(v.cpus for v in mine),
                used_memory_mib=n.used_memory_mib - sum(v.memory_mib for v in mine),
            )
        )
    return out


REQ = Request(2, 4096, ("default",), member="big")


def test_fewest_victims_win_over_a_node_with_more_smaller_ones() -> None:
    # a: four 2 GiB victims fill it; b: two 4 GiB ones.
    vs = [vic(f"a{i}", "a", memory_mib=2048) for i in range(4)]
    vs += [vic("b0", "b", cpus=4, memory_mib=4096), vic("b1", "b", cpus=4, memory_mib=4096)]
    nodes = [node("a", vs), node("b", vs)]
    assert place(nodes, REQ, CFG).node is None
    p = plan(nodes, vs, [REQ], CFG)
    assert p is not None
    assert [v.id for v in p.victims] == ["b0"]  # one victim, not two of a's
    assert p.placement.placements is not None and p.placement.placements[0].node == "b"


def test_ties_go_to_the_least_capacity_then_the_callers_order() -> None:
    vs = [
        vic("big", "a", cpus=4, memory_mib=6144),
        vic("small", "a", cpus=4, memory_mib=2048),
        vic("new", "b", cpus=4, memory_mib=4096, rank=0),
        vic("old", "b", cpus=4, memory_mib=4096, rank=1),
    ]
    nodes = [node("a", vs), node("b", vs)]
    p = plan(nodes, vs, [Request(2, 2048, ("default",))], CFG)
    assert p is not None
    assert [v.id for v in p.victims] == ["small"]  # 2 GiB preempted, not 4 or 6
    vs2 = vs[2:]
    p = plan([node("b", vs2)], vs2, [Request(2, 2048, ("default",))], CFG)
    assert p is not None and [v.id for v in p.victims] == ["new"]


def test_filters_still_apply() -> None:
    vs = [vic("x", "a", cpus=8, memory_mib=8192), vic("y", "c", cpus=8, memory_mib=8192)]
    nodes = [
        node("a", vs, networks=("other",)),  # wrong network
        node("c", vs, state="DRAINING"),  # takes no new work
    ]
    assert plan(nodes, vs, [REQ], CFG) is None
    nodes.append(node("d", [*vs, vic("z", "d", cpus=8, memory_mib=8192)], labels={"gpu": "1"}))
    vz = [*vs, vic("z", "d", cpus=8, memory_mib=8192)]
    assert plan(nodes, vz, [replace(REQ, requirements={"gpu": "1"})], CFG) is not None
    assert plan(nodes, vz, [replace(REQ, requirements={"gpu": "2"})], CFG) is None


def test_nothing_to_do_when_it_fits_or_when_even_all_victims_are_not_enough() -> None:
    vs = [vic("a0", "a", cpus=1, memory_mib=1024)]
    assert plan([node("a", vs)], vs, [REQ], CFG) is None  # fits on free capacity
    vs = [vic("a0", "a", cpus=1, memory_mib=1024)]
    small = [node("a", vs, cpus=2, memory_mib=3072)]
    assert plan(small, vs, [REQ], CFG) is None  # 3 GiB node: a 4 GiB request never fits


def test_group_all_or_nothing_and_greedy_per_member() -> None:
    vs = [vic(f"{n}{i}", n, cpus=2, memory_mib=2048) for n in "ab" for i in range(4)]
    nodes = [node("a", vs), node("b", vs)]
    two = [Request(2, 4096, ("default",), member=f"m{i}") for i in range(2)]
    p = plan(nodes, vs, two, CFG, Affinity.HARD_ANTI)
    assert p is not None
    placed = p.placement.placements
    assert placed is not None and {m.node for m in placed} == {"a", "b"}
    assert len(p.victims) == 4  # two per member
    assert all(v.node == placed[i].node for i, d in p.displaced.items() for v in d)
    three = [*two, Request(2, 4096, ("default",), member="m2")]
    assert plan(nodes, vs, three, CFG, Affinity.HARD_ANTI) is None  # two nodes only
    # without anti-affinity three members fit (two on one node)
    p = plan(nodes, vs, three, CFG)
    assert p is not None and len(p.victims) == 6


def test_bandwidth_is_released_with_the_victim() -> None:
    v = Victim("v", "a", 1, 1024, net_mbps=900)
    n = replace(node("a", [v]), net_mbps=1000, used_net_mbps=900)
    req = Request(1, 1024, ("default",), net_mbps=500)
    assert place([n], req, CFG).node is None
    p = plan([n], [v], [req], CFG)
    assert p is not None and [x.id for x in p.victims] == ["v"]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[NodeView], list[Victim], Request]:
    nodes_n = draw(st.integers(1, 3))
    vs: list[Victim] = []
    for n in range(nodes_n):
        for i in range(draw(st.integers(0, 4))):
            vs.append(
                vic(
                    f"n{n}v{i}",
                    f"n{n}",
                    cpus=draw(st.integers(1, 2)),
                    memory_mib=draw(st.sampled_from([512, 1024, 2048])),
                    rank=i,
                )
            )
    nodes = [node(f"n{n}", vs, cpus=8, memory_mib=8192) for n in range(nodes_n)]
    req = Request(draw(st.integers(1, 8)), draw(st.sampled_from([1024, 3072, 6144, 8192])))
    return nodes, vs, req


@settings(max_examples=150, deadline=None)
@given(cases())
def test_property_the_plan_fits_and_no_smaller_set_would(
    case: tuple[list[NodeView], list[Victim], Request],
) -> None:
    nodes, vs, req = case
    fits_now = place(nodes, req, CFG).node is not None
    p = plan(nodes, vs, [req], CFG)
    # brute force: every subset of every victim
    best: tuple[int, int, int] | None = None
    for k in range(1, len(vs) + 1):
        for combo in itertools.combinations(vs, k):
            if place(released(nodes, list(combo)), req, CFG).node is not None:
                c = cost(combo)
                best = c if best is None or c < best else best
        if best is not None:
            break
    if fits_now or best is None:
        assert p is None
        return
    assert p is not None
    assert cost(p.victims) == best  # the fewest, then the least capacity
    after = released(nodes, p.victims)
    assert place_group(after, [req], CFG).placements is not None  # it fits
    placed = p.placement.placements
    assert placed is not None and all(v.node == placed[0].node for v in p.victims)


def test_explain_says_what_preemption_would_do(tmp_path: Path) -> None:
    vs = [vic("b0", "b", cpus=4, memory_mib=4096), vic("b1", "b", cpus=4, memory_mib=4096)]
    nodes = [node("b", vs)]
    doc = replay.to_dict(nodes, [REQ], CFG)
    path = tmp_path / "input.json"
    path.write_text(json.dumps(doc))
    assert "Preemption" not in explain_file(path).render_text()  # no victims given
    doc["victims"] = victims_to_dicts(vs)
    path.write_text(json.dumps(doc))
    result = explain_file(path)
    assert result.placement.placements is None  # not on free capacity
    text = result.render_text()
    assert (
        "Preemption: a normal request would be placed on b by preempting 1 preemptible "
        "workspace(s): b0 on b" in text
    )
    assert result.to_dict()["preemption"]["victims"] == [{"id": "b0", "node": "b"}]
    # A normal create would be placed, so the replay says so and exits 0, not "does not fit".
    assert result.fits and result.to_dict()["fits"] and not result.to_dict()["placed"]
    assert text.startswith("Placement: placed only by preempting 1 preemptible workspace(s) (")
    assert explain_main([str(path)]) == 0
    doc["requests"][0]["memory_mib"] = 16384
    path.write_text(json.dumps(doc))
    refused = explain_file(path)
    assert "would not fit by preemption either" in refused.render_text()
    assert not refused.fits and refused.headline().startswith("does not fit (")
    assert explain_main([str(path)]) == 1


def test_explain_refuses_malformed_victims(tmp_path: Path) -> None:
    doc = replay.to_dict([node("b", [])], [REQ], CFG)
    path = tmp_path / "input.json"
    for bad, why in (
        ([{"id": "x"}], "input.victims[0]: needs id, node, cpus and memory_mib"),
        (
            [{"id": "x", "node": "b", "cpus": 1, "memory_mib": 1, "colour": 1}],
            "unknown key(s) colour",
        ),
        ([{"id": "x", "node": "b", "cpus": "1", "memory_mib": 1}], "the rest integers"),
        ({"id": "x"}, "input.victims: must be a list"),
    ):
        path.write_text(json.dumps(doc | {"victims": bad}))
        with pytest.raises(InvalidArgument) as err:
            explain_file(path)
        assert why in err.value.message


def test_capacity_of_pending_victims_counts_and_they_are_not_victims_again() -> None:
    gone = vic("gone", "a", cpus=2, memory_mib=4096)  # preempted earlier, still stopping
    vs = [vic("v", "a", cpus=2, memory_mib=4096)]
    n = node("a", [gone, *vs])  # full: 8192 of 8192
    p = plan([n], vs, [REQ], CFG, pending=[gone])
    assert p is not None and p.victims == [] and p.pending_nodes == {"a"}
    big = Request(2, 8192, ("default",))
    p = plan([n], vs, [big], CFG, pending=[gone])
    assert p is not None and [v.id for v in p.victims] == ["v"]
    assert plan([n], vs, [REQ], CFG) is not None  # without pending: v is needed
    assert plan([node("b", [])], [], [REQ], CFG, pending=[gone]) is None  # elsewhere
