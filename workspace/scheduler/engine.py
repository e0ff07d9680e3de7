"""Placing one VM or a whole group on a snapshot, all-or-nothing.

Members are placed one at a time, the scarcest first (those the fewest nodes can take at
all), then largest first (guest memory + overhead, then vCPUs, then the caller's order:
"first fit decreasing", which leaves fewer unusable holes than the caller's order would),
each on what the previous ones left. If one cannot be placed, the
snapshot is rolled back and the answer names that member; results are always returned in
the caller's order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

from workspace.config import SchedulerConfig
from workspace.scheduler.filters import DYNAMIC_FILTERS, STATIC_FILTERS
from workspace.scheduler.fused import one_pass
from workspace.scheduler.model import (
    Affinity,
    GroupPlacement,
    MemberPlacement,
    NodeView,
    Placement,
    Request,
    member_label,
    memory_claim_mib,
)
from workspace.scheduler.snapshot import Context, HostState, ShapeKey, Snapshot, shape_key
from workspace.scheduler.weighers import Weigher, best, weighers_for

log = logging.getLogger("workspace.scheduler")


def placement_order(
    requests: Sequence[Request], snapshot: Snapshot, affinity: Affinity = Affinity.NONE
) -> list[int]:
    """Indices of ``requests`` in the order they are placed: the scarcest first (those
    fewer nodes' static filters accept, by powers of two: a head that needs the one GPU
    node goes before workers that could take it), then the largest, then the caller's
    order."""
    if len(requests) < 2:  # a lone create: nothing to order
        return list(range(len(requests)))
    cfg = snapshot.cfg
    ctx = Context(cfg, snapshot, affinity)
    keys = [shape_key(r) for r in requests]
    scarcity: dict[ShapeKey, int] = {}
    for r, key in zip(requests, keys, strict=True):
        if key not in scarcity:
            hosts, _ = snapshot.static_candidates(r, ctx, STATIC_FILTERS)
            scarcity[key] = len(hosts).bit_length()
    return sorted(
        range(len(requests)),
        key=lambda i: (
            scarcity[keys[i]],
            -memory_claim_mib(cfg, requests[i]),
            -requests[i].cpus,
            i,
        ),
    )


def group_context(
    snapshot: Snapshot, requests: Sequence[Request], affinity: Affinity
) -> tuple[int, int, frozenset[str] | None]:
    """For HARD affinity: the group's total vCPUs and memory, and the nodes every distinct
    request shape's static filters accept (None if all members share one shape)."""
    if affinity is not Affinity.HARD:
        return 0, 0, None
    cfg = snapshot.cfg
    cpus = sum(r.cpus for r in requests)
    memory = sum(memory_claim_mib(cfg, r) for r in requests)
    shapes = {shape_key(r): r for r in requests}
    if len(shapes) < 2:
        return cpus, memory, None
    names: frozenset[str] | None = None
    for r in shapes.values():
        ctx = Context(cfg, snapshot, affinity)
        hosts, _ = snapshot.static_candidates(r, ctx, STATIC_FILTERS)
        these = frozenset(h.name for h in hosts)
        names = these if names is None else names & these
    return cpus, memory, names


def member_context(
    snapshot: Snapshot,
    req: Request,
    affinity: Affinity,
    placed: int,
    group: tuple[int, int, frozenset[str] | None],
) -> Context:
    cpus, memory, names = group
    return Context(
        cfg=snapshot.cfg,
        snapshot=snapshot,
        affinity=affinity,
        memory_claim_mib=memory_claim_mib(snapshot.cfg, req),
        group_placed=placed,
        group_cpus=cpus,
        group_memory_mib=memory,
        group_static_ok=names,
    )


def choose(
    snapshot: Snapshot, req: Request, ctx: Context, weighers: Sequence[Weigher]
) -> tuple[HostState | None, Counter[str]]:
    """The host for ``req`` (None if none passes) and how many hosts each reason rejected."""
    hosts, static_rejected = snapshot.static_candidates(req, ctx, STATIC_FILTERS)
    found = one_pass(hosts, req, ctx, weighers)
    if found is None:
        return choose_filtered(hosts, static_rejected, req, ctx, weighers)
    host, dropped = found
    rejected = static_rejected.copy()
    rejected.update({reason: n for reason, n in dropped.items() if n})
    return host, rejected


def choose_filtered(
    hosts: list[HostState],
    static_rejected: Counter[str],
    req: Request,
    ctx: Context,
    weighers: Sequence[Weigher],
) -> tuple[HostState | None, Counter[str]]:
    """``choose`` by the filters' and weighers' own list passes (the reference for
    ``one_pass``, and what runs when a group's filters or weighers are active)."""
    rejected = static_rejected.copy()
    for f in DYNAMIC_FILTERS:
        if not hosts:
            break
        if not f.active(req, ctx):
            continue
        kept = f.filter_all(hosts, req, ctx)
        if len(kept) != len(hosts):
            rejected[f.reason(req, ctx)] += len(hosts) - len(kept)
        hosts = kept
    if not hosts:
        return None, rejected
    return hosts[best(hosts, req, ctx, weighers)], rejected


def place_group_on(
    snapshot: Snapshot, requests: Sequence[Request], affinity: Affinity = Affinity.NONE
) -> GroupPlacement:
    """Place every request on ``snapshot`` or none: on success the snapshot is consumed."""
    weighers = weighers_for(snapshot.cfg)
    group = group_context(snapshot, requests, affinity)
    results: list[MemberPlacement | None] = [None] * len(requests)
    taken: list[tuple[HostState, Request, int]] = []
    try:
        for placed, i in enumerate(placement_order(requests, snapshot, affinity)):
            req = requests[i]
            ctx = member_context(snapshot, req, affinity, placed, group)
            host, rejected = choose(snapshot, req, ctx, weighers)
            if host is None:
                for h, r, memory in reversed(taken):
                    snapshot.release(h, r.cpus, memory, r.disk_mbps, r.net_mbps)
                label = member_label(req, i)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("member %s does not fit: %s", label, dict(rejected))
                return GroupPlacement(None, label, i, dict(rejected))
            snapshot.consume(host, req.cpus, ctx.memory_claim_mib, req.disk_mbps, req.net_mbps)
            taken.append((host, req, ctx.memory_claim_mib))
            results[i] = MemberPlacement(host.name, req.cpus, ctx.memory_claim_mib)
    finally:
        snapshot.end_group(h for h, _, _ in taken)
    return GroupPlacement([r for r in results if r is not None])


def place_on(snapshot: Snapshot, req: Request) -> Placement:
    """Place one VM on ``snapshot``; on success the snapshot is consumed."""
    weighers = weighers_for(snapshot.cfg)
    ctx = member_context(snapshot, req, Affinity.NONE, 0, (0, 0, None))
    host, rejected = choose(snapshot, req, ctx, weighers)
    if host is None:
        return Placement(None, rejected=dict(rejected))
    snapshot.consume(host, req.cpus, ctx.memory_claim_mib, req.disk_mbps, req.net_mbps)
    snapshot.end_group((host,))
    return Placement(host.name, req.cpus, ctx.memory_claim_mib, dict(rejected))


def place_group(
    nodes: Iterable[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
) -> GroupPlacement:
    """All-or-nothing placement of ``requests`` (one VM each) on a fresh snapshot of ``nodes``."""
    return place_group_on(Snapshot(nodes, cfg), requests, affinity)


def place(nodes: Iterable[NodeView], req: Request, cfg: SchedulerConfig) -> Placement:
    """Placement of one VM: ``place_group`` with a single request."""
    return place_on(Snapshot(nodes, cfg), req)
