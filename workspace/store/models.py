"""Tables. States are stored by their enum names (workspace.domain.states) so the
database reads well; code compares the enums. JSON columns are read and written only
through workspace/store/mapping.py."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workspace.domain.states import NodeState


class Base(DeclarativeBase):
    pass


def new_gen() -> int:
    """A fresh ``Node.orders_gen``: random (never 0, the migrated rows' value), so a node
    removed and registered again never repeats a generation a cache may hold."""
    return secrets.randbits(62) + 1


class Node(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    hypervisor: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer, default=0)
    used_cpus: Mapped[int] = mapped_column(Integer, default=0)
    used_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=NodeState.READY.value)
    # Set by `ws-admin node drain`: the node stays DRAINING across DOWN and back.
    drained: Mapped[bool] = mapped_column(default=False)
    last_heartbeat: Mapped[float] = mapped_column(Float, default=0.0)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    cached_digests: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Where other agents fetch blobs from this node ("" = it serves no peers).
    peer_address: Mapped[str] = mapped_column(String(255), default="")
    # The blob cache as last reported: [{"digest","size_bytes","last_used","pinned"}].
    cache: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cache_budget_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Digests `ws-admin cache preload` asked this node to fetch; dropped once reported cached.
    prefetch: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The serial (hex) of the node certificate that registered this name ("" = none yet,
    # or a service without TLS); another certificate may take the name only once this one
    # is revoked, or after `ws-admin node remove`.
    cert_serial: Mapped[str] = mapped_column(String(64), default="")
    # The service saw ``cert_serial`` revoked (its CRL): the node is DOWN and that
    # certificate refused by every replica, whatever its own copy of the CRL says, until
    # another certificate registers the name (ops/liveness.py ``check_revocations``).
    cert_revoked: Mapped[bool] = mapped_column(default=False)
    # Why the node is DOWN ("" while it is not), as `ws-admin node list` shows it.
    reason: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # Declared guaranteed-bandwidth capacity (0 = none declared: nothing bounded), and
    # what the workspaces on it reserve (ops/netpolicy.py ``reservation``).
    disk_mbps: Mapped[int] = mapped_column(Integer, default=0)
    net_mbps: Mapped[int] = mapped_column(Integer, default=0)
    used_disk_mbps: Mapped[int] = mapped_column(Integer, default=0)
    used_net_mbps: Mapped[int] = mapped_column(Integer, default=0)
    # A new random value whenever what the node is sent may have changed (its workspaces,
    # a network, a signature): validates a cached bound of its orders (store/orders_gen.py).
    orders_gen: Mapped[int] = mapped_column(BigInteger, default=new_gen, server_default="0")
    # The release of the node's agent, as it last registered ("" = it did not say).
    agent_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Which agent last registered the node (NodeInfo.agent_key; "" = it did not say):
    # another one is refused the name while the node reports (ops/reports.py).
    agent_key: Mapped[str] = mapped_column(String(512), default="", server_default="")
    # What keeps the node from serving some workspaces, as its agent last reported
    # (ops/reports.py): [{"code", "subject", "message"}]; each full report replaces them.
    conditions: Mapped[list[dict[str, str]]] = mapped_column(
        JSON, default=list, server_default="[]"
    )


class Generation(Base):
    """A named generation: a new random value whenever what it names changed ("nodes":
    a node's row as the scheduler sees it; store/orders_gen.py)."""

    __tablename__ = "generations"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=new_gen)


class Network(Base):
    __tablename__ = "networks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(64))
    range_start: Mapped[str] = mapped_column(String(64))
    range_end: Mapped[str] = mapped_column(String(64))
    bridge: Mapped[str] = mapped_column(String(15))
    mac_prefix: Mapped[str] = mapped_column(String(8))
    dns: Mapped[list[str]] = mapped_column(JSON, default=list)
    # 802.1Q id on the nodes' uplinks (1-4094); 0 = untagged.
    vlan: Mapped[int] = mapped_column(Integer, default=0)


class MacCounter(Base):
    """The next MAC address suffix (24 bits, counted on past 2**24) of a MAC prefix: MACs
    are drawn from it in order (store/macs.py) instead of at random and checked."""

    __tablename__ = "mac_counters"

    prefix: Mapped[str] = mapped_column(String(8), primary_key=True)
    next: Mapped[int] = mapped_column(BigInteger)


class IpAllocation(Base):
    """One address of a pool bound to one NIC. The unique constraints are the guarantee."""

    __tablename__ = "ip_allocations"
    __table_args__ = (
        UniqueConstraint("network", "ip", name="uq_ip_per_network"),
        UniqueConstraint("mac", name="uq_mac"),
        Index("ix_alloc_workspace", "workspace_id"),
        Index("ix_alloc_network_ip_int", "network", "ip_int"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network: Mapped[str] = mapped_column(ForeignKey("networks.name"))
    ip: Mapped[str] = mapped_column(String(64))
    # The address as an integer: the lowest free one is found without parsing strings.
    # 64-bit: IPv4 addresses from 128.0.0.0 on do not fit PostgreSQL's 32-bit INTEGER.
    ip_int: Mapped[int] = mapped_column(BigInteger, default=0)
    mac: Mapped[str] = mapped_column(String(17))
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    nic_index: Mapped[int] = mapped_column(Integer, default=0)


class Blob(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    # 64-bit: blobs are often larger than 2 GiB (PostgreSQL's INTEGER is 32-bit).
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class BlobHolder(Base):
    """A caller who sent a blob's bytes (``user:alice``): proof that they hold its content,
    so they may make images of it (ops/blob_access.py). A blob is content-addressed and
    stored once; without such a row a caller reaches it only through an image they may
    use, never by knowing its digest."""

    __tablename__ = "blob_holders"
    # A sender's claims (ops/blob_access.py): renewed by every upload of theirs, read by
    # their HasBlobs, imports and quota check (migration 0034).
    __table_args__ = (Index("ix_blob_holder_holder", "holder", "created_at"),)

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    holder: Mapped[str] = mapped_column(String(300), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)


class Image(Base):
    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    # The project the image belongs to ("" = none: a site image); private to it unless public.
    project: Mapped[str] = mapped_column(String(64), default="")
    public: Mapped[bool] = mapped_column(default=False)
    # [{"name","digest","size_bytes","format","mode","virtual_size_bytes","ext4"}]; mode is
    # the enum name (COW, READONLY, BLANK); size_bytes is the blob's size (blank: the
    # virtual size); rows from before virtual_size_bytes and ext4 existed lack them.
    partitions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    kernel_digest: Mapped[str] = mapped_column(String(80), default="")
    initrd_digest: Mapped[str] = mapped_column(String(80), default="")
    # Unbounded: limits.max_cmdline_bytes (configurable) is the bound.
    cmdline: Mapped[str] = mapped_column(Text, default="")
    # How it takes deploy-time information: "none" or "nocloud" (a cloud-init seed), and
    # the account `ws ssh` logs in as ("" = none).
    context: Mapped[str] = mapped_column(String(16), default="none")
    login_user: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = (
        UniqueConstraint("owner", "request_id", name="uq_request_id"),
        Index("ix_ws_node", "node"),
        Index("ix_ws_owner_name", "owner", "name"),
        Index("ix_ws_state", "state"),
        Index("ix_ws_updated", "updated_at"),
        # Read on every create of a project with quotas (ops/projects.py
        # ``workspace_use``, under the write lock) and by members' `ws list`.
        Index("ix_ws_project", "project"),
        # A cluster's members: cluster operations, rosters, and every unit of work that
        # places or ends a member (ops/unit.py ``_peers_moved``, under the write lock).
        Index("ix_ws_cluster", "cluster"),
        # The lease pass (ops/leases.py ``_leased``, a write every lease_check_interval_s).
        Index("ix_ws_lease", "lease_expires_at"),
        # The paged lists, oldest first (ops/queries.py ``list_page``: an admin's pages).
        Index("ix_ws_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(255))
    # The project the workspace is charged to ("" = none).
    project: Mapped[str] = mapped_column(String(64), default="")
    # Lease: stopped (or destroyed, per project policy) at this time; 0 = no lease.
    lease_expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    # The expiry warning was sent for the current lease_expires_at.
    lease_warned: Mapped[bool] = mapped_column(default=False)
    request_id: Mapped[str] = mapped_column(String(128))
    # sha256 of the create parameters, to refuse a reused request id with other parameters
    request_hash: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(255))
    # The image as it was when the workspace was created (bound order).
    image_spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    # What the placement claimed on the node, released on termination.
    claimed_cpus: Mapped[int] = mapped_column(Integer, default=0)
    claimed_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    # The bandwidth reserved on the node (ops/netpolicy.py ``reservation``), released too.
    claimed_disk_mbps: Mapped[int] = mapped_column(Integer, default=0)
    claimed_net_mbps: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16))
    desired_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1024), default="")
    reboot_count: Mapped[int] = mapped_column(Integer, default=0)
    # Of those, the reboots the node reported carried out (never more than reboot_count,
    # never going back); -1 = not reported (an agent older than the report's field).
    applied_reboot_count: Mapped[int] = mapped_column(Integer, default=-1)
    stop_timeout_s: Mapped[int] = mapped_column(Integer, default=60)
    force_stop: Mapped[bool] = mapped_column(default=False)
    user_data: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    cluster: Mapped[str] = mapped_column(String(64), default="")
    role: Mapped[str] = mapped_column(String(64), default="")
    # Who asked for the member a cluster grow added (ops/grow_rights.py ``stored``; {}:
    # made with its cluster, by its owner): a grow waiting for capacity is placed only
    # while they still may make it (ops/queue.py).
    grown_by: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    # Who asked for the create (a workspace's, or its cluster's) that left it waiting for
    # capacity (ops/grow_rights.py ``stored``; {}: placed at once, or queued before
    # migration 0026): it is placed only while they still may make it (ops/queue.py).
    asked_by: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    # Contextualization, copied from the image at create (it may be deleted later): "none"
    # or "nocloud", and the login user.
    context: Mapped[str] = mapped_column(String(16), default="none")
    login_user: Mapped[str] = mapped_column(String(64), default="")
    # The guest's SSH host key pair (ed25519) the service made and vouches for ("": none);
    # the private key (OpenSSH PEM) goes only into the seed.
    host_key_private: Mapped[str] = mapped_column(String(4096), default="")
    host_key_public: Mapped[str] = mapped_column(String(1024), default="")
    # The owner's SSH public keys at create (authorized_keys lines).
    authorized_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    # An upper bound of the seed's bytes without the site's vendor-data (ops/order_size.py;
    # 0 = no seed).
    seed_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # What placement needs, kept so a queued workspace can be placed later.
    networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    requirements: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # Why the workspace waits for capacity (state PENDING, no node); "" = not waiting.
    wait_reason: Mapped[str] = mapped_column(String(1024), default="")
    # Waiting for capacity (state PENDING) until this time; 0 = not waiting.
    wait_deadline: Mapped[float] = mapped_column(Float, default=0.0)
    # Network policy (workspace/domain/netpolicy.py): "open" | "cluster" | "outbound", the
    # allow rules as canonical texts, and the limits as enforced (the defaults applied:
    # {"cpu_percent", "cpu_weight", "disk_mbps", "disk_iops", "net_mbps"}, 0 = none).
    connectivity: Mapped[str] = mapped_column(String(16), default="open")
    allow: Mapped[list[str]] = mapped_column(JSON, default=list)
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # The preemptible class (workspace/domain/model.py CreateSpec.preemptible).
    preemptible: Mapped[bool] = mapped_column(default=False)
    # How long a preempted workspace gets to power off after ACPI before it is forced;
    # -1 = the site's ``preempt_grace_s``.
    preempt_grace_s: Mapped[int] = mapped_column(Integer, default=-1)
    # Set on a victim: the workspace whose placement preempted it ("" = not preempted).
    # That workspace's order is held back from its node until every victim is gone.
    preempted_by: Mapped[str] = mapped_column(String(32), default="")
    # Being saved as this image (ops/save.py; "" = not) since saving_since: it does not
    # start meanwhile. A mark older than the save's time limit is stale (a service that
    # died mid-save).
    saving_as: Mapped[str] = mapped_column(String(255), default="")
    saving_since: Mapped[float] = mapped_column(Float, default=0.0)
    # Its progress: the disk its node is copying or sending, the bytes received, its
    # size, and how far the node's copy of it is (percent).
    saving_disk: Mapped[str] = mapped_column(String(32), default="")
    saving_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    saving_size: Mapped[int] = mapped_column(BigInteger, default=0)
    saving_copied: Mapped[float] = mapped_column(Float, default=0.0)
    # The replica running the save (its ``replicas.replica_id``; "" on SQLite and for
    # marks from before 0027): when that replica is gone the mark is cleared at once.
    saving_by: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (
        UniqueConstraint("owner", "request_id", name="uq_cluster_request_id"),
        Index("ix_cluster_owner_name", "owner", "name"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    owner: Mapped[str] = mapped_column(String(255))
    project: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1024), default="")
    affinity: Mapped[str] = mapped_column(String(16), default="NONE")
    on_failure: Mapped[str] = mapped_column(String(16), default="KEEP")
    # [{"role","image","cpus","memory_mib","count","networks","requirements","user_data_hex"}]
    spec: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    wait_deadline: Mapped[float] = mapped_column(Float, default=0.0)
    # The cluster's own SSH key pair (ed25519): members log in to each other with it.
    key_private: Mapped[str] = mapped_column(String(4096), default="")
    key_public: Mapped[str] = mapped_column(String(1024), default="")
    # Every member is of the preemptible class.
    preemptible: Mapped[bool] = mapped_column(default=False)
    # Elastic clusters: role → {"min", "max", "signal", "cooldown_s", "last_action_at",
    # "last": {the last decision and why}}; {} = not autoscaled.
    autoscale: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SshKey(Base):
    """One SSH public key of a user (`ws key add`); it goes into their new workspaces."""

    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("owner", "fingerprint", name="uq_ssh_key_per_owner"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(16384))
    comment: Mapped[str] = mapped_column(String(1024), default="")
    added_at: Mapped[float] = mapped_column(Float, default=0.0)


class ConsoleLog(Base):
    __tablename__ = "console_logs"

    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    # Offset in the node's console log just past `data` (64-bit: a log outgrows 2 GiB).
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary, default=b"")


