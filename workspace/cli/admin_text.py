"""What ws-admin prints about the site's resources: nodes, networks, the queue of
requests waiting for capacity, and a node's image cache. The format itself (tables,
times, sizes) is workspace/cli/render.py's."""

from __future__ import annotations

from collections.abc import Sequence

from workspace.cli.render import enum_name, fields, fmt_bytes, fmt_time, table
from workspace.cli.termfilter import one_line, plain
from workspace.codec.v1 import condition_from_proto
from workspace.v1 import admin_pb2

_NODE_STATE = admin_pb2.NodeState.DESCRIPTOR


def node_rows(nodes: Sequence[admin_pb2.Node]) -> str:
    rows = [
        [
            n.name,
            enum_name(_NODE_STATE, n.state),
            n.hypervisor,
            f"{n.used_cpus}/{n.cpu_capacity or n.cpus}",
            f"{n.used_memory_mib}/{n.memory_capacity_mib or n.memory_mib}",
            n.workspaces,
            ",".join(n.networks) or "-",
            _bandwidth(n),
            fmt_time(n.last_heartbeat) or "-",
            n.agent_version or "-",
            ",".join(_labels(n)) or "-",
            n.reason or "-",
        ]
        for n in nodes
    ]
    headers = ["NAME", "STATE", "HYPERVISOR", "CPUS", "MEMORY_MIB", "WORKSPACES", "NETWORKS"]
    return table([*headers, "BANDWIDTH", "HEARTBEAT", "AGENT", "CONDITIONS", "REASON"], rows)


def _labels(n: admin_pb2.Node) -> list[str]:
    """Its conditions as short names: ``no-isolation``, ``network-not-ready:a``."""
    return [condition_from_proto(c).label for c in n.conditions]


def node_text(n: admin_pb2.Node) -> str:
    """`ws-admin node show`: one node, and each of its conditions with its message."""
    head = fields(
        [
            ("name", n.name),
            ("state", enum_name(_NODE_STATE, n.state)),
            ("reason", one_line(n.reason)),
            ("hypervisor", n.hypervisor),
            ("agent", n.agent_version or "-"),
            ("heartbeat", fmt_time(n.last_heartbeat) or "-"),
            ("cpus", f"{n.used_cpus}/{n.cpu_capacity or n.cpus} (host: {n.cpus})"),
            ("memory_mib", f"{n.used_memory_mib}/{n.memory_capacity_mib or n.memory_mib}"),
            ("disk_gib", n.disk_gib),
            ("workspaces", n.workspaces),
            ("networks", ",".join(n.networks) or "-"),
            ("labels", ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"),
            ("bandwidth", _bandwidth(n)),
            ("conditions", "" if n.conditions else "none"),
        ]
    )
    shown = [(c.label, c.message) for c in map(condition_from_proto, n.conditions)]
    width = max((len(label) for label, _ in shown), default=0)
    lines = [f"  {label.ljust(width)}  {plain(message)}" for label, message in shown]
    return "\n".join([head, "conditions", *lines] if lines else [head])


def _bandwidth(n: admin_pb2.Node) -> str:
    """Reserved/declared bandwidth, ``net=100/1000,disk=20/500`` (Mbit/s, MB/s; "-": none
    declared)."""
    parts = []
    if n.net_mbps:
        parts.append(f"net={n.used_net_mbps}/{n.net_mbps}")
    if n.disk_mbps:
        parts.append(f"disk={n.used_disk_mbps}/{n.disk_mbps}")
    return ",".join(parts) or "-"


def network_rows(nets: Sequence[admin_pb2.Network]) -> str:
    rows = [
        [
            n.name,
            n.subnet,
            n.gateway or "-",
            f"{n.range_start}-{n.range_end}" if n.range_start else "-",
            n.bridge or "-",
            n.mac_prefix or "-",
            ",".join(n.dns) or "-",
            n.vlan or "-",
            n.allocated,
        ]
        for n in nets
    ]
    headers = ["NAME", "SUBNET", "GATEWAY", "RANGE", "BRIDGE", "MAC_PREFIX", "DNS", "VLAN"]
    headers.append("ALLOCATED")
    return table(headers, rows)


def queue_rows(entries: Sequence[admin_pb2.QueueEntry]) -> str:
    rows = [
        [
            e.position,
            e.kind,
            e.name or e.id,
            e.owner or "-",
            e.cpus,
            e.memory_mib,
            fmt_time(e.queued_at) or "-",
            fmt_time(e.deadline) or "-",
            ",".join(e.holds) or "-",
            e.reason or "-",
        ]
        for e in entries
    ]
    headers = ["POSITION", "KIND", "NAME", "OWNER", "CPUS", "MEMORY_MIB", "QUEUED", "DEADLINE"]
    return table([*headers, "HOLDS", "REASON"], rows)


def cache_text(resp: admin_pb2.ListCacheResponse) -> str:
    budget = fmt_bytes(resp.budget_bytes) if resp.budget_bytes else "unlimited"
    pinned = sum(1 for e in resp.entries if e.pinned)
    head = (
        f"node {resp.node}: {len(resp.entries)} blob(s), {fmt_bytes(resp.used_bytes)} "
        f"of {budget} budget, {pinned} pinned (in use by workspaces)"
    )
    if not resp.entries:
        return head
    rows = [
        [
            e.digest,
            fmt_bytes(e.size_bytes),
            fmt_time(e.last_used) or "-",
            "yes" if e.pinned else "no",
        ]
        for e in resp.entries
    ]
    return head + "\n" + table(["DIGEST", "SIZE", "LAST_USED", "PINNED"], rows)
