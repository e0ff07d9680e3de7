"""Preemption as a pure function: the fewest preemptible victims that make a request fit.

Given the nodes, the preemptible workspaces running on them (``Victim``: plain values,
their claims) and a request that does not fit on free capacity, ``plan`` answers where
each member goes and which victims each member displaces, or None if even preempting
every victim would not make the whole request fit (all-or-nothing, like ``place_group``).

Rules (docs/design/preemption.md):

* one member: the victims all come from the node it goes to; the node and victims are
  those with the FEWEST victims, then the least capacity preempted (memory, then vCPUs),
  then the scheduler's own weighing among the nodes still tied (each with its best set
  released); on one node, equal sets are broken by the caller's victim order (``rank``:
  the caller puts the newest first, the least work lost);
* every filter still applies (state, networks, labels, bandwidth, affinity): a set is
  accepted only if the scheduler's dynamic filters pass the node with the set released;
* a group: members in the scheduler's order (largest first); a member that fits on free
  capacity takes it, else it takes its fewest victims, which are released from the
  snapshot as chosen (a greedy per member: the total may not be the global minimum);
* on a node with many victims the exact search is bounded (``MAX_SETS`` candidate sets
  per node and member); past it the node's victims are taken largest first until it fits.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workspace.config import SchedulerConfig
from workspace.errors import InvalidArgument
from workspace.scheduler.engine import choose, group_context, member_context, placement_order
from workspace.scheduler.filters import DYNAMIC_FILTERS, STATIC_FILTERS
from workspace.scheduler.model import Affinity, GroupPlacement, MemberPlacement, NodeView, Request
from workspace.scheduler.snapshot import Context, HostState, Snapshot
from workspace.scheduler.weighers import weighers_for

# Candidate victim sets tried per node and member before falling back to largest first.
MAX_SETS = 4096


@dataclass(frozen=True)
class Victim:
    """A preemptible workspace that may be stopped: its node and what it claims there."""

    id: str
    node: str
    cpus: int
    memory_mib: int  # claimed: guest memory and hypervisor overhead
    disk_mbps: int = 0
    net_mbps: int = 0
    rank: int = 0  # the caller's preference among equals (lower: preempted first)


@dataclass(frozen=True)
class Plan:
    """Where every member goes, and the victims each member displaced (by member index)."""

    placement: GroupPlacement
    displaced: dict[int, tuple[Victim, ...]] = field(default_factory=dict)
    # Nodes whose capacity of victims already on their way out (``pending``) was counted
    # as free: a member placed there must wait for them too.
    pending_nodes: frozenset[str] = frozenset()

    @property
    def victims(self) -> list[Victim]:
        return [v for i in sorted(self.displaced) for v in self.displaced[i]]


def victims_to_dicts(victims: Iterable[Victim]) -> list[dict[str, Any]]:
    """Victims as the scheduler's replay input carries them (key ``victims``, optional)."""
    return [
        {"id": v.id, "node": v.node, "cpus": v.cpus, "memory_mib": v.memory_mib}
        | {k: getattr(v, k) for k in ("disk_mbps", "net_mbps", "rank") if getattr(v, k)}
        for v in victims
    ]


