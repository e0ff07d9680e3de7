"""Frozen dataclasses for what the service decides and the agent makes real.

One representation per concept between the edges: operations, the store mapping, the
scheduler adapters and the agent use these; only the codecs (``workspace/edge``) turn
them into or out of protobuf messages. Partitions and image specs come from
``images.model`` (the signing code builds its statement from the same types).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from images.model import ImageSpec, Mode, Partition
from images.signing import Policy
from workspace.domain.elastic import AutoscaleInfo
from workspace.domain.netpolicy import AllowRule, Connectivity, Limits
from workspace.domain.states import (
    HYPERVISOR_UNREACHABLE,
    NETWORK_NOT_READY,
    NO_ISOLATION,
    ClusterState,
    Desired,
    FailurePolicy,
    NodeState,
    Observed,
    State,
)
from workspace.scheduler.model import Affinity

__all__ = [
    "HYPERVISOR_UNREACHABLE",
    "NETWORK_NOT_READY",
    "NO_ISOLATION",
    "AuditRecord",
    "CacheRecord",
    "ClusterRequest",
    "ClusterView",
    "CreateRequest",
    "CreateSpec",
    "Disk",
    "ImageSpec",
    "ImageView",
    "MemberSpec",
    "Mode",
    "NetworkInfo",
    "Nic",
    "NodeCache",
    "NodeCondition",
    "NodeInfo",
    "NodeOrders",
    "NodeReport",
    "NodeStatus",
    "Observation",
    "Order",
    "Partition",
    "QueueEntry",
    "RepositoryUsage",
    "SignatureStatus",
    "TrustSettingsView",
    "TrustedKey",
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
    vlan: int = 0  # the network's 802.1Q id on the node's uplink (0: untagged)


@dataclass(frozen=True)
class Disk:
    """A partition as a node builds it for one workspace, with peers that may hold its blob:
    their addresses (``sources``) and the node at each (``source_nodes``, same order;
    with TLS the agent checks it reaches that node)."""

    partition: Partition
    sources: tuple[str, ...] = ()
    source_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlobSources:
    """Peers that may hold one blob the node is to prefetch, as a Disk names them."""

    digest: str
    sources: tuple[str, ...] = ()
    source_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerGrants:
    """The grants of one node's orders (workspace/grants.py): a signature per digest, one
    certificate and expiry."""

    certificate: bytes  # DER of the signing service certificate
    expires_at: int
    signatures: tuple[tuple[str, bytes], ...] = ()

    def grant(self, digest: str) -> Grant | None:
        for d, sig in self.signatures:
            if d == digest:
                return Grant(self.certificate, self.expires_at, sig)
        return None


@dataclass(frozen=True)
class Grant:
    """One blob granted to one node, as sent with a Peers.FetchBlob."""

    certificate: bytes
    expires_at: int
    signature: bytes


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
    # Lease length in seconds (0 = the project's default); ops/leases.py.
    lease_s: int = 0
    # None: the default (a cluster's, else OPEN); workspace/domain/netpolicy.py.
    connectivity: Connectivity | None = None
    allow: tuple[AllowRule, ...] = ()
    # As asked; unset limits take the project's, then the site's defaults at create.
    limits: Limits = field(default_factory=Limits)
    # The preemptible class: placed only on capacity the normal class leaves free, and
    # stopped and destroyed (PREEMPTED) when a normal request needs its place.
    preemptible: bool = False


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
    # Of those, the reboots its node reported carried out (None: the node never said).
    applied_reboot_count: int | None = None
    cluster: str = ""
    role: str = ""
    waiting: bool = False  # queued for capacity (state PENDING, no node yet)
    project: str = ""  # the project it is charged to ("": none)
    lease_expires_at: float = 0.0  # epoch s; 0 = no lease
    host_keys: tuple[str, ...] = ()  # the guest's SSH host public keys (vouched for)
    login_user: str = ""  # the account `ws ssh` logs in as ("": no contextualization)
    ssh_keys: tuple[str, ...] = ()  # fingerprints of the keys it was given (its owner's then)
    connectivity: Connectivity = Connectivity.OPEN
    allow: tuple[AllowRule, ...] = ()
    limits: Limits = field(default_factory=Limits)  # as enforced (defaults applied)
    preemptible: bool = False
    saving_as: str = ""  # the image a save under way is making of it ("": none)
    # Its progress: the disk being copied or sent ("": none yet), bytes of it received,
    # its size, how far its node's copy of it is (percent).
    saving_disk: str = ""
    saving_sent_bytes: int = 0
    saving_size_bytes: int = 0
    saving_copied_percent: float = 0.0
    # While its node has not reported for a while but is not DOWN yet: when it was last
    # heard from (epoch s; 0: its node reports, or none). ops/queries.py.
    node_silent_since: float = 0.0
    # Its disks as its create made them (the bound image's partitions, cow ones grown,
    # then the blank ones the request or its cluster role added), in the guest's order.
    disks: tuple[Partition, ...] = ()


@dataclass(frozen=True)
class Seed:
    """cloud-init NoCloud documents for one workspace (``workspace/domain/seed.py``
    renders them; the agent writes them to a ``cidata`` ISO)."""

    meta_data: bytes
    # Holds the guest's private host key (and a cluster's key): never in a repr or a log.
    user_data: bytes = field(repr=False)
    network_config: bytes

    def size(self) -> int:
        return len(self.meta_data) + len(self.user_data) + len(self.network_config)


@dataclass(frozen=True)
class SshKeyView:
    """One of a user's SSH public keys."""

    fingerprint: str  # "SHA256:..."
    public_key: str  # one authorized_keys line
    comment: str
    added_at: float


