"""Filters: each decides whether one host can take one request, and says why not.

``host_passes`` is the reference: it returns None or the rejection reason, phrased to follow
"N node(s) ..." ("are DRAINING", "have too little free memory"). ``filter_all`` keeps the
passing hosts of a list, in order; the dynamic filters override it with a tight loop that
must agree with ``host_passes`` (a unit test checks they do). Filters run in the fixed,
cheap-first order of :data:`FILTERS`; the first to reject a host is the reason it reports.

Static filters look only at the node's view (its state, networks, labels), so their answer
is computed once per request shape and snapshot; dynamic ones look at what is still free and
at where the group's members went.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from workspace.domain.states import (
    HYPERVISOR_UNREACHABLE,
    NETWORK_NOT_READY,
    NO_ISOLATION,
    NodeState,
)
from workspace.scheduler.model import Affinity, Request
from workspace.scheduler.snapshot import Context, HostState

# Only READY nodes get new work (a plain str: compared in the hot loops).
READY = NodeState.READY.value


class Filter:
    name = "filter"
    # Static filters depend only on the node's view and the request's shape.
    static = False

    def active(self, req: Request, ctx: Context) -> bool:
        """Whether the filter can reject anything for this request (else it is skipped)."""
        return True

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        raise NotImplementedError

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        return [h for h in hosts if self.host_passes(h, req, ctx) is None]

    def every_reason(self, host: HostState, req: Request, ctx: Context) -> list[str]:
        """Every reason this filter has to reject ``host`` (none: it passes). Not on the
        placement's path: ``explain`` shows them all, where ``host_passes`` stops at the
        first (a node matching none of two labels says both)."""
        why = self.host_passes(host, req, ctx)
        return [] if why is None else [why]

    def reason(self, req: Request, ctx: Context) -> str:
        """The rejection reason of a dynamic filter (one per request and context)."""
        raise NotImplementedError

    def rejections(
        self, hosts: Sequence[HostState], kept: Sequence[HostState], req: Request, ctx: Context
    ) -> Counter[str]:
        """Reason → count for the hosts ``filter_all`` dropped (``kept`` ⊆ ``hosts``)."""
        keep = set(kept)  # hosts hash by identity
        return Counter(self.host_passes(h, req, ctx) or self.name for h in hosts if h not in keep)


class StateFilter(Filter):
    """Only READY nodes get new work; DRAINING and DOWN nodes keep what they have."""

    name = "state"
    static = True

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        state = host.view.state
        return None if state == READY else f"are {state}"

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        return [h for h in hosts if h.view.state == READY]

    def rejections(
        self, hosts: Sequence[HostState], kept: Sequence[HostState], req: Request, ctx: Context
    ) -> Counter[str]:
        return Counter(f"are {h.view.state}" for h in hosts if h.view.state != READY)


def _lacks(host: HostState, req: Request) -> str:
    """Why ``host`` lacks ``req``'s networks, naming the first it is not attached to ("":
    it has them all): the admin adds that one to a node's [[networks]]."""
    have = host.view.networks
    missing = next((n for n in req.networks if n not in have), None)
    return "" if missing is None else f"lack a requested network ({missing})"


class NetworkFilter(Filter):
    """The node must be attached to every network the request has a NIC on."""

    name = "networks"
    static = True

    def active(self, req: Request, ctx: Context) -> bool:
        return bool(req.networks)

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        return _lacks(host, req) or None

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        kept = list(hosts)
        for net in req.networks:
            kept = [h for h in kept if net in h.view.networks]
        return kept

    def rejections(
        self, hosts: Sequence[HostState], kept: Sequence[HostState], req: Request, ctx: Context
    ) -> Counter[str]:
        passed = {id(h) for h in kept}
        return Counter(_lacks(h, req) for h in hosts if id(h) not in passed)


class RequirementsFilter(Filter):
    """Every ``key=value`` requirement matches a node label; ``hypervisor`` matches its type."""

    name = "requirements"
    static = True

    def active(self, req: Request, ctx: Context) -> bool:
        return bool(req.requirements)

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        view = host.view
        for key, want in sorted(req.requirements.items()):
            have = view.hypervisor if key == "hypervisor" else view.labels.get(key)
            if have != want:
                return f"do not match {key}={want}"
        return None

    def every_reason(self, host: HostState, req: Request, ctx: Context) -> list[str]:
        view = host.view
        return [
            f"do not match {key}={want}"
            for key, want in sorted(req.requirements.items())
            if (view.hypervisor if key == "hypervisor" else view.labels.get(key)) != want
        ]


class ConditionFilter(Filter):
    """A node whose agent reports it cannot serve the request (docs/design/agent.md, "Node
    conditions"): ``hypervisor-unreachable`` for every request (the node can run no VM),
    ``no-isolation`` for a request whose connectivity policy must be enforced (CLUSTER,
    OUTBOUND), ``network-not-ready:NET`` for one with a NIC on NET."""

    name = "conditions"
    static = True

    UNREACHABLE = f"cannot reach their hypervisor ({HYPERVISOR_UNREACHABLE})"
    NO_ISOLATION = "cannot isolate bridged traffic (no-isolation)"
    NOT_READY = "could not make a requested network ready (network-not-ready)"

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.snapshot.any_conditions

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        have = host.view.conditions
        if not have:
            return None
        if HYPERVISOR_UNREACHABLE in have:
            return self.UNREACHABLE
        if req.isolated and NO_ISOLATION in have:
            return self.NO_ISOLATION
        if any(f"{NETWORK_NOT_READY}:{net}" in have for net in req.networks):
            return self.NOT_READY
        return None

    def every_reason(self, host: HostState, req: Request, ctx: Context) -> list[str]:
        have = host.view.conditions
        out = []
        if HYPERVISOR_UNREACHABLE in have:
            out.append(self.UNREACHABLE)
        if req.isolated and NO_ISOLATION in have:
            out.append(self.NO_ISOLATION)
        if any(f"{NETWORK_NOT_READY}:{net}" in have for net in req.networks):
            out.append(self.NOT_READY)
        return out