def victims_from(data: Any, key: str = "victims") -> list[Victim]:
    """The ``victims`` of a replay input (none if absent); InvalidArgument if malformed.
    (``pending``: workspaces preempted earlier and still stopping, in the same form.)"""
    raw = data.get(key, []) if isinstance(data, dict) else []
    if not isinstance(raw, list):
        raise InvalidArgument(f"input.{key}: must be a list")
    out: list[Victim] = []
    ints = ("cpus", "memory_mib", "disk_mbps", "net_mbps", "rank")
    for i, d in enumerate(raw):
        where = f"input.{key}[{i}]"
        if not isinstance(d, dict) or not {"id", "node", "cpus", "memory_mib"} <= set(d):
            raise InvalidArgument(f"{where}: needs id, node, cpus and memory_mib")
        unknown = set(d) - {"id", "node", *ints}
        if unknown:
            raise InvalidArgument(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if not all(isinstance(d.get(k, 0), int) for k in ints) or not all(
            isinstance(d[k], str) for k in ("id", "node")
        ):
            raise InvalidArgument(f"{where}: id and node are strings, the rest integers")
        out.append(Victim(**d))
    return out


def cost(victims: Iterable[Victim]) -> tuple[int, int, int]:
    """How much a set preempts, smaller first: count, then memory, then vCPUs."""
    vs = list(victims)
    return (len(vs), sum(v.memory_mib for v in vs), sum(v.cpus for v in vs))


def _free(host: HostState, vs: Iterable[Victim], sign: int = 1) -> None:
    for v in vs:
        host.free_cpus += sign * v.cpus
        host.free_memory_mib += sign * v.memory_mib
        host.free_disk_mbps += sign * v.disk_mbps
        host.free_net_mbps += sign * v.net_mbps


def _fits(host: HostState, req: Request, ctx: Context) -> bool:
    """Whether the dynamic filters pass ``host`` for ``req`` as it is now."""
    return all(f.host_passes(host, req, ctx) is None for f in DYNAMIC_FILTERS if f.active(req, ctx))


def _with(host: HostState, vs: Sequence[Victim], req: Request, ctx: Context) -> bool:
    _free(host, vs)
    try:
        return _fits(host, req, ctx)
    finally:
        _free(host, vs, -1)


def _prefix_tops(victims: Sequence[Victim]) -> list[list[int]]:
    """Per resource (vCPUs, memory, disk, network): the sums of its k largest, k = 0..n."""
    out = []
    for d in ("cpus", "memory_mib", "disk_mbps", "net_mbps"):
        sums = [0]
        for x in sorted((getattr(v, d) for v in victims), reverse=True):
            sums.append(sums[-1] + x)
        out.append(sums)
    return out


def _top_k_passes(
    host: HostState, tops: list[list[int]], k: int, req: Request, ctx: Context
) -> bool:
    """A necessary condition for some ``k`` victims to fit: the filters pass with each
    resource released by its own ``k`` largest (``_prefix_tops``; the filters are
    monotone, one resource each), which no real set of ``k`` can beat."""
    c, m, d, n = (dim[k] for dim in tops)
    host.free_cpus += c
    host.free_memory_mib += m
    host.free_disk_mbps += d
    host.free_net_mbps += n
    try:
        return _fits(host, req, ctx)
    finally:
        host.free_cpus -= c
        host.free_memory_mib -= m
        host.free_disk_mbps -= d
        host.free_net_mbps -= n


def _shape(v: Victim) -> tuple[int, int, int, int]:
    return (v.cpus, v.memory_mib, v.disk_mbps, v.net_mbps)


def fewest_on(
    host: HostState,
    victims: Sequence[Victim],
    req: Request,
    ctx: Context,
    most: int | None = None,
) -> tuple[Victim, ...] | None:
    """The fewest of ``victims`` (then the least capacity, then the lowest ranks) whose
    release lets ``req`` pass on ``host``; None if releasing all of them is not enough
    (or more than ``most`` would be needed).

    Victims of one shape (vCPUs, memory, bandwidth) are interchangeable but for their
    rank, so sets are enumerated as multisets of shapes (the lowest ranks of each shape
    taken), sizes that cannot work are skipped by ``_top_k_passes``, and the search
    stops after ``MAX_SETS`` sets (then largest first)."""
    if not victims or not _with(host, victims, req, ctx):
        return None
    ordered = sorted(victims, key=lambda v: (v.rank, v.id))
    by_shape: dict[tuple[int, int, int, int], list[Victim]] = {}
    for v in ordered:
        by_shape.setdefault(_shape(v), []).append(v)
    shapes = list(by_shape)
    limit = len(ordered) if most is None else min(most, len(ordered))
    tops = _prefix_tops(ordered)
    tried = 0
    for k in range(1, limit + 1):
        if not _top_k_passes(host, tops, k, req, ctx):
            continue
        best: tuple[Victim, ...] | None = None
        best_key: tuple[object, ...] = ()
        for pick in itertools.combinations_with_replacement(range(len(shapes)), k):
            counts = Counter(pick)
            if any(n > len(by_shape[shapes[i]]) for i, n in counts.items()):
                continue
            tried += 1
            if tried > MAX_SETS:
                return best or _largest_first(host, ordered, req, ctx)
            combo = tuple(v for i, n in sorted(counts.items()) for v in by_shape[shapes[i]][:n])
            if _with(host, combo, req, ctx):
                key = (*cost(combo)[1:], tuple(sorted(v.rank for v in combo)))
                if best is None or key < best_key:
                    best, best_key = combo, key
        if best is not None:
            return best
    return None


def _largest_first(
    host: HostState, victims: Sequence[Victim], req: Request, ctx: Context
) -> tuple[Victim, ...]:
    taken: list[Victim] = []
    for v in sorted(victims, key=lambda v: (-v.memory_mib, -v.cpus, v.rank, v.id)):
        taken.append(v)
        if _with(host, taken, req, ctx):
            break
    return tuple(taken)


def fewest(
    snapshot: Snapshot,
    req: Request,
    ctx: Context,
    by_node: dict[str, list[Victim]],
) -> tuple[HostState, tuple[Victim, ...]] | None:
    """The node and victims for one request that does not fit on free capacity."""
    hosts, _ = snapshot.static_candidates(req, ctx, STATIC_FILTERS)
    found: list[tuple[tuple[int, int, int], HostState, tuple[Victim, ...]]] = []
    most: int | None = None  # the fewest found so far: no node needs be searched past it
    for h in hosts:
        mine = by_node.get(h.name)
        if mine:
            got = fewest_on(h, mine, req, ctx, most)
            if got is not None:
                found.append((cost(got), h, got))
                most = len(got) if most is None else min(most, len(got))
    if not found:
        return None
    least = min(c for c, _, _ in found)
    tied = [(h, got) for c, h, got in found if c == least]
    if len(tied) == 1:
        return tied[0]
    # The scheduler's weighing among the tied nodes, each with its set released (no
    # other node passes: the request did not fit without preemption).
    for h, got in tied:
        _free(h, got)
    try:
        host, _ = choose(snapshot, req, ctx, weighers_for(snapshot.cfg))
    finally:
        for h, got in tied:
            _free(h, got, -1)
    for h, got in tied:
        if h is host:
            return h, got
    return tied[0]  # not reached


def plan(
    nodes: Iterable[NodeView],
    victims: Iterable[Victim],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
    pending: Iterable[Victim] = (),
) -> Plan | None:
    """Place every request, preempting the fewest victims needed (None: cannot, even so).

    ``pending``: workspaces preempted earlier that still hold their claims until they
    are gone; their capacity counts as free here (the caller holds a member placed on
    their node back until they are gone), but they are not victims again."""
    snapshot = Snapshot(nodes, cfg)
    pending_nodes: set[str] = set()
    for v in pending:
        host = snapshot.by_name.get(v.node)
        if host is not None:
            _free(host, (v,))
            pending_nodes.add(v.node)
    by_node: dict[str, list[Victim]] = {}
    for v in victims:
        if v.node in snapshot.by_name:
            by_node.setdefault(v.node, []).append(v)
    weighers = weighers_for(cfg)
    group = group_context(snapshot, requests, affinity)
    results: list[MemberPlacement | None] = [None] * len(requests)
    displaced: dict[int, tuple[Victim, ...]] = {}
    taken: list[HostState] = []
    try:
        for placed, i in enumerate(placement_order(requests, snapshot, affinity)):
            req = requests[i]
            ctx = member_context(snapshot, req, affinity, placed, group)
            host, _ = choose(snapshot, req, ctx, weighers)
            if host is None:
                found = fewest(snapshot, req, ctx, by_node)
                if found is None:
                    return None
                host, chosen = found
                _free(host, chosen)
                left = by_node[host.name]
                by_node[host.name] = [v for v in left if v not in chosen]
                displaced[i] = chosen
            snapshot.consume(host, req.cpus, ctx.memory_claim_mib, req.disk_mbps, req.net_mbps)
            taken.append(host)
            results[i] = MemberPlacement(host.name, req.cpus, ctx.memory_claim_mib)
    finally:
        snapshot.end_group(taken)
    members = [r for r in results if r is not None]
    waits = frozenset(m.node for m in members) & pending_nodes
    if not displaced and not waits:
        return None  # it fits without preemption: the caller's own placement answers
    return Plan(GroupPlacement(members), displaced, waits)
