"""Placement as a pure function of (nodes snapshot, request) → node or reasons.

Filters say why they reject a node; weighers order the survivors. The result can
be replayed offline from the same inputs (after Ganeti's iallocator and Nova's
filter scheduler).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from workspace.config import SchedulerConfig


@dataclass(frozen=True)
class NodeView:
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


@dataclass(frozen=True)
class Request:
    cpus: int
    memory_mib: int
    networks: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    # Label requirements, e.g. {"hypervisor": "xen"}; "hypervisor" matches the node's type.
    requirements: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    node: str | None
    claimed_cpus: int = 0
    claimed_memory_mib: int = 0
    # filter name → how many nodes it rejected
    rejected: dict[str, int] = field(default_factory=dict)

    def reason(self) -> str:
        if not self.rejected:
            return "no nodes are registered"
        parts = ", ".join(f"{n} node(s) {why}" for why, n in sorted(self.rejected.items()))
        return f"no node can host it: {parts}"


def overhead_mib(cfg: SchedulerConfig, memory_mib: int, cpus: int) -> int:
    """Hypervisor memory overhead of one VM: fixed + per GiB of guest RAM + per vCPU."""
    per_gib = (memory_mib * cfg.overhead_per_gib_mib + 1023) // 1024
    return cfg.overhead_fixed_mib + per_gib + cfg.overhead_per_vcpu_mib * cpus


def _reject(node: NodeView, req: Request, cfg: SchedulerConfig, mem_claim: int) -> str | None:
    """The first reason `node` cannot host `req`, or None if it can."""
    if node.state != "READY":
        return f"are {node.state}"
    missing = [n for n in req.networks if n not in node.networks]
    if missing:
        return "lack a requested network"
    for key, want in req.requirements.items():
        have = node.hypervisor if key == "hypervisor" else node.labels.get(key)
        if have != want:
            return f"do not match {key}={want}"
    cpu_cap = int(node.cpus * cfg.cpu_overcommit) - cfg.reserved_cpus
    if node.used_cpus + req.cpus > cpu_cap:
        return "have too few free CPUs"
    mem_cap = int(node.memory_mib * cfg.memory_overcommit) - cfg.reserved_memory_mib
    if node.used_memory_mib + mem_claim > mem_cap:
        return "have too little free memory"
    return None


def place(nodes: Sequence[NodeView], req: Request, cfg: SchedulerConfig) -> Placement:
    mem_claim = req.memory_mib + overhead_mib(cfg, req.memory_mib, req.cpus)
    rejected: Counter[str] = Counter()
    fits: list[NodeView] = []
    for node in nodes:
        why = _reject(node, req, cfg, mem_claim)
        if why is None:
            fits.append(node)
        else:
            rejected[why] += 1
    if not fits:
        return Placement(None, rejected=dict(rejected))

    def free_mem(n: NodeView) -> int:
        return int(n.memory_mib * cfg.memory_overcommit) - n.used_memory_mib

    def cached(n: NodeView) -> int:
        return sum(1 for d in req.digests if d in n.cached_digests)

    if cfg.policy == "spread":
        best = max(fits, key=lambda n: (cached(n), free_mem(n), n.name))
    elif cfg.policy == "first":
        best = fits[0]
    else:  # pack: best fit
        best = min(fits, key=lambda n: (-cached(n), free_mem(n), n.name))
    return Placement(best.name, req.cpus, mem_claim, dict(rejected))
