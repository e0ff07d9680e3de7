"""Frozen dataclasses for what the service decides and the agent makes real.

One representation per concept between the edges: operations, the store mapping, the
scheduler adapters and the agent use these; only the codecs (``workspace/edge``) turn
them into or out of protobuf messages. Partitions and image specs come from
``images.model`` (the signing code builds its statement from the same types).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from images.model import ImageSpec, Mode, Partition
from images.signing import Policy
from workspace.domain.states import Desired, NodeState, Observed, State

__all__ = [
    "AuditRecord",
    "CacheRecord",
    "CreateSpec",
    "Disk",
    "ImageSpec",
    "Mode",
    "Nic",
    "NodeInfo",
    "NodeOrders",
    "Observation",
    "Order",
    "Partition",
    "WorkspaceView",
]


@dataclass(frozen=True)
class Nic:
    """One NIC of a workspace: its network, the address and MAC allocated from the pool."""

    network: str
    ip: str
    mac: str
    prefix_len: int
    gateway: str
    bridge: str = ""
    subnet: str = ""
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Disk:
    """A partition as a node builds it for one workspace, with peers that may hold its blob."""

    partition: Partition
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreateSpec:
    """A validated request for one workspace (a single create, or one cluster member)."""

    image: str
    name: str = ""
    cpus: int = 1
    memory_mib: int = 512
    networks: tuple[str, ...] = ()
    requirements: Mapping[str, str] = field(default_factory=dict)
    user_data: bytes = b""
    extra_partitions: tuple[Partition, ...] = ()
    grow_bytes: Mapping[str, int] = field(default_factory=dict)
    cluster: str = ""
    role: str = ""


@dataclass(frozen=True)
class WorkspaceView:
    """A workspace as the API shows it."""

    id: str
    name: str
    owner: str
    image: str
    cpus: int
    memory_mib: int
    nics: tuple[Nic, ...]
    node: str
    state: State
    desired: Desired
    reason: str
    request_id: str
    created_at: float
    updated_at: float
    reboot_count: int = 0
    cluster: str = ""
    role: str = ""
    waiting: bool = False  # queued for capacity (state PENDING, no node yet)


@dataclass(frozen=True)
class Order:
    """What one node is told to make real for one workspace (an assignment)."""

    workspace_id: str
    name: str
    hostname: str
    desired: Desired
    cpus: int
    memory_mib: int
    image: str
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    kernel_digest: str = ""
    initrd_digest: str = ""
    cmdline: str = ""
    reboot_count: int = 0
    stop_timeout_s: int = 60
    force_stop: bool = False
    user_data: bytes = b""
    envelopes: tuple[str, ...] = ()  # the image's DSSE signature envelopes (JSON)
    verified_digests: tuple[str, ...] = ()  # blobs the service checked against the policy

    def spec(self) -> ImageSpec:
        """The order's image as the agent will build it (every disk, kernel, initrd)."""
        return ImageSpec(
            self.image,
            tuple(d.partition for d in self.disks),
            self.kernel_digest,
            self.initrd_digest,
            self.cmdline,
        )

    def digests(self) -> list[str]:
        """Every blob digest the node needs for this order."""
        return self.spec().digests()


@dataclass(frozen=True)
class Observation:
    """What a node saw of one workspace."""

    workspace_id: str
    state: Observed
    reason: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """A node as it registers: its identity, capacity and what it serves."""

    name: str
    hypervisor: str
    cpus: int
    memory_mib: int
    disk_gib: int = 0
    networks: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    cached_digests: tuple[str, ...] = ()
    peer_address: str = ""
    state: NodeState = NodeState.READY


@dataclass(frozen=True)
class AuditRecord:
    """One trust decision (by the service or a node): what, under which policy, and why."""

    at: float
    where: str  # "service" or "node:<name>"
    action: str  # "sign", "create", "boot", "cache-hit", ...
    image: str = ""
    digest: str = ""
    key_id: str = ""
    policy_version: int = 0
    verdict: str = ""  # allow | deny | warn
    reason: str = ""
    workspace_id: str = ""


@dataclass(frozen=True)
class CacheRecord:
    """One blob in a node's cache, as the node reports it."""

    digest: str
    size_bytes: int
    last_used: float
    pinned: bool = False


@dataclass(frozen=True)
class NodeOrders:
    """Everything one node should make real: the full desired state of the node."""

    generation: int
    orders: tuple[Order, ...]
    prefetch: tuple[str, ...] = ()
    policy: Policy = field(default_factory=Policy)
    stop_running_on_revoke: bool = False