@dataclass(frozen=True)
class ExecOutcome:
    """What a command run through the guest agent did."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class ExecResult:
    """An ExecOutcome of a named workspace (what the API returns)."""

    workspace_id: str
    name: str
    outcome: ExecOutcome


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
    seed: Seed | None = None  # the NoCloud seed (None: the image takes none)
    envelopes: tuple[str, ...] = ()  # the image's DSSE signature envelopes (JSON)
    verified_digests: tuple[str, ...] = ()  # blobs the service checked against the policy
    connectivity: Connectivity = Connectivity.OPEN
    allow: tuple[AllowRule, ...] = ()
    limits: Limits = field(default_factory=Limits)
    # CLUSTER connectivity: the addresses of every member of the workspace's cluster
    # (on every node), its own included; what the node's filter lets through.
    peers: tuple[str, ...] = ()

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
    # The reboots the node carried out of those its orders asked for (the highest
    # Order.reboot_count it acted on); None: not said (an agent older than this field).
    applied_reboot_count: int | None = None


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
    # Declared capacity for guaranteed bandwidth (0: undeclared, nothing promised).
    disk_mbps: int = 0  # MB/s over all local disks
    net_mbps: int = 0  # Mbit/s per direction over all NICs
    agent_version: str = ""  # the agent's release ("" from an agent that does not say)
    # Which agent: "HOST:STATE_DIR (ID, boot B)", the id kept in its state directory and
    # the host's boot; another key for a node whose agent reports is another agent ("":
    # one that does not say).
    agent_key: str = ""


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
    workspace_id: str = ""  # "": none (a refused create made none: workspace_name says which)
    workspace_name: str = ""  # a create's: the name asked for, made or refused


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
    policy: Policy | None = None  # None: the service checks no image trust
    stop_running_on_revoke: bool = False
    # Peers that hold prefetch blobs (those without any are left out).
    prefetch_sources: tuple[BlobSources, ...] = ()
    # The service's grants to peers of the blobs it names peers for (None: no TLS).
    peer_grants: PeerGrants | None = None
    # This set's number, strictly increasing among the sets one service process builds
    # (ops/sent_orders.py; 0: not numbered). Full reports say the last one taken.
    sequence: int = 0


@dataclass(frozen=True)
class CreateRequest:
    """A create as the caller asked for it: the spec as given (0 and "" meaning the
    defaults), its idempotency key and how long it may wait for capacity."""

    spec: CreateSpec
    request_id: str = ""
    wait_for_capacity_s: int = 0
    # The project asked for ("": the caller's only project, if exactly one).
    project: str = ""


@dataclass(frozen=True)
class NodeCondition:
    """One thing that keeps a node from serving some workspaces now, as its agent found
    it (docs/design/agent.md, "Node conditions"). A node has at most one per (code,
    subject): that pair is what appears and clears."""

    code: str
    message: str
    subject: str = ""  # what on the node it concerns (a network); "": the node as a whole

    @property
    def label(self) -> str:
        """``no-isolation``, ``network-not-ready:a``: how lists and events name it."""
        return f"{self.code}:{self.subject}" if self.subject else self.code


@dataclass(frozen=True)
class NodeStatus:
    """A node as the admin API shows it."""

    name: str
    hypervisor: str
    cpus: int
    memory_mib: int
    disk_gib: int
    used_cpus: int
    used_memory_mib: int
    state: NodeState
    last_heartbeat: float
    labels: Mapping[str, str]
    networks: tuple[str, ...]
    workspaces: int
    # Declared guaranteed-bandwidth capacity (0: none) and what its workspaces reserve.
    disk_mbps: int = 0
    net_mbps: int = 0
    used_disk_mbps: int = 0
    used_net_mbps: int = 0
    agent_version: str = ""  # as the node's agent last registered
    # What the scheduler may place there (overcommit and reservations applied).
    cpu_capacity: int = 0
    memory_capacity_mib: int = 0
    reason: str = ""  # why it is DOWN ("" while it is not)
    conditions: tuple[NodeCondition, ...] = ()  # as its agent last reported them


@dataclass(frozen=True)
class NodeCache:
    """A node's blob cache as last reported."""

    node: str
    budget_bytes: int
    used_bytes: int
    entries: tuple[CacheRecord, ...]


