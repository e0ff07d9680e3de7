"""Placement (workspace/scheduler): overhead model, filters, policies, reasons."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.scheduler import NodeView, Placement, Request, overhead_mib, place

CFG = SchedulerConfig()  # pack, cpu x4, memory x1, 64 + 2/GiB + 8/vCPU


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


# -- overhead ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory_mib", "cpus", "expected"),
    [
        (1024, 1, 64 + 2 + 8),
        (512, 1, 64 + 1 + 8),  # a part GiB rounds up
        (1, 1, 64 + 1 + 8),
        (1536, 4, 64 + 3 + 32),
        (8192, 2, 64 + 16 + 16),
    ],
)
def test_overhead_default_model(memory_mib: int, cpus: int, expected: int) -> None:
    assert overhead_mib(CFG, memory_mib, cpus) == expected


def test_overhead_uses_config() -> None:
    cfg = SchedulerConfig(overhead_fixed_mib=100, overhead_per_gib_mib=10, overhead_per_vcpu_mib=0)
    assert overhead_mib(cfg, 2048, 16) == 100 + 20


def test_claim_includes_overhead() -> None:
    p = place([node("a")], Request(cpus=2, memory_mib=1024), CFG)
    assert p == Placement("a", claimed_cpus=2, claimed_memory_mib=1024 + 64 + 2 + 16, rejected={})


# -- filters ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["DRAINING", "DOWN"])
def test_only_ready_nodes(state: str) -> None:
    p = place([node("a", state=state)], Request(1, 512), CFG)
    assert p.node is None
    assert p.rejected == {f"are {state}": 1}
    assert p.reason() == f"no node can host it: 1 node(s) are {state}"


def test_networks_filter() -> None:
    nodes = [node("a", networks=("default",)), node("b", networks=("default", "storage"))]
    assert place(nodes, Request(1, 512, networks=("default", "storage")), CFG).node == "b"
    p = place(nodes, Request(1, 512, networks=("dmz",)), CFG)
    assert p.node is None
    # Which one: the admin adds it to a node's [[networks]] (agent.toml).
    assert "2 node(s) lack a requested network (dmz)" in p.reason()
    p = place(nodes, Request(1, 512, networks=("default", "storage", "dmz")), CFG)
    assert p.rejected == {
        "lack a requested network (storage)": 1,
        "lack a requested network (dmz)": 1,
    }


def test_hypervisor_requirement_matches_node_type() -> None:
    nodes = [node("a", hypervisor="kvm"), node("b", hypervisor="xen")]
    assert place(nodes, Request(1, 512, requirements={"hypervisor": "xen"}), CFG).node == "b"
    p = place(nodes, Request(1, 512, requirements={"hypervisor": "esx"}), CFG)
    assert p.node is None
    assert "2 node(s) do not match hypervisor=esx" in p.reason()


def test_label_requirement() -> None:
    nodes = [node("a", labels={"gpu": "no"}), node("b", labels={"gpu": "a100"}), node("c")]
    assert place(nodes, Request(1, 512, requirements={"gpu": "a100"}), CFG).node == "b"
    p = place(nodes, Request(1, 512, requirements={"gpu": "h100"}), CFG)
    assert p.rejected == {"do not match gpu=h100": 3}


@pytest.mark.parametrize(
    ("cfg", "used", "want", "fits"),
    [
        (SchedulerConfig(), 6, 2, True),  # 2 cpus x4 = 8
        (SchedulerConfig(), 6, 3, False),
        (SchedulerConfig(cpu_overcommit=1.0), 1, 1, True),
        (SchedulerConfig(cpu_overcommit=1.0), 1, 2, False),
        (SchedulerConfig(reserved_cpus=1), 2, 2, True),  # (2 - 1) cpus x4 = 4
        (SchedulerConfig(reserved_cpus=1), 2, 3, False),
        (SchedulerConfig(cpu_overcommit=1.5), 0, 3, True),
        (SchedulerConfig(cpu_overcommit=1.5), 0, 4, False),
    ],
)
def test_cpu_filter(cfg: SchedulerConfig, used: int, want: int, fits: bool) -> None:
    p = place([node("a", cpus=2, used_cpus=used)], Request(want, 64), cfg)
    if fits:
        assert p.node == "a"
    else:
        assert p.node is None
        assert p.rejected == {"have too few free CPUs": 1}


@pytest.mark.parametrize(
    ("cfg", "used", "fits"),
    [
        (SchedulerConfig(), 4096 - 1098, True),  # claim = 1024 + 74 exactly fills it
        (SchedulerConfig(), 4096 - 1097, False),
        (SchedulerConfig(reserved_memory_mib=100), 4096 - 1198, True),
        (SchedulerConfig(reserved_memory_mib=100), 4096 - 1197, False),
        (SchedulerConfig(memory_overcommit=1.5), 6144 - 1098, True),
        (SchedulerConfig(memory_overcommit=1.5), 6144 - 1097, False),
    ],
)
def test_memory_filter_counts_overhead(cfg: SchedulerConfig, used: int, fits: bool) -> None:
    p = place([node("a", memory_mib=4096, used_memory_mib=used)], Request(1, 1024), cfg)
    if fits:
        assert p.node == "a"
        assert p.claimed_memory_mib == 1098
    else:
        assert p.node is None
        assert p.rejected == {"have too little free memory": 1}


def test_guest_memory_alone_fitting_is_not_enough() -> None:
    # 1024 MiB free, 1024 MiB asked: the hypervisor overhead does not fit.
    p = place([node("a", memory_mib=1024)], Request(1, 1024), CFG)
    assert p.node is None


# -- policies ---------------------------------------------------------------------------

THREE = [
    node("a", used_memory_mib=8000),  # least free
    node("b", used_memory_mib=0),  # most free
    node("c", used_memory_mib=4000),
]


@pytest.mark.parametrize(("policy", "expected"), [("pack", "a"), ("spread", "b"), ("first", "a")])
def test_policy(policy: str, expected: str) -> None:
    assert place(THREE, Request(1, 512), SchedulerConfig(policy=policy)).node == expected


def test_first_fit_takes_name_order_not_input_order() -> None:
    nodes = [node("z", used_memory_mib=0), node("a", used_memory_mib=8000)]
    assert place(nodes, Request(1, 512), SchedulerConfig(policy="first")).node == "a"


def test_pack_skips_node_that_is_too_full() -> None:
    nodes = [node("a", used_memory_mib=16000), node("b", used_memory_mib=10000), node("c")]
    assert place(nodes, Request(1, 1024), CFG).node == "b"


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_cache_aware_preference(policy: str) -> None:
    digests = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
    nodes = [
        node("a", used_memory_mib=8000),
        node("b"),
        node("c", used_memory_mib=4000, cached_digests=frozenset(digests)),
        node("d", cached_digests=frozenset(digests[:1])),
    ]
    req = Request(1, 512, digests=digests)
    # The cache weighed as pack weighs it by default (spread does not, unless told).
    cfg = SchedulerConfig(policy=policy, image_cache_weight=100)
    assert place(nodes, req, cfg).node == "c"


@pytest.mark.parametrize("policy", ["pack", "spread", "first"])
def test_cache_never_overrides_filters(policy: str) -> None:
    digests = ("sha256:" + "a" * 64,)
    nodes = [node("a", state="DRAINING", cached_digests=frozenset(digests)), node("b")]
    p = place(nodes, Request(1, 512, digests=digests), SchedulerConfig(policy=policy))
    assert p.node == "b"
    assert p.rejected == {"are DRAINING": 1}


# -- reasons ----------------------------------------------------------------------------


def test_no_nodes_registered() -> None:
    p = place([], Request(1, 512), CFG)
    assert p.node is None
    assert p.reason() == "no nodes are registered"


def test_reason_counts_each_filter() -> None:
    nodes = [
        node("a", state="DOWN"),
        node("b", state="DOWN"),
        node("c", networks=()),
        node("d", cpus=1, used_cpus=4),
        node("e", memory_mib=256),
        node("f", memory_mib=256),
        node("g", memory_mib=256),
    ]
    p = place(nodes, Request(1, 512, networks=("default",)), CFG)
    assert p.node is None
    assert p.rejected == {
        "are DOWN": 2,
        "lack a requested network (default)": 1,
        "have too few free CPUs": 1,
        "have too little free memory": 3,
    }
    reason = p.reason()
    assert reason.startswith("no node can host it: ")
    for part in (
        "2 node(s) are DOWN",
        "1 node(s) lack a requested network (default)",
        "1 node(s) have too few free CPUs",
        "3 node(s) have too little free memory",
    ):
        assert part in reason


def test_successful_placement_still_records_rejections() -> None:
    p = place([node("a", state="DOWN"), node("b")], Request(1, 512), CFG)
    assert p.node == "b"
    assert p.rejected == {"are DOWN": 1}


# -- determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_ties_do_not_depend_on_input_order(policy: str) -> None:
    nodes = [node(n) for n in "qxbm"]
    cfg = SchedulerConfig(policy=policy)
    results = [place(list(p), Request(2, 2048), cfg) for p in itertools.permutations(nodes)]
    assert results[0].node is not None and results[0].node in "qxbm"
    assert all(r == results[0] for r in results)


nodes_st = st.lists(
    st.builds(
        NodeView,
        name=st.sampled_from("abcdefgh"),
        state=st.sampled_from(["READY", "READY", "DRAINING", "DOWN"]),
        cpus=st.integers(1, 16),
        memory_mib=st.integers(256, 32768),
        used_cpus=st.integers(0, 64),
        used_memory_mib=st.integers(0, 32768),
        hypervisor=st.sampled_from(["kvm", "xen"]),
        networks=st.sampled_from([(), ("default",), ("default", "dmz")]),
    ),
    max_size=8,
    unique_by=lambda n: n.name,
)
requests_st = st.builds(
    Request,
    cpus=st.integers(1, 16),
    memory_mib=st.integers(16, 16384),
    networks=st.sampled_from([(), ("default",), ("dmz",)]),
)


@settings(max_examples=200, deadline=None)
@given(
    nodes=nodes_st,
    req=requests_st,
    policy=st.sampled_from(["pack", "spread", "first"]),
    reserved=st.integers(0, 512),
)
def test_placement_properties(
    nodes: list[NodeView], req: Request, policy: str, reserved: int
) -> None:
    cfg = SchedulerConfig(policy=policy, reserved_memory_mib=reserved)
    p = place(nodes, req, cfg)
    assert p == place(list(nodes), req, replace(cfg))  # same input, same answer
    if p.node is None:
        # Every node was rejected, and for a reason.
        assert sum(p.rejected.values()) == len(nodes)
        assert p.reason()
        return
    chosen = next(n for n in nodes if n.name == p.node)
    assert chosen.state == "READY"
    assert set(req.networks) <= set(chosen.networks)
    assert chosen.used_cpus + p.claimed_cpus <= int(chosen.cpus * cfg.cpu_overcommit)
    assert p.claimed_memory_mib == req.memory_mib + overhead_mib(cfg, req.memory_mib, req.cpus)
    assert chosen.used_memory_mib + p.claimed_memory_mib <= chosen.memory_mib - reserved
    assert sum(p.rejected.values()) < len(nodes)