# -- image trust (workspace/service/trust.py) ----------------------------------------------


class TrustSettings(Base):
    """The site's trust policy settings: one row (id 1); the version grows on every change."""

    __tablename__ = "trust_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    mode: Mapped[str] = mapped_column(String(16), default="WARN")  # WARN | ENFORCE
    stop_running_on_revoke: Mapped[bool] = mapped_column(default=False)


class TrustKey(Base):
    """A publisher key the site trusts to sign images whose names match its patterns."""

    __tablename__ = "trust_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(String(1024))
    image_patterns: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)  # 0 = never
    revoked: Mapped[bool] = mapped_column(default=False)
    comment: Mapped[str] = mapped_column(String(1024), default="")
    added_at: Mapped[float] = mapped_column(Float, default=0.0)


class RevokedDigest(Base):
    __tablename__ = "revoked_digests"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    revoked_at: Mapped[float] = mapped_column(Float, default=0.0)


class ImageSignature(Base):
    """A publisher's DSSE envelope over an image's manifest."""

    __tablename__ = "image_signatures"
    __table_args__ = (Index("ix_sig_image", "image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image: Mapped[str] = mapped_column(String(255))
    envelope: Mapped[str] = mapped_column(String(65536))
    key_id: Mapped[str] = mapped_column(String(64), default="")
    added_at: Mapped[float] = mapped_column(Float, default=0.0)


class Audit(Base):
    """One trust decision (service or node): what, under which policy, and why."""

    __tablename__ = "trust_audit"
    __table_args__ = (Index("ix_audit_image", "image"), Index("ix_audit_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(255), default="service")
    action: Mapped[str] = mapped_column(String(32), default="")
    image: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(2048), default="")
    key_id: Mapped[str] = mapped_column(String(64), default="")
    policy_version: Mapped[int] = mapped_column(BigInteger, default=0)
    verdict: Mapped[str] = mapped_column(String(8), default="")
    reason: Mapped[str] = mapped_column(String(2048), default="")
    # The workspace decided on; "" for a create refused after its decision (no workspace
    # was made, so no id names it: ``workspace_name`` does).
    workspace_id: Mapped[str] = mapped_column(String(32), default="")
    # A create's decision: the name asked for (made or refused); "" for other actions.
    workspace_name: Mapped[str] = mapped_column(String(63), default="")


# -- tenancy ---------------------------------------------------------------------------------


class Project(Base):
    """A project: the unit of quotas, lease policy and image sharing. 0 = no limit."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    quota_instances: Mapped[int] = mapped_column(Integer, default=0)
    quota_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    quota_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_disk_gib: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_image_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The preemptible class is counted apart, against these (0 = no limit).
    quota_preemptible_instances: Mapped[int] = mapped_column(Integer, default=0)
    quota_preemptible_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    quota_preemptible_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_preemptible_disk_gib: Mapped[int] = mapped_column(BigInteger, default=0)
    # Lifetimes of new workspaces (seconds; 0 = none) and what expiry does: STOP | DESTROY.
    default_lease_s: Mapped[int] = mapped_column(BigInteger, default=0)
    max_lease_s: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_action: Mapped[str] = mapped_column(String(16), default="STOP")
    # When lease_action last became DESTROY (0: never changed to it since made): a lease
    # that ended before it ended under STOP and is not destroyed for it (ops/leases.py).
    lease_destroy_since: Mapped[float] = mapped_column(Float, default=0.0)
    # Default limits of new workspaces ({"cpu_percent", ..., "net_mbps"}; 0/absent = the
    # site's default).
    default_limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=0.0)


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (Index("ix_member_user", "user"),)

    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), primary_key=True)


class ProjectDeletion(Base):
    """A project that was deleted: its name, when it was made and when deleted. A
    certificate issued before a project of its name was deleted does not make its holder
    a member of the project made again under the name (ops/projects.py ``outdated``)."""

    __tablename__ = "project_deletions"
    __table_args__ = (Index("ix_project_deletion_name", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=0.0)  # 0: not known
    deleted_at: Mapped[float] = mapped_column(Float, default=0.0)


# -- usage (ops/metering.py records, ops/usage.py reports) -----------------------------------


class UsageInterval(Base):
    """A stretch of time in which one workspace consumed a constant amount (the rule:
    workspace/domain/usage.py); ``ended_at`` 0 = still open. Kept after the workspace."""

    __tablename__ = "usage_intervals"
    __table_args__ = (
        Index("ix_usage_workspace_end", "workspace_id", "ended_at"),
        Index("ix_usage_owner", "owner"),
        Index("ix_usage_project", "project"),
        Index("ix_usage_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32))
    workspace_name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(255))
    project: Mapped[str] = mapped_column(String(64), default="")
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float] = mapped_column(Float, default=0.0)
    # Consumed by a workspace of the preemptible class (reported apart).
    preemptible: Mapped[bool] = mapped_column(default=False)


class Backfill(Base):
    """`ws-admin backfill set IMAGE --max N`: keep up to N preemptible workspaces of IMAGE
    on idle capacity; they yield at once (grace_s) to real requests."""

    __tablename__ = "backfill"

    image: Mapped[str] = mapped_column(String(255), primary_key=True)
    max_count: Mapped[int] = mapped_column(Integer, default=0)
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=512)
    networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Seconds a backfill VM gets after ACPI before it is forced off when preempted.
    grace_s: Mapped[int] = mapped_column(Integer, default=0)
    # The principal and project the backfill workspaces belong to.
    owner: Mapped[str] = mapped_column(String(255), default="")
    project: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class Replica(Base):
    """A service replica on PostgreSQL (service/registry.py): written when it starts. It
    is alive while its session holds the advisory lock ``(0x5754, seq)``; a row whose
    lock is free is a replica that is gone (docs/design/replicas.md)."""

    __tablename__ = "replicas"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(String(32), unique=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    # Its addresses: for clients (listen) and for agents (node_listen).
    listen: Mapped[str] = mapped_column(String(255), default="")
    node_listen: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[float] = mapped_column(Float, default=0.0)
    # Its metrics URL ("" when it serves none: no metrics_listen).
    metrics_listen: Mapped[str] = mapped_column(String(255), default="")
    # The database session (backend pid) holding the leader lock for it, written by its
    # registry once it leads (NULL: it does not): it leads while that session holds it.
    leader_session: Mapped[int | None] = mapped_column(Integer, nullable=True)