@dataclass(frozen=True)
class NetworkInfo:
    """An address pool and the bridge its NICs join."""

    name: str
    subnet: str
    gateway: str = ""
    range_start: str = ""
    range_end: str = ""
    bridge: str = ""
    mac_prefix: str = ""
    dns: tuple[str, ...] = ()
    allocated: int = 0
    vlan: int = 0  # 802.1Q id (1-4094) on nodes' uplinks; 0 = untagged


@dataclass(frozen=True)
class MemberSpec:
    """One role of a cluster: ``count`` alike members."""

    role: str
    image: str
    cpus: int = 0
    memory_mib: int = 0
    count: int = 1
    networks: tuple[str, ...] = ()
    requirements: Mapping[str, str] = field(default_factory=dict)
    user_data: bytes = b""
    # Blank disks every member of the role gets besides its image's (as a create's).
    extra_partitions: tuple[Partition, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The stored form (the cluster row's ``spec`` column)."""
        return {
            "role": self.role,
            "image": self.image,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "count": self.count,
            "networks": list(self.networks),
            "requirements": dict(self.requirements),
            "user_data_hex": self.user_data.hex(),
            "extra_partitions": [p.to_dict() for p in self.extra_partitions],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberSpec:
        return cls(
            role=str(d["role"]),
            image=str(d["image"]),
            cpus=int(d["cpus"]),
            memory_mib=int(d["memory_mib"]),
            count=int(d["count"]),
            networks=tuple(d["networks"]),
            requirements=dict(d["requirements"]),
            user_data=bytes.fromhex(str(d.get("user_data_hex", ""))),
            extra_partitions=tuple(Partition.from_dict(p) for p in d.get("extra_partitions") or ()),
        )


@dataclass(frozen=True)
class ClusterRequest:
    """A cluster create as the caller asked for it."""

    name: str
    members: tuple[MemberSpec, ...]
    affinity: Affinity = Affinity.NONE
    on_failure: FailurePolicy = FailurePolicy.KEEP
    request_id: str = ""
    wait_for_capacity_s: int = 0
    request_hash: str = ""  # of the request as sent (the edge computes it)
    project: str = ""
    lease_s: int = 0  # every member's lease (0 = the project's default)
    # Every member's connectivity, allow rules and limits (as in CreateSpec).
    connectivity: Connectivity | None = None
    allow: tuple[AllowRule, ...] = ()
    limits: Limits = field(default_factory=Limits)
    preemptible: bool = False  # every member is of the preemptible class


@dataclass(frozen=True)
class ClusterView:
    """A cluster as the API shows it."""

    id: str
    name: str
    owner: str
    state: ClusterState
    reason: str
    members: tuple[WorkspaceView, ...]
    affinity: Affinity
    on_failure: FailurePolicy
    request_id: str
    created_at: float
    updated_at: float
    spec: tuple[MemberSpec, ...]
    project: str = ""
    preemptible: bool = False
    autoscale: tuple[AutoscaleInfo, ...] = ()  # roles that scale on a signal


@dataclass(frozen=True)
class QueueEntry:
    """One request waiting for capacity (a workspace or a whole cluster)."""

    kind: str  # "workspace" | "cluster"
    id: str
    name: str
    owner: str
    position: int
    cpus: int
    memory_mib: int
    queued_at: float
    deadline: float
    reason: str
    # The nodes it holds: only the head of the queue holds any (ops/admission.py).
    holds: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustedKey:
    """A publisher key as the site trusts it (``signing.Key`` plus its bookkeeping)."""

    key_id: str
    public_key_pem: str
    image_patterns: tuple[str, ...]
    expires_at: float = 0.0  # 0 = never
    revoked: bool = False
    comment: str = ""
    added_at: float = 0.0


@dataclass(frozen=True)
class TrustSettingsView:
    """The site's trust policy as the admin API shows it."""

    version: int
    enforce: bool
    keys: tuple[TrustedKey, ...]
    revoked_digests: tuple[str, ...]
    stop_running_on_revoke: bool = False
    # In the answer to a change: what it did, in words ("key 0a1b...: patterns app* ->
    # other*", "key 0a1b... revoked; 2 workspace(s) stopped"); "" otherwise.
    change: str = ""


@dataclass(frozen=True)
class SignatureStatus:
    """An image's signatures and the policy's verdict on them."""

    image: str
    envelopes: tuple[str, ...]
    trusted: bool
    reason: str
    key_id: str
    policy_version: int


@dataclass(frozen=True)
class NodeReport:
    """A node's status report: what it saw of its workspaces (all of them if ``full``,
    a heartbeat), its blob cache, and the trust decisions it took since the last one."""

    node: str
    full: bool = False
    observations: tuple[Observation, ...] = ()
    # Workspaces reported in a state this service does not know: seen, not changed.
    unknown: tuple[str, ...] = ()
    cached_digests: tuple[str, ...] = ()
    cache: tuple[CacheRecord, ...] = ()
    cache_budget_bytes: int = 0
    audit: tuple[AuditRecord, ...] = ()
    # Full reports: every condition of the node now, which replace those held; None: the
    # agent has not checked them yet (just started, or older than conditions).
    conditions: tuple[NodeCondition, ...] | None = None
    # Full reports: the ``NodeOrders.sequence`` of the last orders the node had taken when
    # it built the report (0: not said; ops/sent_orders.py).
    orders_sequence: int = 0


@dataclass(frozen=True)
class ImageView:
    """An image in the catalog: its spec, who imported it and the bytes its blobs take."""

    spec: ImageSpec
    owner: str
    created_at: float
    total_bytes: int = 0
    project: str = ""
    public: bool = False
    context: str = "none"  # "none" | "nocloud" (a cloud-init seed)
    login_user: str = ""  # the account `ws ssh` logs in as ("": none)


@dataclass(frozen=True)
class RepositoryUsage:
    owner: str
    used_bytes: int
    quota_bytes: int
    max_blob_bytes: int = 0
    max_virtual_bytes: int = 0
