"""The host snapshot a placement consumes, and the per-member context filters see.

A :class:`Snapshot` copies the node views once into mutable :class:`HostState` objects
(free capacity after overcommit and reservations). Each placed VM is subtracted from its
host at once, so the next member of the same request sees what is left: a group can never
double-book. Static answers (which hosts pass state/network/requirement filters for a given
request shape, how much of an image each host caches) are memoised for the snapshot's life.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from workspace.config import SchedulerConfig
from workspace.scheduler.model import Affinity, NodeView, Request


class StaticFilter(Protocol):
    """What the snapshot needs of a filter (``workspace.scheduler.filters.Filter``)."""

    def active(self, req: Request, ctx: Context) -> bool: ...

    def filter_all(
        self, hosts: Sequence[HostState], req: Request, ctx: Context
    ) -> list[HostState]: ...

    def rejections(
        self, hosts: Sequence[HostState], kept: Sequence[HostState], req: Request, ctx: Context
    ) -> Counter[str]: ...


# The free bandwidth of a node that declared no capacity: never the reason to refuse.
UNBOUNDED = 1 << 62

ShapeKey = tuple[tuple[str, ...], tuple[tuple[str, str], ...], bool]


def capacity(cpus: int, memory_mib: int, cfg: SchedulerConfig) -> tuple[int, int]:
    """What may be placed on a node of ``cpus`` and ``memory_mib``: vCPUs and MiB. The
    reservations of ``cfg`` are the host's own CPUs and memory, kept back before the
    overcommit ratios multiply what is left (as Nova's placement counts)."""
    return (
        int(max(cpus - cfg.reserved_cpus, 0) * cfg.cpu_overcommit),
        int(max(memory_mib - cfg.reserved_memory_mib, 0) * cfg.memory_overcommit),
    )


class HostState:
    """One node during a placement: its view plus what is still free (mutable scratch)."""

    __slots__ = (
        "cpu_capacity",
        "free_cpus",
        "free_disk_mbps",
        "free_memory_mib",
        "free_net_mbps",
        "group_members",
        "memory_capacity_mib",
        "name",
        "rank",
        "view",
    )

    def __init__(
        self, view: NodeView, rank: int, cpu_capacity: int, memory_capacity_mib: int
    ) -> None:
        self.view = view
        self.name = view.name
        self.rank = rank  # position in name order: the final tie-break
        # What may be claimed on the node in all, after overcommit and reservations.
        self.cpu_capacity = cpu_capacity
        self.memory_capacity_mib = memory_capacity_mib
        self.free_cpus = cpu_capacity - view.used_cpus
        self.free_memory_mib = memory_capacity_mib - view.used_memory_mib
        # Bandwidth still free to promise (UNBOUNDED: the node declared none).
        self.free_disk_mbps = (
            view.disk_mbps - view.used_disk_mbps if view.disk_mbps > 0 else UNBOUNDED
        )
        self.free_net_mbps = view.net_mbps - view.used_net_mbps if view.net_mbps > 0 else UNBOUNDED
        self.group_members = 0  # members of the group being placed now

    @classmethod
    def of(cls, view: NodeView, rank: int, cfg: SchedulerConfig) -> HostState:
        return cls(view, rank, *capacity(view.cpus, view.memory_mib, cfg))

    @property
    def used_cpus(self) -> int:
        return self.cpu_capacity - self.free_cpus

    @property
    def used_memory_mib(self) -> int:
        return self.memory_capacity_mib - self.free_memory_mib

    def __repr__(self) -> str:
        return (
            f"HostState({self.name!r}, free_cpus={self.free_cpus}, "
            f"free_memory_mib={self.free_memory_mib}, group_members={self.group_members})"
        )


@dataclass(frozen=True)
class Context:
    """What a filter or weigher knows besides the host and the request."""

    cfg: SchedulerConfig
    snapshot: Snapshot
    affinity: Affinity = Affinity.NONE
    # Guest memory + hypervisor overhead of this request.
    memory_claim_mib: int = 0
    # Members of the current group already placed in the snapshot.
    group_placed: int = 0
    # Hard affinity, first member only: the whole group must fit on the node it picks.
    group_cpus: int = 0
    group_memory_mib: int = 0
    # Hard affinity with members of different shapes: the nodes every member's static
    # filters accept (None: no extra restriction).
    group_static_ok: frozenset[str] | None = None


_by_name = operator.attrgetter("name")


def shape_key(req: Request) -> ShapeKey:
    return (req.networks, tuple(sorted(req.requirements.items())), req.isolated)


class Snapshot:
    """Mutable free capacity of every node, in name order, consumed as VMs are placed."""

    def __init__(self, nodes: Iterable[NodeView], cfg: SchedulerConfig) -> None:
        ordered = sorted(nodes, key=_by_name)
        for a, b in itertools.pairwise(ordered):
            if a.name == b.name:
                raise ValueError(f"node {a.name!r} appears twice in the snapshot")
        self.cfg = cfg
        self.hosts = [HostState.of(view, rank, cfg) for rank, view in enumerate(ordered)]
        self.by_name = {h.name: h for h in self.hosts}
        # Scale for the pack/spread weights: free memory / scale is within [0, 1].
        self.memory_scale_mib = max([1, *(h.memory_capacity_mib for h in self.hosts)])
        # Whether any node reports a condition (else the conditions' filter is skipped).
        self.any_conditions = any(h.view.conditions for h in self.hosts)
        self._static: dict[ShapeKey, tuple[list[HostState], Counter[str]]] = {}
        self._cache: dict[tuple[str, ...], dict[int, float] | None] = {}

    def __len__(self) -> int:
        return len(self.hosts)

    # -- memoised static answers --------------------------------------------------------

    def static_candidates(
        self, req: Request, ctx: Context, filters: Sequence[StaticFilter]
    ) -> tuple[list[HostState], Counter[str]]:
        """Hosts passing the static ``filters`` for ``req``'s shape, and rejections by reason.

        Static filters look only at a node's view, never at what is free, so the answer
        holds for the snapshot's whole life. Callers must not mutate the returned objects.
        """
        key = shape_key(req)
        hit = self._static.get(key)
        if hit is None:
            hosts = self.hosts
            rejected: Counter[str] = Counter()
            for f in filters:
                if not hosts:
                    break
                if not f.active(req, ctx):
                    continue
                kept = f.filter_all(hosts, req, ctx)
                if len(kept) != len(hosts):
                    rejected += f.rejections(hosts, kept, req, ctx)
                hosts = kept
            hit = self._static[key] = (hosts, rejected)
        return hit

    def cache_weights(self, digests: tuple[str, ...]) -> dict[int, float] | None:
        """Host rank → fraction of ``digests`` it caches, for hosts caching any (None: none)."""
        if not digests:
            return None
        if digests not in self._cache:
            wanted = frozenset(digests)
            total = len(wanted)
            weights = {
                h.rank: len(wanted & h.view.cached_digests) / total
                for h in self.hosts
                if not wanted.isdisjoint(h.view.cached_digests)
            }
            self._cache[digests] = weights or None
        return self._cache[digests]

    # -- consumption ----------------------------------------------------------------------

    def consume(
        self, host: HostState, cpus: int, memory_mib: int, disk_mbps: int = 0, net_mbps: int = 0
    ) -> None:
        host.free_cpus -= cpus
        host.free_memory_mib -= memory_mib
        host.free_disk_mbps -= disk_mbps
        host.free_net_mbps -= net_mbps
        host.group_members += 1

    def release(
        self, host: HostState, cpus: int, memory_mib: int, disk_mbps: int = 0, net_mbps: int = 0
    ) -> None:
        host.free_cpus += cpus
        host.free_memory_mib += memory_mib
        host.free_disk_mbps += disk_mbps
        host.free_net_mbps += net_mbps
        host.group_members -= 1

    def end_group(self, hosts: Iterable[HostState]) -> None:
        """Forget group membership (capacity stays consumed): the next group starts afresh."""
        for h in hosts:
            h.group_members = 0
