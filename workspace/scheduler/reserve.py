"""The nodes the head of the capacity queue holds: its reservation (pure, no store).

VMs have no known end time, so we cannot reserve a *time* for the head as Slurm's
backfill does. We reserve *where* instead: the node(s) the head will most likely be
placed on, and only those; every other node stays open to later requests. Those nodes
only ever gain free capacity (nothing new is placed there while they are held), so the
head's wait is bounded by the work already on them (docs/design/scheduler.md, "The
capacity queue: what the head holds").

* A single workspace holds the one node, of those that could host it if they were
  empty, that is closest to fitting it: the largest share of the request its free
  capacity covers (the least covered of vCPUs, memory and declared bandwidth), counting
  as free what workspaces already going away still hold; ties go to the first in name
  order.
* A group (a cluster) ranks the nodes the same way against the group's total and holds
  the nodes its members would take, on those nodes emptied, for the shortest prefix of
  that ranking on which the whole group fits (the scheduler's own placement, affinity
  included). A group that would not fit even on every node emptied (it waits for nodes
  to be added) holds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from workspace.config import SchedulerConfig
from workspace.scheduler.engine import member_context, place_group
from workspace.scheduler.filters import STATIC_FILTERS
from workspace.scheduler.model import Affinity, NodeView, Request, memory_claim_mib
from workspace.scheduler.snapshot import UNBOUNDED, HostState, Snapshot, shape_key

# What a node's workspaces that are going away still hold: vCPUs, MiB, disk MB/s, net Mbit/s.
Leaving = tuple[int, int, int, int]


def emptied(node: NodeView) -> NodeView:
    """``node`` with nothing on it (its state, size, networks and labels kept)."""
    return NodeView(
        name=node.name,
        state=node.state,
        cpus=node.cpus,
        memory_mib=node.memory_mib,
        hypervisor=node.hypervisor,
        labels=node.labels,
        networks=node.networks,
        disk_mbps=node.disk_mbps,
        net_mbps=node.net_mbps,
        conditions=node.conditions,
    )


def prospective(node: NodeView, leaving: Leaving | None) -> NodeView:
    """``node`` as it will be once its workspaces going away are gone."""
    if not leaving:
        return node
    cpus, memory, disk, net = leaving
    return replace(
        node,
        used_cpus=max(0, node.used_cpus - cpus),
        used_memory_mib=max(0, node.used_memory_mib - memory),
        used_disk_mbps=max(0, node.used_disk_mbps - disk),
        used_net_mbps=max(0, node.used_net_mbps - net),
    )


def _fits_empty(host: HostState, req: Request, claim_mib: int) -> bool:
    """Whether ``req`` fits ``host`` once it is empty: its size and declared bandwidth
    (what the cpu, memory and bandwidth filters check, against the whole node)."""
    view = host.view
    return (
        req.cpus <= host.cpu_capacity
        and claim_mib <= host.memory_capacity_mib
        and not (view.disk_mbps > 0 and req.disk_mbps > view.disk_mbps)
        and not (view.net_mbps > 0 and req.net_mbps > view.net_mbps)
    )


def _able(snapshot: Snapshot, requests: Sequence[Request]) -> list[HostState]:
    """The hosts (in name order) on which at least one of ``requests`` would fit if they
    were empty: the static filters (state, networks, labels), then the size."""
    cfg = snapshot.cfg
    able: set[str] = set()
    shapes = {(shape_key(r), r.cpus, r.memory_mib, r.disk_mbps, r.net_mbps): r for r in requests}
    for req in shapes.values():
        ctx = member_context(snapshot, req, Affinity.NONE, 0, (0, 0, None))
        hosts, _ = snapshot.static_candidates(req, ctx, STATIC_FILTERS)
        claim = memory_claim_mib(cfg, req)
        able.update(h.name for h in hosts if h.name not in able and _fits_empty(h, req, claim))
    return [h for h in snapshot.hosts if h.name in able]


def _coverage(host: HostState, need: tuple[int, int, int, int]) -> float:
    """The share of ``need`` (vCPUs, memory claim, disk, net) the host's free capacity
    covers: that of the least covered resource (a resource not needed, or not declared
    by the node, does not count)."""
    cpus, memory, disk, net = need
    shares = [max(0, host.free_cpus) / cpus if cpus else 1.0]
    shares.append(max(0, host.free_memory_mib) / memory if memory else 1.0)
    if disk and host.free_disk_mbps < UNBOUNDED // 2:
        shares.append(max(0, host.free_disk_mbps) / disk)
    if net and host.free_net_mbps < UNBOUNDED // 2:
        shares.append(max(0, host.free_net_mbps) / net)
    return min(shares)


def ranked(
    nodes: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    leaving: Mapping[str, Leaving],
) -> list[NodeView]:
    """The nodes that could host some member if empty, closest to fitting the group first
    (its total need; free capacity counts what is going away), then in name order."""
    snapshot = Snapshot([prospective(n, leaving.get(n.name)) for n in nodes], cfg)
    need = (
        sum(r.cpus for r in requests),
        sum(memory_claim_mib(cfg, r) for r in requests),
        sum(r.disk_mbps for r in requests),
        sum(r.net_mbps for r in requests),
    )
    scored = [(-_coverage(h, need), h.rank, h.view) for h in _able(snapshot, requests)]
    scored.sort(key=lambda t: (t[0], t[1]))
    return [v for _, _, v in scored]


def reserve(
    nodes: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity = Affinity.NONE,
    leaving: Mapping[str, Leaving] | None = None,
) -> tuple[str, ...]:
    """The nodes (in name order) the head of the queue holds: ``requests`` is the head
    (one workspace, or every member of a cluster), ``leaving`` what each node's workspaces
    going away still hold. Empty: it holds none."""
    if not requests:
        return ()
    order = ranked(nodes, requests, cfg, leaving or {})
    if not order:
        return ()
    if len(requests) == 1:
        return (order[0].name,)
    return _shortest_prefix(order, requests, cfg, affinity)


def _fits(
    prefix: Sequence[NodeView],
    requests: Sequence[Request],
    cfg: SchedulerConfig,
    affinity: Affinity,
) -> tuple[str, ...] | None:
    result = place_group([emptied(n) for n in prefix], requests, cfg, affinity)
    if result.placements is None:
        return None
    return tuple(sorted({p.node for p in result.placements}))


def _shortest_prefix(
    order: list[NodeView], requests: Sequence[Request], cfg: SchedulerConfig, affinity: Affinity
) -> tuple[str, ...]:
    """The nodes the group takes on the shortest prefix of ``order`` (emptied) that holds
    it: from the first length whose total capacity could (and, for HARD_ANTI, with a
    node per member), growing by doubling, then narrowed by bisection (the scheduler is
    greedy, so the answer is a prefix that holds it whose one-shorter prefix does not)."""
    cpus = sum(r.cpus for r in requests)
    memory = sum(memory_claim_mib(cfg, r) for r in requests)
    low = len(order)
    have_cpus = have_memory = 0
    for k, n in enumerate(order, start=1):
        h = HostState.of(emptied(n), 0, cfg)
        have_cpus += h.cpu_capacity
        have_memory += h.memory_capacity_mib
        if have_cpus >= cpus and have_memory >= memory:
            low = k
            break
    if affinity is Affinity.HARD_ANTI:
        low = max(low, len(requests))
    if low > len(order):
        return ()
    # Doubling from ``low`` until a prefix holds it; the answer lies in (miss, k].
    miss, k, step = low - 1, low, 1
    while (found := _fits(order[:k], requests, cfg, affinity)) is None:
        if k == len(order):
            return ()  # not even every node, emptied: it waits for nodes to be added
        miss, k, step = k, min(k + step, len(order)), step * 2
    while k - miss > 1:
        mid = (miss + k) // 2
        got = _fits(order[:mid], requests, cfg, affinity)
        if got is None:
            miss = mid
        else:
            k, found = mid, got
    return found
