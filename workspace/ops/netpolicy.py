"""Network policy and limits of workspaces (workspace/domain/netpolicy.py), service side.

* At create (``apply``): connectivity, allow rules and limits are the request's; each
  limit left 0 takes the project's default (``ws-admin project create
  --default-net-mbps``), then the site's (``[defaults]`` in the service config); the
  connectivity left out takes the site's. Cluster members get the cluster request's.
  What is stored is what is enforced: the row's ``limits`` have the defaults applied.
* Bandwidth reservations (``reservation``): a workspace with ``net_mbps`` reserves it
  on each of its NICs, one with ``disk_mbps`` on each of its writable disks (cow and
  blank partitions; read-only ones are shared and not counted). The scheduler never
  promises more than a node declared (scheduler/filters.py ``BandwidthFilter``).
* Orders (``peers``): a CLUSTER workspace's order carries every address of every live
  member of its cluster, on any node, so the node's filter lets exactly those through.
* `ws update` (ops/update.py): what changed (``changes``), the node's bandwidth for the
  new limits (``check_bandwidth``) and its reservation (``reserve``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import netaddr
from sqlalchemy import select
from sqlalchemy.orm import Session

from images.model import Mode
from workspace.config import ServiceConfig
from workspace.domain.model import CreateSpec
from workspace.domain.netpolicy import AllowRule, Connectivity, Limits
from workspace.domain.states import State
from workspace.errors import ResourceExhausted
from workspace.store import IpAllocation, Node, Project, Workspace
from workspace.store.mapping import (
    bound_spec,
    limits,
    set_policy,
)

log = logging.getLogger("workspace.ops.netpolicy")


# -- create ----------------------------------------------------------------------------------


def project_limits(s: Session, project: str) -> Limits:
    """A project's default limits (none: every 0)."""
    p = s.get(Project, project) if project else None
    return Limits.from_dict(p.default_limits or {}) if p is not None else Limits()


def effective(
    cfg: ServiceConfig, s: Session, spec: CreateSpec, project: str
) -> tuple[Connectivity, tuple[AllowRule, ...], Limits]:
    """What a new workspace gets: the request's values, else the project's defaults,
    else the site's. InvalidArgument names a limit out of range."""
    spec.limits.validate()
    site = cfg.defaults
    conn = spec.connectivity or Connectivity.parse(site.connectivity)
    lim = spec.limits.over(project_limits(s, project)).over(site.limits())
    return conn, tuple(sorted(set(spec.allow))), lim


def apply(cfg: ServiceConfig, s: Session, ws: Workspace, spec: CreateSpec, project: str) -> None:
    """Store a new row's connectivity, allow rules and enforced limits."""
    set_policy(ws, *effective(cfg, s, spec, project))


def restricted(ws: Workspace) -> bool:
    """Whether ``ws``'s connectivity must be enforced on its node (CLUSTER, OUTBOUND): a
    node that cannot isolate bridged traffic cannot serve it (``no-isolation``)."""
    return (ws.connectivity or Connectivity.OPEN.value) != Connectivity.OPEN.value


def writable_disks(ws: Workspace) -> int:
    return sum(1 for p in bound_spec(ws).partitions if p.mode is not Mode.READONLY)


def reservation(ws: Workspace, lim: Limits | None = None) -> tuple[int, int]:
    """(disk MB/s, network Mbit/s) the workspace reserves on its node with limits
    ``lim`` (default: its own): per writable disk and per NIC."""
    lim = limits(ws) if lim is None else lim
    return lim.disk_mbps * writable_disks(ws), lim.net_mbps * len(ws.networks or ())


# -- orders ----------------------------------------------------------------------------------


def peers(s: Session, rows: Sequence[Workspace]) -> dict[str, tuple[str, ...]]:
    """Workspace id → the addresses of every live member of its cluster (its own
    included), for the CLUSTER-connectivity members among ``rows``."""
    clusters = {
        w.cluster
        for w in rows
        if w.cluster and (w.connectivity or "open") == Connectivity.CLUSTER.value
    }
    if not clusters:
        return {}
    found: dict[str, set[str]] = {c: set() for c in clusters}
    q = (
        select(Workspace.cluster, IpAllocation.ip)
        .join(Workspace, Workspace.id == IpAllocation.workspace_id)
        .where(Workspace.cluster.in_(sorted(clusters)), Workspace.state != State.TERMINATED.value)
    )
    for cluster, ip in s.execute(q):
        found[cluster].add(ip)
    ordered = {
        c: tuple(sorted(ips, key=lambda a: int(netaddr.IPAddress(a)))) for c, ips in found.items()
    }
    return {w.id: ordered[w.cluster] for w in rows if w.cluster in ordered}


# -- ws update -------------------------------------------------------------------------------


def changes(
    old: tuple[Connectivity, tuple[AllowRule, ...], Limits],
    new: tuple[Connectivity, tuple[AllowRule, ...], Limits],
) -> str:
    out = []
    if old[0] is not new[0]:
        out.append(f"connectivity {old[0].value} -> {new[0].value}")
    if old[1] != new[1]:
        out.append("allow " + (",".join(str(r) for r in new[1]) or "none"))
    before, after = old[2].as_dict(), new[2].as_dict()
    out += [f"{k} {before[k]} -> {after[k]}" for k in after if before[k] != after[k]]
    return "; ".join(out)


def check_bandwidth(s: Session, ws: Workspace, lim: Limits) -> None:
    """ResourceExhausted if the new limits would reserve more than the node declared."""
    if not ws.node:
        return
    node = s.get(Node, ws.node)
    if node is None:
        return
    disk, net = reservation(ws, lim)
    for what, cap, used, mine, want in (
        ("disk", node.disk_mbps, node.used_disk_mbps, ws.claimed_disk_mbps, disk),
        ("network", node.net_mbps, node.used_net_mbps, ws.claimed_net_mbps, net),
    ):
        if cap and want > mine and (used or 0) - (mine or 0) + want > cap:
            unit = "MB/s" if what == "disk" else "Mbit/s"
            raise ResourceExhausted(
                f"workspace {ws.name}: node {node.name} has too little free {what} "
                f"bandwidth ({want} {unit} wanted, {cap - (used or 0) + (mine or 0)} {unit} "
                "free; bandwidth)"
            )


def reserve(s: Session, ws: Workspace, lim: Limits | None = None) -> None:
    """Move the node's bandwidth claim of ``ws`` to what ``lim`` (default: its own
    limits) reserves."""
    disk, net = reservation(ws, lim)
    node = s.get(Node, ws.node) if ws.node else None
    if node is not None:
        node.used_disk_mbps = max(
            0, (node.used_disk_mbps or 0) - (ws.claimed_disk_mbps or 0) + disk
        )
        node.used_net_mbps = max(0, (node.used_net_mbps or 0) - (ws.claimed_net_mbps or 0) + net)
    ws.claimed_disk_mbps = disk
    ws.claimed_net_mbps = net
