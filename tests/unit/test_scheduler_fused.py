"""The scheduler's one-pass choice (workspace/scheduler/fused.py) against the filters'
and weighers' own passes (engine.choose_filtered): the same host, ties included, and the
same rejections, for every policy, with and without cached images, alone and as members
of soft-affinity groups; and it stands aside where another filter is in play."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.config import SchedulerConfig
from workspace.scheduler import NodeView, Request
from workspace.scheduler.engine import choose, choose_filtered, member_context
from workspace.scheduler.filters import STATIC_FILTERS
from workspace.scheduler.fused import one_pass
from workspace.scheduler.model import Affinity
from workspace.scheduler.snapshot import Snapshot
from workspace.scheduler.weighers import weighers_for

DIGESTS = ("sha256:a", "sha256:b", "sha256:c")

nodes_st = st.lists(
    st.tuples(
        st.sampled_from(["READY", "READY", "READY", "DRAINING"]),
        st.integers(1, 16),  # cpus
        st.sampled_from([2048, 4096, 8192, 16384]),  # memory: few values, so ties happen
        st.integers(0, 64),  # used cpus
        st.sampled_from([0, 1024, 2048, 4096, 6000]),  # used memory
        st.frozensets(st.sampled_from(DIGESTS)),
        st.booleans(),  # on the network
    ),
    min_size=0,
    max_size=25,
)


def snapshot_of(rows: list[tuple], cfg: SchedulerConfig) -> Snapshot:  # type: ignore[type-arg]
    views = [
        NodeView(
            name=f"n{i:02d}",
            state=state,
            cpus=cpus,
            memory_mib=memory,
            used_cpus=used_cpus,
            used_memory_mib=min(used_memory, memory),
            cached_digests=cached,
            networks=("default",) if on_net else (),
        )
        for i, (state, cpus, memory, used_cpus, used_memory, cached, on_net) in enumerate(rows)
    ]
    return Snapshot(views, cfg)


@settings(max_examples=400, deadline=None)
@given(
    rows=nodes_st,
    policy=st.sampled_from(["pack", "spread", "first"]),
    cpus=st.integers(1, 8),
    memory=st.sampled_from([256, 512, 1024, 1900, 4096]),
    digests=st.lists(st.sampled_from(DIGESTS), unique=True, max_size=3),
    networks=st.sampled_from([(), ("default",)]),
    placements=st.integers(0, 6),
    affinity=st.sampled_from([Affinity.NONE, Affinity.SOFT, Affinity.SOFT_ANTI]),
)
def test_one_pass_chooses_as_the_filters_and_weighers_do(
    rows: list[tuple],  # type: ignore[type-arg]
    policy: str,
    cpus: int,
    memory: int,
    digests: list[str],
    networks: tuple[str, ...],
    placements: int,
    affinity: Affinity,
) -> None:
    cfg = SchedulerConfig(policy=policy)
    snapshot = snapshot_of(rows, cfg)
    weighers = weighers_for(cfg)
    req = Request(cpus=cpus, memory_mib=memory, networks=networks, digests=tuple(digests))
    # Several placements one after the other (members of one group), each consuming what
    # it chose: later choices see hosts with less free, so equal and near-equal weights
    # come up, and the members placed so far weigh in under soft (anti-)affinity.
    for placed in range(placements + 1):
        ctx = member_context(snapshot, req, affinity, placed, (0, 0, None))
        hosts, static_rejected = snapshot.static_candidates(req, ctx, STATIC_FILTERS)
        fused = one_pass(hosts, req, ctx, weighers)
        assert fused is not None
        reference, rejected = choose_filtered(hosts, static_rejected, req, ctx, weighers)
        host, dropped = fused
        assert host is reference
        assert static_rejected + Counter(dropped) == rejected
        assert choose(snapshot, req, ctx, weighers) == (reference, rejected)
        if host is None:
            break
        snapshot.consume(host, req.cpus, ctx.memory_claim_mib)


def test_one_pass_stands_aside_for_hard_affinity_and_bandwidth() -> None:
    cfg = SchedulerConfig()
    snapshot = snapshot_of([("READY", 8, 8192, 0, 0, frozenset(), True)], cfg)
    weighers = weighers_for(cfg)
    hosts = snapshot.hosts
    plain = Request(cpus=1, memory_mib=512)
    for affinity, placed in [(Affinity.HARD, 0), (Affinity.HARD, 1), (Affinity.HARD_ANTI, 1)]:
        ctx = member_context(snapshot, plain, affinity, placed, (1, 600, None))
        assert one_pass(hosts, plain, ctx, weighers) is None, affinity
    reserving = Request(cpus=1, memory_mib=512, disk_mbps=100)
    ctx = member_context(snapshot, reserving, Affinity.NONE, 0, (0, 0, None))
    assert one_pass(hosts, reserving, ctx, weighers) is None
    # The first member of a hard anti-affinity group has no member to keep away from.
    ctx = member_context(snapshot, plain, Affinity.HARD_ANTI, 0, (0, 0, None))
    assert one_pass(hosts, plain, ctx, weighers) is not None
