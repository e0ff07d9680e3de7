"""What the head of the capacity queue holds (scheduler/reserve.py), and that the rule
keeps its promise: later requests run on the other nodes, and the head is placed."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.scheduler import Affinity, NodeView, Request, emptied, place, place_group, reserve
from workspace.scheduler.reserve import ranked

# No overhead and no overcommit: the arithmetic in the tests is the node's.
CFG = SchedulerConfig(
    cpu_overcommit=1.0, overhead_fixed_mib=0, overhead_per_gib_mib=0, overhead_per_vcpu_mib=0
)


def node(name: str, used_cpus: int = 0, cpus: int = 8, memory_mib: int = 8192, **kw: object):
    base: dict[str, object] = {"state": "READY", "networks": ("default",)}
    base.update(kw)
    return NodeView(
        name=name,
        cpus=cpus,
        memory_mib=memory_mib,
        used_cpus=used_cpus,
        used_memory_mib=used_cpus * 1024,
        **base,  # type: ignore[arg-type]
    )


def req(cpus: int, member: str = "r", **kw: object) -> Request:
    return Request(cpus, cpus * 1024, ("default",), member=member, **kw)  # type: ignore[arg-type]


def test_a_workspace_holds_the_one_node_closest_to_fitting_it() -> None:
    nodes = [node("n1", used_cpus=6), node("n2", used_cpus=3), node("n3", used_cpus=5)]
    assert reserve(nodes, [req(7)], CFG) == ("n2",)
    # Ties go to the first in name order.
    nodes = [node("n3", used_cpus=2), node("n1", used_cpus=2), node("n2", used_cpus=2)]
    assert reserve(nodes, [req(7)], CFG) == ("n1",)


def test_what_is_going_away_counts_as_free() -> None:
    nodes = [node("n1", used_cpus=6), node("n2", used_cpus=3)]
    # 5 of n1's 6 vCPUs are being destroyed: it is closer to fitting than n2.
    assert reserve(nodes, [req(7)], CFG, leaving={"n1": (5, 5 * 1024, 0, 0)}) == ("n1",)


def test_only_a_node_that_could_host_it_is_held() -> None:
    nodes = [
        node("a-drained", state="DRAINING"),
        node("b-small", cpus=4, memory_mib=4096),
        node("c-other-net", networks=("other",)),
        node("d-gpu", used_cpus=7, labels={"gpu": "1"}),
        node("e", used_cpus=1),
    ]
    assert reserve(nodes, [req(7)], CFG) == ("e",)
    assert reserve(nodes, [req(7, requirements={"gpu": "1"})], CFG) == ("d-gpu",)
    assert reserve(nodes, [req(7, requirements={"gpu": "2"})], CFG) == ()
    assert reserve([], [req(1)], CFG) == ()


def test_a_cluster_holds_the_fewest_nodes_that_hold_it_whole() -> None:
    nodes = [node(f"n{i}", used_cpus=u) for i, u in enumerate([6, 1, 4, 2, 8], start=1)]
    workers = [req(4, f"w{i}") for i in range(4)]  # 16 vCPUs: two emptied nodes
    assert reserve(nodes, workers, CFG) == ("n2", "n4")  # the two with most free
    # One per node: the four closest (n5 is full).
    assert reserve(nodes, workers, CFG, Affinity.HARD_ANTI) == ("n1", "n2", "n3", "n4")
    # HARD: on one node, whole; 16 vCPUs fit no node: it holds nothing while it waits.
    assert reserve(nodes, workers, CFG, Affinity.HARD) == ()
    assert reserve(nodes, workers[:2], CFG, Affinity.HARD) == ("n2",)


sizes = st.integers(min_value=1, max_value=8)


@settings(max_examples=150, deadline=None)
@given(
    used=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=6),
    members=st.lists(sizes, min_size=1, max_size=6),
    affinity=st.sampled_from([Affinity.NONE, Affinity.SOFT_ANTI, Affinity.HARD_ANTI]),
)
def test_a_group_holds_what_it_takes_on_the_shortest_prefix_that_holds_it(
    used: list[int], members: list[int], affinity: Affinity
) -> None:
    nodes = [node(f"n{i}", used_cpus=u) for i, u in enumerate(used)]
    group = [req(c, f"m{i}") for i, c in enumerate(members)]
    held = reserve(nodes, group, CFG, affinity)
    order = ranked(nodes, group, CFG, {})
    shortest = next(
        (
            k
            for k in range(1, len(order) + 1)
            if place_group([emptied(n) for n in order[:k]], group, CFG, affinity).ok
        ),
        None,
    )
    if shortest is None:
        assert held == ()
        return
    # It holds the group whole once those nodes are empty, and no more nodes than the
    # shortest prefix of the ranking that does.
    assert place_group([emptied(n) for n in nodes if n.name in held], group, CFG, affinity).ok
    assert set(held) <= {n.name for n in order[:shortest]}
    assert reserve(list(reversed(nodes)), group, CFG, affinity) == held  # deterministic


# -- the rule over time: a head waits, later requests come and go ---------------------------


@settings(max_examples=100, deadline=None)
@given(
    n_nodes=st.integers(min_value=1, max_value=3),
    initial=st.lists(st.tuples(sizes, st.integers(1, 12)), min_size=1, max_size=10),
    arrivals=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 12)), max_size=60),
    head_cpus=st.integers(min_value=5, max_value=8),
)
def test_the_head_is_placed_and_later_requests_never_take_what_it_holds(
    n_nodes: int,
    initial: list[tuple[int, int]],
    arrivals: list[tuple[int, int]],
    head_cpus: int,
) -> None:
    """One step a tick: work ends, the head is placed if it fits, else it holds its
    node(s) and the tick's newcomer is placed elsewhere if it fits (refused otherwise).
    Every run ends: the head is placed; while it waits no newcomer lands on a node it
    holds, and the free capacity of the node it holds never shrinks."""
    nodes = {f"n{i}": node(f"n{i}") for i in range(n_nodes)}
    running: list[tuple[str, int, int]] = []  # (node, cpus, ends at)

    def put(name: str, cpus: int, until: int) -> None:
        v = nodes[name]
        nodes[name] = replace(
            v, used_cpus=v.used_cpus + cpus, used_memory_mib=v.used_memory_mib + cpus * 1024
        )
        running.append((name, cpus, until))

    for cpus, ends in initial:  # the site as the head finds it
        p = place(nodes.values(), req(cpus), CFG)
        if p.node is not None:
            put(p.node, cpus, ends)
    head = req(head_cpus, "head")
    held_free: dict[str, int] = {}
    for tick in range(200):
        for w in [w for w in running if w[2] <= tick]:  # work that ends now
            running.remove(w)
            v = nodes[w[0]]
            nodes[w[0]] = replace(
                v, used_cpus=v.used_cpus - w[1], used_memory_mib=v.used_memory_mib - w[1] * 1024
            )
        if place(nodes.values(), head, CFG).node is not None:
            break
        held = reserve(list(nodes.values()), [head], CFG)
        assert len(held) == 1
        free = nodes[held[0]].cpus - nodes[held[0]].used_cpus
        # What the head holds only gains (a switch goes to a node at least as close).
        assert free >= max(held_free.values(), default=0)
        held_free = {held[0]: free}
        if tick < len(arrivals):
            cpus, runs = arrivals[tick]
            others = [v for name, v in nodes.items() if name not in held]
            p = place(others, req(cpus), CFG)
            if p.node is not None:
                assert p.node not in held
                put(p.node, cpus, tick + runs)
    else:
        raise AssertionError("the head was never placed")
