"""Scheduler filters and weighers one by one: reasons, boundaries, fast path = reference."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.errors import ConfigError
from workspace.scheduler import (
    FILTERS,
    Affinity,
    NodeView,
    Request,
    Snapshot,
    memory_claim_mib,
    place,
    place_group,
    weighers_for,
)
from workspace.scheduler.engine import member_context
from workspace.scheduler.explain import explain
from workspace.scheduler.filters import (
    ConditionFilter,
    CpuFilter,
    HardAffinityFilter,
    HardAntiAffinityFilter,
    MemoryFilter,
    NetworkFilter,
    RequirementsFilter,
    StateFilter,
)
from workspace.scheduler.replay import from_json, to_json
from workspace.scheduler.snapshot import Context, HostState
from workspace.scheduler.weighers import (
    ImageCacheWeigher,
    PackWeigher,
    SoftAffinityWeigher,
    SoftAntiAffinityWeigher,
    SpreadWeigher,
)

CFG = SchedulerConfig()
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


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


def setup(
    n: NodeView,
    req: Request,
    cfg: SchedulerConfig = CFG,
    affinity: Affinity = Affinity.NONE,
    placed: int = 0,
    group: tuple[int, int, frozenset[str] | None] = (0, 0, None),
) -> tuple[HostState, Context]:
    snap = Snapshot([n], cfg)
    return snap.hosts[0], member_context(snap, req, affinity, placed, group)


def test_filter_order_is_cheap_first() -> None:
    assert [f.name for f in FILTERS] == [
        "state",
        "networks",
        "requirements",
        "conditions",
        "cpu",
        "memory",
        "bandwidth",
        "hard-anti-affinity",
        "hard-affinity",
    ]
    assert [f.static for f in FILTERS] == [True] * 4 + [False] * 5


# -- each filter's reason ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "why"), [("READY", None), ("DRAINING", "are DRAINING"), ("DOWN", "are DOWN")]
)
def test_state_filter(state: str, why: str | None) -> None:
    req = Request(1, 512)
    host, ctx = setup(node("a", state=state), req)
    assert StateFilter().host_passes(host, req, ctx) == why


def test_network_filter() -> None:
    req = Request(1, 512, networks=("default", "storage"))
    host, ctx = setup(node("a", networks=("default",)), req)
    assert NetworkFilter().host_passes(host, req, ctx) == "lack a requested network (storage)"
    host, ctx = setup(node("a", networks=("storage", "default")), req)
    assert NetworkFilter().host_passes(host, req, ctx) is None


def test_requirements_filter_names_the_first_mismatch_in_key_order() -> None:
    req = Request(1, 512, requirements={"zone": "b", "gpu": "a100", "hypervisor": "kvm"})
    host, ctx = setup(node("a", labels={"zone": "a"}), req)
    assert RequirementsFilter().host_passes(host, req, ctx) == "do not match gpu=a100"
    host, ctx = setup(node("a", labels={"zone": "b", "gpu": "a100"}), req)
    assert RequirementsFilter().host_passes(host, req, ctx) is None
    host, ctx = setup(node("a", hypervisor="xen", labels={"zone": "b", "gpu": "a100"}), req)
    assert RequirementsFilter().host_passes(host, req, ctx) == "do not match hypervisor=kvm"


def test_hypervisor_label_does_not_override_node_type() -> None:
    req = Request(1, 512, requirements={"hypervisor": "xen"})
    host, ctx = setup(node("a", hypervisor="kvm", labels={"hypervisor": "xen"}), req)
    assert RequirementsFilter().host_passes(host, req, ctx) == "do not match hypervisor=xen"


def test_condition_filter_keeps_isolated_workspaces_off_nodes_that_cannot_isolate() -> None:
    f = ConditionFilter()
    unsafe = frozenset({"no-isolation"})
    isolated, open_ = Request(1, 512, ("default",), isolated=True), Request(1, 512, ("default",))
    host, ctx = setup(node("a", conditions=unsafe), isolated)
    assert f.active(isolated, ctx)
    assert f.host_passes(host, isolated, ctx) == "cannot isolate bridged traffic (no-isolation)"
    host, ctx = setup(node("a", conditions=unsafe), open_)
    assert f.host_passes(host, open_, ctx) is None  # an OPEN workspace goes there
    host, ctx = setup(node("a"), isolated)
    assert not f.active(isolated, ctx)  # no node says anything: skipped


def test_condition_filter_names_a_network_the_node_could_not_make_ready() -> None:
    f = ConditionFilter()
    broken = frozenset({"network-not-ready:storage"})
    on_it = Request(1, 512, ("default", "storage"))
    host, ctx = setup(node("a", networks=("default", "storage"), conditions=broken), on_it)
    why = "could not make a requested network ready (network-not-ready)"
    assert f.host_passes(host, on_it, ctx) == why
    other = Request(1, 512, ("default",))
    host, ctx = setup(node("a", networks=("default", "storage"), conditions=broken), other)
    assert f.host_passes(host, other, ctx) is None


def test_condition_filter_keeps_every_request_off_a_node_that_cannot_reach_its_hypervisor() -> None:
    f = ConditionFilter()
    dead = frozenset({"hypervisor-unreachable"})
    why = "cannot reach their hypervisor (hypervisor-unreachable)"
    for req in (
        Request(1, 512),  # no NIC, OPEN: no other condition concerns it
        Request(1, 512, ("default",)),
        Request(1, 512, ("default",), isolated=True),
    ):
        host, ctx = setup(node("a", conditions=dead), req)
        assert f.active(req, ctx)
        assert f.host_passes(host, req, ctx) == why
    result = place([node("a", conditions=dead), node("b", state="DRAINING")], Request(1, 512), CFG)
    assert result.node is None
    assert result.reason() == (
        "no node can host it: 1 node(s) are DRAINING,"
        " 1 node(s) cannot reach their hypervisor (hypervisor-unreachable)"
    )
    assert place([node("a", conditions=dead), node("b")], Request(1, 512), CFG).node == "b"


def test_a_refusal_counts_nodes_kept_by_their_conditions() -> None:
    nodes = [
        node("a", conditions=frozenset({"no-isolation"})),
        node("b", conditions=frozenset({"no-isolation"})),
        node("c", state="DRAINING"),
    ]
    req = Request(1, 512, ("default",), isolated=True)
    result = place(nodes, req, CFG)
    assert result.node is None
    assert result.reason() == (
        "no node can host it: 2 node(s) cannot isolate bridged traffic (no-isolation),"
        " 1 node(s) are DRAINING"
    )
    assert place([*nodes, node("d")], req, CFG).node == "d"
    assert place(nodes, Request(1, 512, ("default",)), CFG).node in {"a", "b"}


def test_cpu_filter_boundary_with_overcommit_and_reservation() -> None:
    cfg = SchedulerConfig(cpu_overcommit=2.5, reserved_cpus=2)  # 4 cpus -> (4 - 2) * 2.5 = 5
    for used, want, why in [(3, 2, None), (3, 3, "have too few free CPUs"), (0, 5, None)]:
        req = Request(want, 64)
        host, ctx = setup(node("a", cpus=4, used_cpus=used), req, cfg)
        assert CpuFilter().host_passes(host, req, ctx) == why


def test_memory_is_not_overcommitted_by_default() -> None:
    req = Request(1, 1024)
    claim = memory_claim_mib(CFG, req)
    assert claim == 1024 + 64 + 2 + 8
    host, ctx = setup(node("a", memory_mib=claim), req)
    assert MemoryFilter().host_passes(host, req, ctx) is None
    host, ctx = setup(node("a", memory_mib=claim - 1), req)
    assert MemoryFilter().host_passes(host, req, ctx) == "have too little free memory"
    # Free CPUs are plentiful (x4), free memory is not: the memory filter rejects.
    assert place([node("a", memory_mib=claim - 1)], req, CFG).rejected == {
        "have too little free memory": 1
    }


def test_memory_reservation_boundary() -> None:
    cfg = SchedulerConfig(reserved_memory_mib=1000)
    req = Request(1, 1024)
    claim = memory_claim_mib(cfg, req)
    host, ctx = setup(node("a", memory_mib=claim + 1000), req, cfg)
    assert MemoryFilter().host_passes(host, req, ctx) is None
    host, ctx = setup(node("a", memory_mib=claim + 999), req, cfg)
    assert MemoryFilter().host_passes(host, req, ctx) == "have too little free memory"


def test_hard_anti_affinity_filter() -> None:
    req = Request(1, 512)
    host, ctx = setup(node("a"), req, affinity=Affinity.HARD_ANTI, placed=1)
    assert HardAntiAffinityFilter().host_passes(host, req, ctx) is None
    host.group_members = 1
    assert (
        HardAntiAffinityFilter().host_passes(host, req, ctx)
        == "already hold a member of the group (hard anti-affinity)"
    )
    # Inactive without HARD_ANTI.
    ctx = replace(ctx, affinity=Affinity.SOFT_ANTI)
    assert HardAntiAffinityFilter().host_passes(host, req, ctx) is None


def test_hard_affinity_filter_before_and_after_the_first_member() -> None:
    req = Request(1, 512)
    f = HardAffinityFilter()
    # First member: the node must hold the whole group.
    host, ctx = setup(node("a", cpus=2), req, affinity=Affinity.HARD, group=(9, 1000, None))
    assert f.host_passes(host, req, ctx) == "cannot hold the whole group (hard affinity)"
    host, ctx = setup(node("a", cpus=2), req, affinity=Affinity.HARD, group=(8, 1000, None))
    assert f.host_passes(host, req, ctx) is None
    host, ctx = setup(node("a"), req, affinity=Affinity.HARD, group=(1, 1, frozenset({"b"})))
    assert f.host_passes(host, req, ctx) == "cannot hold the whole group (hard affinity)"
    # Later members: only the node holding the group.
    host, ctx = setup(node("a"), req, affinity=Affinity.HARD, placed=1)
    assert f.host_passes(host, req, ctx) == "do not hold the group's other members (hard affinity)"
    host.group_members = 1
    assert f.host_passes(host, req, ctx) is None


# -- the fast path agrees with host_passes / weigh ----------------------------------------

views_st = st.lists(
    st.builds(
        NodeView,
        name=st.text("abcdef", min_size=1, max_size=3),
        state=st.sampled_from(["READY", "READY", "DRAINING", "DOWN"]),
        cpus=st.integers(1, 16),
        memory_mib=st.integers(256, 16384),
        used_cpus=st.integers(0, 40),
        used_memory_mib=st.integers(0, 16384),
        hypervisor=st.sampled_from(["kvm", "xen"]),
        labels=st.sampled_from([{}, {"gpu": "a100"}, {"gpu": "h100", "zone": "b"}]),
        networks=st.sampled_from([(), ("default",), ("default", "dmz")]),
        cached_digests=st.sampled_from([frozenset(), frozenset({D1}), frozenset({D1, D2})]),
        net_mbps=st.sampled_from([0, 0, 100, 1000]),
        used_net_mbps=st.integers(0, 200),
        disk_mbps=st.sampled_from([0, 500]),
        used_disk_mbps=st.integers(0, 600),
        conditions=st.sampled_from(
            [
                frozenset(),
                frozenset(),
                frozenset({"no-isolation"}),
                frozenset({"network-not-ready:dmz"}),
                frozenset({"hypervisor-unreachable"}),
            ]
        ),
    ),
    max_size=10,
    unique_by=lambda n: n.name,
)
req_st = st.builds(
    Request,
    cpus=st.integers(1, 16),
    memory_mib=st.integers(16, 8192),
    networks=st.sampled_from([(), ("default",), ("dmz", "default")]),
    digests=st.sampled_from([(), (D1,), (D1, D2)]),
    requirements=st.sampled_from([{}, {"gpu": "a100"}, {"hypervisor": "xen"}]),
    net_mbps=st.sampled_from([0, 0, 50, 100]),
    disk_mbps=st.sampled_from([0, 0, 100]),
    isolated=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    views=views_st,
    req=req_st,
    affinity=st.sampled_from(list(Affinity)),
    members=st.lists(st.integers(0, 2), min_size=10, max_size=10),
    group=st.tuples(st.integers(0, 20), st.integers(0, 20000)),
    policy=st.sampled_from(["pack", "spread", "first"]),
)
def test_batch_paths_agree_with_the_reference(
    views: list[NodeView],
    req: Request,
    affinity: Affinity,
    members: list[int],
    group: tuple[int, int],
    policy: str,
) -> None:
    cfg = SchedulerConfig(policy=policy)
    snap = Snapshot(views, cfg)
    for h, m in zip(snap.hosts, members, strict=False):
        h.group_members = m
    placed = sum(h.group_members for h in snap.hosts)
    ctx = member_context(snap, req, affinity, placed, (*group, None))
    for f in FILTERS:
        if not f.active(req, ctx):
            assert all(f.host_passes(h, req, ctx) is None for h in snap.hosts)
            continue
        expected = [h for h in snap.hosts if f.host_passes(h, req, ctx) is None]
        for h in snap.hosts:  # explain's complete mode: the same verdict, the same first
            why = f.host_passes(h, req, ctx)
            assert f.every_reason(h, req, ctx)[:1] == ([] if why is None else [why])
        kept = f.filter_all(snap.hosts, req, ctx)
        assert kept == expected
        reasons = Counter(f.host_passes(h, req, ctx) for h in snap.hosts if h not in kept)
        assert +f.rejections(snap.hosts, kept, req, ctx) == reasons
        if not f.static:
            for h in snap.hosts:
                why = f.host_passes(h, req, ctx)
                assert why is None or why == f.reason(req, ctx)
    for w in weighers_for(cfg):
        batch = w.weigh_all(snap.hosts, req, ctx)
        assert batch == [w.weigh(h, req, ctx) for h in snap.hosts]
        if isinstance(w, ImageCacheWeigher) and not w.active(req, ctx):
            assert set(batch) <= {0.0}  # skipping it cannot change the order


# -- weighers ----------------------------------------------------------------------------


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.policy: 'random' is not one of"):
        SchedulerConfig(policy="random")


@pytest.mark.parametrize(("policy", "expected"), [("pack", "b"), ("spread", "c"), ("first", "a")])
def test_policy_weighs_free_memory_after_placement(policy: str, expected: str) -> None:
    nodes = [
        node("a", memory_mib=32768, used_memory_mib=16384),  # 16384 free
        node("b", memory_mib=8192),  # 8192 free: tightest
        node("c", memory_mib=65536, used_memory_mib=16384),  # 49152 free: emptiest
    ]
    assert place(nodes, Request(1, 2048), SchedulerConfig(policy=policy)).node == expected


def test_pack_and_spread_weights_are_within_unit_range() -> None:
    req = Request(1, 512)
    snap = Snapshot([node("a"), node("b", memory_mib=4096, used_memory_mib=1000)], CFG)
    ctx = member_context(snap, req, Affinity.NONE, 0, (0, 0, None))
    for w in (PackWeigher(), SpreadWeigher()):
        assert all(0.0 <= v <= 1.0 for v in w.weigh_all(snap.hosts, req, ctx))


@pytest.mark.parametrize("policy", ["pack", "spread", "first"])
def test_more_of_the_image_cached_wins_over_policy(policy: str) -> None:
    nodes = [
        node("a", used_memory_mib=8000),
        node("b"),
        node("c", used_memory_mib=4000, cached_digests=frozenset({D1})),
        node("d", used_memory_mib=2000, cached_digests=frozenset({D1, D2})),
    ]
    # The cache weighed as pack weighs it by default (spread does not, unless told).
    cfg = SchedulerConfig(policy=policy, image_cache_weight=100)
    assert place(nodes, Request(1, 512, digests=(D1, D2)), cfg).node == "d"
    assert place(nodes[:3], Request(1, 512, digests=(D1, D2)), cfg).node == "c"


def test_cache_weigher_is_the_cached_fraction() -> None:
    req = Request(1, 512, digests=(D1, D2))
    views = [
        node("a"),
        node("b", cached_digests=frozenset({D2})),
        node("c", cached_digests=frozenset({D1, D2, "x"})),
    ]
    snap = Snapshot(views, CFG)
    ctx = member_context(snap, req, Affinity.NONE, 0, (0, 0, None))
    w = ImageCacheWeigher()
    assert w.active(req, ctx)
    assert w.weigh_all(snap.hosts, req, ctx) == [0.0, 0.5, 1.0]
    assert not w.active(Request(1, 512, digests=("other",)), ctx)


def test_soft_affinity_weighers_count_group_members() -> None:
    req = Request(1, 512)
    snap = Snapshot([node("a"), node("b")], CFG)
    snap.hosts[0].group_members = 2
    anti = member_context(snap, req, Affinity.SOFT_ANTI, 2, (0, 0, None))
    near = member_context(snap, req, Affinity.SOFT, 2, (0, 0, None))
    assert SoftAntiAffinityWeigher().weigh_all(snap.hosts, req, anti) == [-2.0, 0.0]
    assert SoftAffinityWeigher().weigh_all(snap.hosts, req, near) == [2.0, 0.0]
    assert not SoftAntiAffinityWeigher().active(req, near)
    assert not SoftAffinityWeigher().active(req, anti)


def test_soft_anti_affinity_beats_the_image_cache() -> None:
    nodes = [node("a", cached_digests=frozenset({D1})), node("b")]
    reqs = [Request(1, 512, digests=(D1,), member=f"m{i}") for i in range(2)]
    spread = place_group(nodes, reqs, CFG, Affinity.SOFT_ANTI)
    assert spread.placements is not None
    assert [p.node for p in spread.placements] == ["a", "b"]
    together = place_group(nodes, reqs, CFG, Affinity.NONE)
    assert together.placements is not None
    assert [p.node for p in together.placements] == ["a", "a"]


def test_replay_and_explain_keep_conditions_and_isolation() -> None:
    nodes = [node("a", conditions=frozenset({"no-isolation"})), node("b", state="DRAINING")]
    reqs = [Request(1, 512, ("default",), isolated=True, member="w"), Request(1, 512)]
    text = to_json(nodes, reqs, CFG)
    assert from_json(text)[:2] == (nodes, reqs)
    data = json.loads(text)
    assert data["nodes"][0]["conditions"] == ["no-isolation"]
    assert "conditions" not in data["nodes"][1]  # written only when set
    assert data["requests"][0]["isolated"] is True and "isolated" not in data["requests"][1]
    verdicts = explain(nodes, reqs[:1], CFG).steps[0].verdicts
    assert [(v.node, v.filter, v.reason) for v in verdicts] == [
        ("a", "conditions", "cannot isolate bridged traffic (no-isolation)"),
        ("b", "state", "are DRAINING"),
    ]
