"""The scheduler's value types: what it is given (nodes, requests) and what it answers."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from workspace.config import SchedulerConfig


@dataclass(frozen=True)
class NodeView:
    """One node as the store sees it when a placement starts."""

    name: str
    state: str  # READY | DRAINING | DOWN
    cpus: int
    memory_mib: int
    used_cpus: int = 0
    used_memory_mib: int = 0
    hypervisor: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    cached_digests: frozenset[str] = frozenset()
    # Declared guaranteed-bandwidth capacity (0: none declared, nothing bounded) and what
    # the node's workspaces reserve (ops/netpolicy.py ``reservation``).
    disk_mbps: int = 0
    net_mbps: int = 0
    used_disk_mbps: int = 0
    used_net_mbps: int = 0
    # What its agent last reported keeps it from serving some workspaces, by label:
    # ``no-isolation``, ``network-not-ready:NET`` (domain/model.py ``NodeCondition``).
    conditions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Request:
    """One VM to place. ``member`` names it in reasons ("member worker-3 does not fit")."""

    cpus: int
    memory_mib: int
    networks: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    # Label requirements, e.g. {"hypervisor": "xen"}; "hypervisor" matches the node's type.
    requirements: dict[str, str] = field(default_factory=dict)
    member: str = ""
    # Bandwidth reserved on the node: disk MB/s (per writable disk, summed) and network
    # Mbit/s (per NIC, summed); 0: none.
    disk_mbps: int = 0
    net_mbps: int = 0
    # Its connectivity policy (CLUSTER, OUTBOUND) must be enforced on its node: a node
    # that cannot isolate bridged traffic (``no-isolation``) is no place for it.
    isolated: bool = False


class Affinity(enum.IntEnum):
    """Where the members of one group go relative to each other.

    The values are those of the proto enum ``workspace.v1.Affinity`` (``AFFINITY_<NAME>``).
    """

    NONE = 0
    SOFT_ANTI = 1  # prefer different nodes
    HARD_ANTI = 2  # every member on a different node, or fail
    SOFT = 3  # prefer the same node
    HARD = 4  # all members on one node, or fail

    @classmethod
    def parse(cls, text: str) -> Affinity:
        """``"HARD_ANTI"`` or ``"AFFINITY_HARD_ANTI"`` (any case) → ``Affinity.HARD_ANTI``."""
        key = text.strip().upper().removeprefix("AFFINITY_")
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(a.name for a in cls)
            raise ValueError(f"unknown affinity {text!r}; use one of {names}") from None


def affinity_from_proto(value: int) -> Affinity:
    """The proto enum value (``clusters_pb2.AFFINITY_*``) as an :class:`Affinity`."""
    try:
        return Affinity(value)
    except ValueError:
        raise ValueError(f"unknown affinity value {value}") from None


def affinity_to_proto(affinity: Affinity) -> int:
    return int(affinity)


def format_rejections(rejected: Mapping[str, int]) -> str:
    """``{"are DOWN": 1, "have too little free memory": 2}`` →
    ``"2 node(s) have too little free memory, 1 node(s) are DOWN"`` (most frequent first)."""
    if not rejected:
        return "no nodes are registered"
    ordered = sorted(rejected.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} node(s) {why}" for why, count in ordered)


@dataclass(frozen=True)
class Placement:
    """The answer for one VM: a node and the capacity claimed on it, or why none fits."""

    node: str | None
    claimed_cpus: int = 0
    claimed_memory_mib: int = 0
    # rejection reason → how many nodes were rejected for it
    rejected: dict[str, int] = field(default_factory=dict)

    def reason(self) -> str:
        if not self.rejected:
            return "no nodes are registered"
        return f"no node can host it: {format_rejections(self.rejected)}"


class MemberPlacement(NamedTuple):
    """Where one member of a group goes (unpacks as ``node, cpus, memory_mib``)."""

    node: str
    claimed_cpus: int
    claimed_memory_mib: int


@dataclass(frozen=True)
class GroupPlacement:
    """The all-or-nothing answer for a group: every member placed, or the first that cannot be.

    On success ``placements`` has one entry per request, in the caller's order. On failure it
    is None, ``failed_member`` names the member (its ``member`` label, or ``#<n>`` counted from
    1 in the caller's order) and ``rejected`` counts the nodes each reason rejected for it.
    """

    placements: list[MemberPlacement] | None
    failed_member: str = ""
    failed_index: int = -1
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def nodes(self) -> list[MemberPlacement] | None:
        """Alias of ``placements``."""
        return self.placements

    @property
    def ok(self) -> bool:
        return self.placements is not None

    def reason(self) -> str:
        """Why the failed member does not fit, e.g. ``"2 node(s) have too little free memory,
        1 node(s) are DRAINING"``; the caller prefixes ``"member worker-3 does not fit: "``."""
        if self.placements is not None:
            return ""
        return format_rejections(self.rejected)


def overhead_mib(cfg: SchedulerConfig, memory_mib: int, cpus: int) -> int:
    """Hypervisor memory overhead of one VM: fixed + per GiB of guest RAM + per vCPU."""
    per_gib = (memory_mib * cfg.overhead_per_gib_mib + 1023) // 1024
    return cfg.overhead_fixed_mib + per_gib + cfg.overhead_per_vcpu_mib * cpus


def memory_claim_mib(cfg: SchedulerConfig, req: Request) -> int:
    """Memory a VM takes from its node: guest RAM plus hypervisor overhead."""
    return req.memory_mib + overhead_mib(cfg, req.memory_mib, req.cpus)


def member_label(req: Request, index: int) -> str:
    return req.member or f"#{index + 1}"
