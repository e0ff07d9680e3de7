"""Rows ⇄ domain objects: the one place that reads and writes the JSON columns.

A workspace's ``image_spec`` is an ``ImageSpec.to_dict``; an image's ``partitions`` are
``Partition.to_dict``s; a cluster's ``spec`` are ``MemberSpec.to_dict``s. NICs are
built here, once, from the allocation rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from images.model import ImageSpec, Partition
from workspace import ipam
from workspace.domain.model import (
    CacheRecord,
    ClusterView,
    MemberSpec,
    NetworkInfo,
    Nic,
    NodeStatus,
    WorkspaceView,
)
from workspace.domain.states import ClusterState, Desired, NodeState, State
from workspace.store.models import Cluster, Image, IpAllocation, Network, Node, Workspace

# What the API shows before the reason a request waits for capacity.
WAITING = "waiting for capacity: "


# -- images and a workspace's copy of one ----------------------------------------------------


def image_spec(img: Image) -> ImageSpec:
    """The image row as the ImageSpec a signature covers and a workspace binds to."""
    return ImageSpec(
        img.name,
        tuple(Partition.from_dict(p) for p in img.partitions or ()),
        img.kernel_digest,
        img.initrd_digest,
        img.cmdline,
    )


def partitions_column(parts: Iterable[Partition]) -> list[dict[str, object]]:
    """The stored form of partitions (an image row's ``partitions``)."""
    return [p.to_dict() for p in parts]


def bound_spec(ws: Workspace) -> ImageSpec:
    """The image a workspace was made from, as it was at create (the bound order)."""
    return ImageSpec.from_dict(ws.image_spec or {}, ws.image)


def bind_spec(ws: Workspace, spec: ImageSpec) -> None:
    ws.image_spec = spec.to_dict()


# -- queue state -----------------------------------------------------------------------------


def set_waiting(ws: Workspace, why: str, deadline: float | None = None) -> None:
    """The workspace waits for capacity because ``why``."""
    ws.wait_reason = why
    ws.reason = ""
    if deadline is not None:
        ws.wait_deadline = deadline


def set_reason(ws: Workspace, reason: str) -> None:
    """The reason the API shows; the workspace no longer waits for capacity."""
    ws.reason = reason
    ws.wait_reason = ""


def shown_reason(ws: Workspace) -> str:
    return WAITING + ws.wait_reason if ws.wait_reason else ws.reason


# -- workspaces ------------------------------------------------------------------------------


def allocations(s: Session, ids: Sequence[str]) -> dict[str, list[tuple[IpAllocation, Network]]]:
    """Every NIC's allocation and network for these workspaces, in NIC order."""
    out: dict[str, list[tuple[IpAllocation, Network]]] = {i: [] for i in ids}
    if not ids:
        return out
    q = (
        select(IpAllocation, Network)
        .join(Network, Network.name == IpAllocation.network)
        .order_by(IpAllocation.workspace_id, IpAllocation.nic_index)
    )
    # Large lists read every allocation once instead of binding thousands of ids
    # (SQLite caps the number of bound parameters).
    if len(ids) <= 500:
        q = q.where(IpAllocation.workspace_id.in_(ids))
    for alloc, net in s.execute(q).all():
        if alloc.workspace_id in out:
            out[alloc.workspace_id].append((alloc, net))
    return out


def nics(s: Session, ids: Sequence[str]) -> dict[str, tuple[Nic, ...]]:
    """The NICs of these workspaces (every id is a key), in NIC order: one query."""
    prefix: dict[str, int] = {}
    out: dict[str, tuple[Nic, ...]] = {}
    for wid, pairs in allocations(s, ids).items():
        built = []
        for alloc, net in pairs:
            if net.subnet not in prefix:
                prefix[net.subnet] = ipam.prefix_len(net.subnet)
            built.append(
                Nic(
                    network=net.name,
                    ip=alloc.ip,
                    mac=alloc.mac,
                    prefix_len=prefix[net.subnet],
                    gateway=net.gateway,
                    bridge=net.bridge,
                    subnet=net.subnet,
                    dns=tuple(net.dns or ()),
                )
            )
        out[wid] = tuple(built)
    return out


def workspace_view(ws: Workspace, nics_of: tuple[Nic, ...]) -> WorkspaceView:
    return WorkspaceView(
        id=ws.id,
        name=ws.name,
        owner=ws.owner,
        image=ws.image,
        cpus=ws.cpus,
        memory_mib=ws.memory_mib,
        nics=nics_of,
        node=ws.node,
        state=State(ws.state),
        desired=Desired(ws.desired_state),
        reason=shown_reason(ws),
        request_id=ws.request_id,
        created_at=ws.created_at,
        updated_at=ws.updated_at,
        reboot_count=ws.reboot_count or 0,
        cluster=ws.cluster or "",
        role=ws.role or "",
        waiting=bool(ws.wait_reason),
    )


def workspace_views(s: Session, rows: Sequence[Workspace]) -> list[WorkspaceView]:
    by_id = nics(s, [w.id for w in rows])
    return [workspace_view(w, by_id[w.id]) for w in rows]


# -- clusters, nodes, networks ---------------------------------------------------------------


def member_specs(c: Cluster) -> tuple[MemberSpec, ...]:
    return tuple(MemberSpec.from_dict(m) for m in c.spec or ())


def cluster_view(c: Cluster, members: Sequence[WorkspaceView]) -> ClusterView:
    return ClusterView(
        id=c.id,
        name=c.name,
        owner=c.owner,
        state=ClusterState(c.state),
        reason=c.reason,
        members=tuple(members),
        affinity=c.affinity,
        on_failure=c.on_failure,
        request_id=c.request_id,
        created_at=c.created_at,
        updated_at=c.updated_at,
        spec=member_specs(c),
    )


def node_state(n: Node) -> NodeState:
    return NodeState(n.state)


def node_status(n: Node, workspaces: int) -> NodeStatus:
    return NodeStatus(
        name=n.name,
        hypervisor=n.hypervisor,
        cpus=n.cpus,
        memory_mib=n.memory_mib,
        disk_gib=n.disk_gib,
        used_cpus=n.used_cpus,
        used_memory_mib=n.used_memory_mib,
        state=node_state(n),
        last_heartbeat=n.last_heartbeat,
        labels=dict(n.labels or {}),
        networks=tuple(n.networks or ()),
        workspaces=workspaces,
    )


def cache_records(n: Node) -> list[CacheRecord]:
    return [
        CacheRecord(
            digest=str(e["digest"]),
            size_bytes=int(e.get("size_bytes", 0)),
            last_used=float(e.get("last_used", 0)),
            pinned=bool(e.get("pinned", False)),
        )
        for e in n.cache or ()
    ]


def cache_column(entries: Iterable[CacheRecord]) -> list[dict[str, object]]:
    return [
        {
            "digest": e.digest,
            "size_bytes": e.size_bytes,
            "last_used": e.last_used,
            "pinned": e.pinned,
        }
        for e in entries
    ]


def network_info(n: Network, allocated: int) -> NetworkInfo:
    return NetworkInfo(
        name=n.name,
        subnet=n.subnet,
        gateway=n.gateway,
        range_start=n.range_start,
        range_end=n.range_end,
        bridge=n.bridge,
        mac_prefix=n.mac_prefix,
        dns=tuple(n.dns or ()),
        allocated=allocated,
    )
