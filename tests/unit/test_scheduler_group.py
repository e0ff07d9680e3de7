"""Group placement: affinity both ways, all-or-nothing, never double-booking."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.scheduler import (
    Affinity,
    GroupPlacement,
    NodeView,
    Request,
    Snapshot,
    affinity_from_proto,
    affinity_to_proto,
    memory_claim_mib,
    place,
    place_group,
    place_group_on,
    place_on,
)
from workspace.scheduler.explain import explain
from workspace.v1 import clusters_pb2

CFG = SchedulerConfig()


def node(name: str, **kw: object) -> NodeView:
    base: dict[str, object] = {
        "state": "READY",
        "cpus": 8,
        "memory_mib": 16384,
        "hypervisor": "kvm",
        "networks": ("default",),
    }
    base.update(kw)
    return NodeView(name=name, **base)  # type: ignore[arg-type]


def members(n: int, cpus: int = 1, memory_mib: int = 1024, **kw: object) -> list[Request]:
    return [Request(cpus, memory_mib, member=f"worker-{i + 1}", **kw) for i in range(n)]  # type: ignore[arg-type]


def where(result: GroupPlacement) -> list[str]:
    assert result.placements is not None, result.reason()
    return [p.node for p in result.placements]


# -- affinity enum ------------------------------------------------------------------------


def test_affinity_matches_the_proto_enum() -> None:
    for a in Affinity:
        proto = clusters_pb2.Affinity.Value(f"AFFINITY_{a.name}")
        assert affinity_from_proto(proto) is a
        assert affinity_to_proto(a) == proto
    assert Affinity.parse("AFFINITY_SOFT_ANTI") is Affinity.SOFT_ANTI
    assert Affinity.parse("hard") is Affinity.HARD
    with pytest.raises(ValueError, match="unknown affinity"):
        Affinity.parse("sideways")
    with pytest.raises(ValueError, match="unknown affinity value 9"):
        affinity_from_proto(9)


# -- basics ------------------------------------------------------------------------------


def test_results_come_back_in_the_callers_order_with_claims() -> None:
    reqs = [Request(1, 512, member="small"), Request(4, 8192, member="big")]
    result = place_group([node("a")], reqs, CFG)
    assert result.placements == [
        ("a", 1, memory_claim_mib(CFG, reqs[0])),
        ("a", 4, memory_claim_mib(CFG, reqs[1])),
    ]
    assert result.nodes == result.placements
    assert result.ok and result.reason() == ""
    node_name, cpus, memory = result.placements[1]
    assert (node_name, cpus, memory) == ("a", 4, 8192 + 64 + 16 + 32)


def test_larger_members_are_placed_first() -> None:
    small, big = memory_claim_mib(CFG, Request(1, 1024)), memory_claim_mib(CFG, Request(1, 2048))
    nodes = [node("a", memory_mib=small + big), node("b", memory_mib=big)]  # an exact fit
    reqs = [
        Request(1, 1024, member="s"),
        Request(1, 2048, member="b1"),
        Request(1, 2048, member="b2"),
    ]
    assert where(place_group(nodes, reqs, CFG)) == ["a", "b", "a"]
    # In the caller's order, pack puts the small one on b (the tightest) and strands b2.
    snap = Snapshot(nodes, CFG)
    assert [place_on(snap, r).node for r in reqs] == ["b", "a", None]


def test_members_few_nodes_can_take_are_placed_first() -> None:
    """A head that needs the one GPU node and workers that could go anywhere: the workers
    are larger, but placed first they pack onto the GPU node (here it also caches their
    image) and leave the head no room, on a site with room to spare."""
    nodes = [node("gpu1", labels={"gpu": "1"}, cached_digests=frozenset({"img"}))]
    nodes += [node(f"n{i}") for i in range(4)]
    head = Request(2, 1024, member="head", requirements={"gpu": "1"}, digests=("img",))
    workers = [Request(4, 1024, member=f"w{i}", digests=("img",)) for i in range(2)]
    cfg = SchedulerConfig(cpu_overcommit=1.0)  # 8 vCPUs a node
    placed = where(place_group(nodes, [head, *workers], cfg))
    assert placed[0] == "gpu1" and placed[1:].count("gpu1") == 1, placed
    # Largest first, as before, the workers took the GPU node and the head found none.
    snap = Snapshot(nodes, cfg)
    assert [place_on(snap, r).node for r in [*workers, head]] == ["gpu1", "gpu1", None]
    # The explanation follows the same order.
    steps = explain(nodes, [head, *workers], cfg).steps
    assert steps[0].member == "head"


def test_spread_spreads_launches_of_one_cached_image() -> None:
    """Under spread the image cache is not weighed by default: three VMs of one image on
    three empty nodes, the first caching it, go one to each; pack (and spread with an
    explicit weight) prefers the node that caches it."""
    nodes = [node("a", cached_digests=frozenset({"img"})), node("b"), node("c")]
    reqs = [Request(1, 1024, member=f"w{i}", digests=("img",)) for i in range(3)]
    snap = Snapshot(nodes, SchedulerConfig(policy="spread"))
    assert sorted(place_on(snap, r).node or "" for r in reqs) == ["a", "b", "c"]
    snap = Snapshot(nodes, SchedulerConfig(policy="pack"))
    assert [place_on(snap, r).node for r in reqs] == ["a", "a", "a"]
    snap = Snapshot(nodes, SchedulerConfig(policy="spread", image_cache_weight=100))
    assert [place_on(snap, r).node for r in reqs] == ["a", "a", "a"]
    snap = Snapshot(nodes, SchedulerConfig(policy="pack", image_cache_weight=0))
    assert [place_on(snap, r).node for r in reqs] == ["a", "a", "a"]  # pack packs anyway


def test_single_place_is_a_group_of_one() -> None:
    nodes = [node("a", state="DOWN"), node("b", used_memory_mib=9000), node("c")]
    req = Request(2, 2048, member="solo")
    single = place(nodes, req, CFG)
    group = place_group(nodes, [req], CFG)
    assert group.placements == [(single.node, single.claimed_cpus, single.claimed_memory_mib)]
    assert single.rejected == {"are DOWN": 1}
    small = [node("a", memory_mib=1024)]
    assert place(small, req, CFG).rejected == place_group(small, [req], CFG).rejected


def test_sequential_placements_consume_one_snapshot() -> None:
    claim = memory_claim_mib(CFG, Request(1, 1024))
    snap = Snapshot([node("a", memory_mib=claim), node("b", memory_mib=claim)], CFG)
    assert [place_on(snap, Request(1, 1024)).node for _ in range(3)] == ["a", "b", None]
    assert place_on(snap, Request(1, 1024)).rejected == {"have too little free memory": 2}


# -- all-or-nothing ------------------------------------------------------------------------


def test_failure_names_the_member_and_counts_each_reason() -> None:
    nodes = [
        node("a", memory_mib=6000),
        node("b", memory_mib=6000),
        node("c", state="DRAINING"),
    ]
    reqs = [*members(2, memory_mib=4096), Request(1, 2048, member="worker-3")]
    result = place_group(nodes, reqs, CFG)
    assert result.placements is None and result.nodes is None
    assert result.failed_member == "worker-3"
    assert result.failed_index == 2
    assert result.rejected == {"have too little free memory": 2, "are DRAINING": 1}
    assert result.reason() == "2 node(s) have too little free memory, 1 node(s) are DRAINING"
    assert f"member {result.failed_member} does not fit: {result.reason()}" == (
        "member worker-3 does not fit: 2 node(s) have too little free memory, "
        "1 node(s) are DRAINING"
    )


def test_unlabelled_members_are_numbered_from_one() -> None:
    result = place_group([node("a")], [Request(1, 512), Request(1, 99999)], CFG)
    assert result.failed_member == "#2"


def test_no_nodes() -> None:
    result = place_group([], members(1), CFG)
    assert result.failed_member == "worker-1"
    assert result.reason() == "no nodes are registered"


def test_a_failed_group_leaves_the_snapshot_untouched() -> None:
    snap = Snapshot([node("a"), node("b")], CFG)
    before = [(h.free_cpus, h.free_memory_mib, h.group_members) for h in snap.hosts]
    result = place_group_on(snap, members(3), Affinity.HARD_ANTI)
    assert result.failed_member
    assert [(h.free_cpus, h.free_memory_mib, h.group_members) for h in snap.hosts] == before
    ok = place_group_on(snap, members(2), Affinity.HARD_ANTI)
    assert sorted(where(ok)) == ["a", "b"]
    # Capacity stays consumed, group membership does not leak into the next group.
    assert all(h.group_members == 0 for h in snap.hosts)
    assert [h.free_memory_mib for h in snap.hosts] == [
        16384 - memory_claim_mib(CFG, Request(1, 1024))
    ] * 2
    assert sorted(where(place_group_on(snap, members(2), Affinity.HARD_ANTI))) == ["a", "b"]


# -- affinity ------------------------------------------------------------------------------


def test_hard_anti_affinity_puts_every_member_on_its_own_node() -> None:
    nodes = [node(n) for n in "abc"]
    assert sorted(where(place_group(nodes, members(3), CFG, Affinity.HARD_ANTI))) == ["a", "b", "c"]
    result = place_group(nodes, members(4), CFG, Affinity.HARD_ANTI)
    assert result.failed_member == "worker-4"
    assert result.rejected == {"already hold a member of the group (hard anti-affinity)": 3}


def test_without_anti_affinity_pack_puts_them_together() -> None:
    nodes = [node(n) for n in "abc"]
    assert where(place_group(nodes, members(3), CFG)) == ["a", "a", "a"]


def test_soft_anti_affinity_spreads_then_doubles_up_evenly() -> None:
    nodes = [node(n) for n in "abc"]
    assert sorted(where(place_group(nodes, members(3), CFG, Affinity.SOFT_ANTI))) == ["a", "b", "c"]
    spread = where(place_group(nodes, members(7), CFG, Affinity.SOFT_ANTI))
    assert sorted(spread.count(n) for n in "abc") == [2, 2, 3]


def test_soft_anti_affinity_still_places_when_it_cannot_spread() -> None:
    assert where(place_group([node("a")], members(3), CFG, Affinity.SOFT_ANTI)) == ["a"] * 3


def test_hard_affinity_puts_everyone_on_one_node_that_holds_them_all() -> None:
    claim = memory_claim_mib(CFG, Request(1, 1024))
    # Pack alone would pick the tight node "a" for the first member; it cannot take all three.
    nodes = [node("a", memory_mib=claim * 2), node("b"), node("c", memory_mib=claim * 3)]
    assert where(place_group(nodes, members(3), CFG, Affinity.HARD)) == ["c"] * 3
    result = place_group(nodes[:1], members(3), CFG, Affinity.HARD)
    assert result.failed_member == "worker-1"
    assert result.rejected == {"cannot hold the whole group (hard affinity)": 1}


def test_hard_affinity_respects_every_members_requirements() -> None:
    nodes = [node("a"), node("b", labels={"gpu": "a100"})]
    reqs = [
        Request(4, 4096, member="head"),
        Request(1, 512, member="gpu", requirements={"gpu": "a100"}),
    ]
    assert where(place_group(nodes, reqs, CFG, Affinity.HARD)) == ["b", "b"]
    reqs[1] = Request(1, 512, member="gpu", requirements={"gpu": "h100"})
    result = place_group(nodes, reqs, CFG, Affinity.HARD)
    # No node is an h100 one: that member is placed first (the scarcest) and named.
    assert result.failed_member == "gpu"
    assert result.rejected == {"do not match gpu=h100": 2}


def test_hard_affinity_later_members_see_only_the_groups_node() -> None:
    snap = Snapshot([node("a"), node("b")], CFG)
    first = place_group_on(snap, members(2), Affinity.HARD)
    assert where(first) == ["a", "a"]


def test_soft_affinity_keeps_members_together_and_overflows() -> None:
    equal = [node(n) for n in "abc"]
    # Spread policy would scatter them; soft affinity keeps them together where it can.
    cfg = SchedulerConfig(policy="spread")
    assert where(place_group(equal, members(3), cfg)) == ["a", "b", "c"]
    assert where(place_group(equal, members(3), cfg, Affinity.SOFT)) == ["a", "a", "a"]
    claim = memory_claim_mib(CFG, Request(1, 1024))
    full = [node("a", memory_mib=claim * 2), node("b", memory_mib=claim * 2)]
    assert where(place_group(full, members(4), cfg, Affinity.SOFT)) == ["a", "a", "b", "b"]


# -- never double-books: a property over random sites and groups ----------------------------

views_st = st.lists(
    st.builds(
        NodeView,
        name=st.sampled_from([f"n{i}" for i in range(8)]),
        state=st.sampled_from(["READY", "READY", "READY", "DRAINING", "DOWN"]),
        cpus=st.integers(1, 8),
        memory_mib=st.integers(512, 8192),
        used_cpus=st.integers(0, 8),
        used_memory_mib=st.integers(0, 4096),
        hypervisor=st.sampled_from(["kvm", "xen"]),
        labels=st.sampled_from([{}, {"gpu": "a100"}]),
        networks=st.sampled_from([("default",), ("default", "dmz")]),
        cached_digests=st.sampled_from([frozenset(), frozenset({"d1"})]),
    ),
    max_size=8,
    unique_by=lambda n: n.name,
)
group_st = st.lists(
    st.builds(
        Request,
        cpus=st.integers(1, 6),
        memory_mib=st.integers(64, 3072),
        networks=st.sampled_from([(), ("default",), ("dmz",)]),
        digests=st.sampled_from([(), ("d1",)]),
        requirements=st.sampled_from([{}, {}, {"gpu": "a100"}, {"hypervisor": "xen"}]),
        member=st.just(""),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(
    views=views_st,
    reqs=group_st,
    affinity=st.sampled_from(list(Affinity)),
    policy=st.sampled_from(["pack", "spread", "first"]),
    reserved=st.integers(0, 256),
)
def test_group_placement_never_double_books(
    views: list[NodeView],
    reqs: list[Request],
    affinity: Affinity,
    policy: str,
    reserved: int,
) -> None:
    cfg = SchedulerConfig(policy=policy, reserved_memory_mib=reserved)
    result = place_group(views, reqs, cfg, affinity)
    assert result == place_group(list(reversed(views)), reqs, cfg, affinity)  # deterministic
    by_name = {v.name: v for v in views}
    if result.placements is None:
        assert result.failed_member
        assert sum(result.rejected.values()) == len(views)
        # Replayed step by step, the failing member really had no node left.
        story = explain(views, reqs, cfg, affinity)
        assert story.placement == result
        last = story.steps[-1]
        assert last.index == result.failed_index and last.node is None
        assert not any(v.passed for v in last.verdicts)
        return
    assert len(result.placements) == len(reqs)
    cpus: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    for req, p in zip(reqs, result.placements, strict=True):
        v = by_name[p.node]
        assert v.state == "READY"
        assert set(req.networks) <= set(v.networks)
        assert p.claimed_cpus == req.cpus
        assert p.claimed_memory_mib == memory_claim_mib(cfg, req)
        cpus[p.node] += p.claimed_cpus
        memory[p.node] += p.claimed_memory_mib
    for name in cpus:
        v = by_name[name]
        assert v.used_cpus + cpus[name] <= int(v.cpus * cfg.cpu_overcommit)
        assert v.used_memory_mib + memory[name] <= v.memory_mib - reserved
    used = [p.node for p in result.placements]
    if affinity is Affinity.HARD_ANTI:
        assert len(set(used)) == len(used)
    if affinity is Affinity.HARD:
        assert len(set(used)) == 1
    assert explain(views, reqs, cfg, affinity).placement == result