class CpuFilter(Filter):
    """vCPUs fit under ``(cpus - reserved_cpus) * cpu_overcommit``."""

    name = "cpu"

    def reason(self, req: Request, ctx: Context) -> str:
        return "have too few free CPUs"

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        return None if host.free_cpus >= req.cpus else self.reason(req, ctx)

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        cpus = req.cpus
        return [h for h in hosts if h.free_cpus >= cpus]


class MemoryFilter(Filter):
    """Guest memory plus hypervisor overhead fits under
    ``memory_mib * memory_overcommit - reserved_memory_mib`` (overcommit 1.0 by default)."""

    name = "memory"

    def reason(self, req: Request, ctx: Context) -> str:
        return "have too little free memory"

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        return None if host.free_memory_mib >= ctx.memory_claim_mib else self.reason(req, ctx)

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        claim = ctx.memory_claim_mib
        return [h for h in hosts if h.free_memory_mib >= claim]


class BandwidthFilter(Filter):
    """A node that declared disk or network capacity (``disk_mbps``/``net_mbps`` in its
    agent config) is never promised more: the request's reservation (its limits per
    writable disk and per NIC) fits in what the node's workspaces leave free."""

    name = "bandwidth"

    def active(self, req: Request, ctx: Context) -> bool:
        return req.disk_mbps > 0 or req.net_mbps > 0

    def reason(self, req: Request, ctx: Context) -> str:
        return "have too little free bandwidth"

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        # A kind of bandwidth the request does not reserve never rejects (even on a node
        # already over its declared capacity, e.g. after the declaration was lowered).
        disk_ok = req.disk_mbps <= 0 or host.free_disk_mbps >= req.disk_mbps
        net_ok = req.net_mbps <= 0 or host.free_net_mbps >= req.net_mbps
        return None if disk_ok and net_ok else self.reason(req, ctx)

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        disk, net = req.disk_mbps, req.net_mbps
        return [
            h
            for h in hosts
            if (disk <= 0 or h.free_disk_mbps >= disk) and (net <= 0 or h.free_net_mbps >= net)
        ]


class HardAntiAffinityFilter(Filter):
    """HARD_ANTI: a node already holding a member of the group is rejected."""

    name = "hard-anti-affinity"

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.affinity is Affinity.HARD_ANTI and ctx.group_placed > 0

    def reason(self, req: Request, ctx: Context) -> str:
        return "already hold a member of the group (hard anti-affinity)"

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        if not self.active(req, ctx) or host.group_members == 0:
            return None
        return self.reason(req, ctx)

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        return [h for h in hosts if h.group_members == 0]


class HardAffinityFilter(Filter):
    """HARD: once a member is placed, only its node passes. Before that, the node chosen for
    the first member must be able to take the whole group (all members' capacity and, if the
    members differ, every member's static filters)."""

    name = "hard-affinity"

    def active(self, req: Request, ctx: Context) -> bool:
        return ctx.affinity is Affinity.HARD

    def reason(self, req: Request, ctx: Context) -> str:
        if ctx.group_placed:
            return "do not hold the group's other members (hard affinity)"
        return "cannot hold the whole group (hard affinity)"

    def host_passes(self, host: HostState, req: Request, ctx: Context) -> str | None:
        if not self.active(req, ctx):
            return None
        if ctx.group_placed:
            ok = host.group_members > 0
        else:
            ok = (
                host.free_cpus >= ctx.group_cpus
                and host.free_memory_mib >= ctx.group_memory_mib
                and (ctx.group_static_ok is None or host.name in ctx.group_static_ok)
            )
        return None if ok else self.reason(req, ctx)

    def filter_all(self, hosts: Sequence[HostState], req: Request, ctx: Context) -> list[HostState]:
        if ctx.group_placed:
            return [h for h in hosts if h.group_members > 0]
        cpus, memory_mib, names = ctx.group_cpus, ctx.group_memory_mib, ctx.group_static_ok
        return [
            h
            for h in hosts
            if h.free_cpus >= cpus
            and h.free_memory_mib >= memory_mib
            and (names is None or h.name in names)
        ]


STATIC_FILTERS: tuple[Filter, ...] = (
    StateFilter(),
    NetworkFilter(),
    RequirementsFilter(),
    ConditionFilter(),
)
DYNAMIC_FILTERS: tuple[Filter, ...] = (
    CpuFilter(),
    MemoryFilter(),
    BandwidthFilter(),
    HardAntiAffinityFilter(),
    HardAffinityFilter(),
)
# The order filters run in (cheap first); a host's reported reason is the first rejection
# (``explain`` lists every filter's, in this order).
FILTERS: tuple[Filter, ...] = STATIC_FILTERS + DYNAMIC_FILTERS
