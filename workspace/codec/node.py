"""workspace.node.v1 messages ⇄ domain objects: the service encodes orders and decodes
reports; the agent's link decodes orders and encodes reports. Nothing else converts."""

from __future__ import annotations

from images import signing
from images.model import Mode, Partition
from workspace.codec import v1
from workspace.domain.model import (
    AuditRecord,
    BlobSources,
    CacheRecord,
    Disk,
    ExecOutcome,
    Grant,
    Nic,
    NodeCache,
    NodeInfo,
    NodeOrders,
    NodeReport,
    Observation,
    Order,
    PeerGrants,
    Seed,
)
from workspace.domain.netpolicy import AllowRule, Connectivity
from workspace.domain.states import Observed
from workspace.node.v1 import nodes_pb2
from workspace.v1 import admin_pb2, trust_pb2

_OBSERVED_PREFIX = "OBSERVED_STATE_"


# -- orders (service → agent) ----------------------------------------------------------------


def nic_to_proto(n: Nic) -> nodes_pb2.NicAssignment:
    return nodes_pb2.NicAssignment(
        network=n.network,
        bridge=n.bridge,
        mac=n.mac,
        ip=n.ip,
        prefix_len=n.prefix_len,
        gateway=n.gateway,
        dns=list(n.dns),
        subnet=n.subnet,
        vlan=n.vlan,
    )


def nic_from_proto(n: nodes_pb2.NicAssignment) -> Nic:
    return Nic(
        network=n.network,
        ip=n.ip,
        mac=n.mac,
        prefix_len=n.prefix_len,
        gateway=n.gateway,
        bridge=n.bridge,
        subnet=n.subnet,
        dns=tuple(n.dns),
        vlan=n.vlan,
    )


def disk_to_proto(d: Disk) -> nodes_pb2.DiskAssignment:
    p = d.partition
    return nodes_pb2.DiskAssignment(
        name=p.name,
        digest=p.digest,
        size_bytes=p.size_bytes,
        format=p.format,
        mode=v1.mode_to_proto(p.mode),
        ext4=p.ext4,
        virtual_size_bytes=p.virtual_size_bytes,
        sources=list(d.sources),
        source_nodes=list(d.source_nodes),
    )


def disk_from_proto(d: nodes_pb2.DiskAssignment) -> Disk:
    return Disk(
        Partition(
            name=d.name,
            mode=v1.mode_from_proto(d.mode, Mode.COW),
            digest=d.digest,
            size_bytes=d.size_bytes,
            format=d.format or "raw",
            virtual_size_bytes=d.virtual_size_bytes,
            ext4=d.ext4,
        ),
        tuple(d.sources),
        tuple(d.source_nodes),
    )


def seed_to_proto(seed: Seed | None) -> nodes_pb2.CloudSeed | None:
    if seed is None:
        return None
    return nodes_pb2.CloudSeed(
        meta_data=seed.meta_data, user_data=seed.user_data, network_config=seed.network_config
    )


def seed_from_proto(m: nodes_pb2.CloudSeed) -> Seed:
    return Seed(meta_data=m.meta_data, user_data=m.user_data, network_config=m.network_config)


def exec_outcome_to_proto(o: ExecOutcome) -> nodes_pb2.ExecOutcome:
    return nodes_pb2.ExecOutcome(
        exit_code=o.exit_code,
        stdout=o.stdout,
        stderr=o.stderr,
        timed_out=o.timed_out,
        truncated=o.truncated,
    )


def exec_outcome_from_proto(m: nodes_pb2.ExecOutcome) -> ExecOutcome:
    return ExecOutcome(
        exit_code=m.exit_code,
        stdout=m.stdout,
        stderr=m.stderr,
        timed_out=m.timed_out,
        truncated=m.truncated,
    )


def order_to_proto(o: Order) -> nodes_pb2.Assignment:
    return nodes_pb2.Assignment(
        workspace_id=o.workspace_id,
        name=o.name,
        hostname=o.hostname,
        desired=v1.desired_to_proto(o.desired),
        cpus=o.cpus,
        memory_mib=o.memory_mib,
        disks=[disk_to_proto(d) for d in o.disks],
        kernel_digest=o.kernel_digest,
        initrd_digest=o.initrd_digest,
        cmdline=o.cmdline,
        nics=[nic_to_proto(n) for n in o.nics],
        reboot_count=o.reboot_count,
        stop_timeout_s=o.stop_timeout_s,
        force_stop=o.force_stop,
        seed=seed_to_proto(o.seed),
        image=o.image,
        envelopes_json=list(o.envelopes),
        verified_digests=list(o.verified_digests),
        connectivity=o.connectivity.value,
        allow=[str(r) for r in o.allow],
        limits=v1.limits_to_proto(o.limits),
        peers=list(o.peers),
    )


def order_from_proto(a: nodes_pb2.Assignment) -> Order:
    return Order(
        workspace_id=a.workspace_id,
        name=a.name,
        hostname=a.hostname,
        desired=v1.desired_from_proto(a.desired),
        cpus=a.cpus,
        memory_mib=a.memory_mib,
        image=a.image,
        disks=tuple(disk_from_proto(d) for d in a.disks),
        nics=tuple(nic_from_proto(n) for n in a.nics),
        kernel_digest=a.kernel_digest,
        initrd_digest=a.initrd_digest,
        cmdline=a.cmdline,
        reboot_count=a.reboot_count,
        stop_timeout_s=a.stop_timeout_s,
        force_stop=a.force_stop,
        seed=seed_from_proto(a.seed) if a.HasField("seed") else None,
        envelopes=tuple(a.envelopes_json),
        verified_digests=tuple(a.verified_digests),
        connectivity=Connectivity.parse(a.connectivity),
        allow=tuple(AllowRule.parse(r) for r in a.allow),
        limits=v1.limits_from_proto(a.limits),
        peers=tuple(a.peers),
    )


def policy_to_proto(
    p: signing.Policy, stop_running_on_revoke: bool = False
) -> trust_pb2.TrustPolicy:
    keys = []
    for k in p.keys:
        key = trust_pb2.TrustedKey(
            key_id=k.key_id,
            public_key_pem=k.public_key_pem,
            image_patterns=list(k.image_patterns),
            revoked=k.revoked,
        )
        if k.expires_at:
            key.expires_at.CopyFrom(v1.ts(k.expires_at))
        keys.append(key)
    return trust_pb2.TrustPolicy(
        version=p.version,
        mode=trust_pb2.TRUST_MODE_ENFORCE if p.enforce else trust_pb2.TRUST_MODE_WARN,
        keys=keys,
        revoked_digests=sorted(p.revoked_digests),
        stop_running_on_revoke=stop_running_on_revoke,
    )


def policy_from_proto(p: trust_pb2.TrustPolicy) -> signing.Policy:
    return signing.Policy(
        version=p.version,
        enforce=p.mode == trust_pb2.TRUST_MODE_ENFORCE,
        keys=tuple(
            signing.Key(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                image_patterns=tuple(k.image_patterns) or ("*",),
                expires_at=(k.expires_at.ToNanoseconds() / 1e9)
                if k.HasField("expires_at")
                else 0.0,
                revoked=k.revoked,
            )
            for k in p.keys
        ),
        revoked_digests=frozenset(p.revoked_digests),
    )


def node_orders_to_proto(n: NodeOrders) -> nodes_pb2.AssignmentSet:
    return nodes_pb2.AssignmentSet(
        generation=n.generation,
        assignments=[order_to_proto(o) for o in n.orders],
        prefetch=list(n.prefetch),
        policy=(None if n.policy is None else policy_to_proto(n.policy, n.stop_running_on_revoke)),
        prefetch_sources=[
            nodes_pb2.BlobSources(
                digest=b.digest, sources=list(b.sources), source_nodes=list(b.source_nodes)
            )
            for b in n.prefetch_sources
        ],
        peer_grants=peer_grants_to_proto(n.peer_grants),
        sequence=n.sequence,
    )


def peer_grants_to_proto(g: PeerGrants | None) -> nodes_pb2.PeerGrants | None:
    if g is None:
        return None
    return nodes_pb2.PeerGrants(
        certificate=g.certificate,
        expires_at=g.expires_at,
        grants=[nodes_pb2.BlobGrant(digest=d, signature=sig) for d, sig in g.signatures],
    )


def peer_grants_from_proto(m: nodes_pb2.AssignmentSet) -> PeerGrants | None:
    if not m.HasField("peer_grants"):
        return None
    g = m.peer_grants
    return PeerGrants(
        g.certificate, g.expires_at, tuple((b.digest, bytes(b.signature)) for b in g.grants)
    )


def grant_to_proto(g: Grant | None) -> nodes_pb2.PeerGrant | None:
    if g is None:
        return None
    return nodes_pb2.PeerGrant(
        certificate=g.certificate, expires_at=g.expires_at, signature=g.signature
    )


def grant_from_proto(m: nodes_pb2.FetchBlobRequest) -> Grant | None:
    if not m.HasField("grant"):
        return None
    return Grant(bytes(m.grant.certificate), m.grant.expires_at, bytes(m.grant.signature))


def node_orders_from_proto(m: nodes_pb2.AssignmentSet) -> NodeOrders:
    return NodeOrders(
        generation=m.generation,
        orders=tuple(order_from_proto(a) for a in m.assignments),
        prefetch=tuple(m.prefetch),
        policy=policy_from_proto(m.policy) if m.HasField("policy") else None,
        stop_running_on_revoke=m.policy.stop_running_on_revoke,
        prefetch_sources=tuple(
            BlobSources(b.digest, tuple(b.sources), tuple(b.source_nodes))
            for b in m.prefetch_sources
        ),
        peer_grants=peer_grants_from_proto(m),
        sequence=m.sequence,
    )


# -- reports (agent → service) ---------------------------------------------------------------


def observed_to_proto(state: Observed) -> nodes_pb2.ObservedState.ValueType:
    return nodes_pb2.ObservedState.Value(_OBSERVED_PREFIX + state.value)


def observed_from_proto(value: nodes_pb2.ObservedState.ValueType) -> Observed | None:
    """None for UNSPECIFIED (a report that says nothing)."""
    if value == nodes_pb2.OBSERVED_STATE_UNSPECIFIED:
        return None
    name = v1.enum_name(nodes_pb2.ObservedState.DESCRIPTOR, value, "observed state")
    return Observed(name.removeprefix(_OBSERVED_PREFIX))


def observation_to_proto(o: Observation) -> nodes_pb2.ObservedWorkspace:
    return nodes_pb2.ObservedWorkspace(
        workspace_id=o.workspace_id,
        state=observed_to_proto(o.state),
        reason=o.reason,
        applied_reboot_count=o.applied_reboot_count,  # None leaves it unset
    )


def unknown_to_proto(workspace_id: str) -> nodes_pb2.ObservedWorkspace:
    """A workspace whose state the node cannot tell now (its hypervisor does not answer):
    no state (UNSPECIFIED). The service keeps the state it holds, and a full report that
    names it this way still counts it as present on the node."""
    return nodes_pb2.ObservedWorkspace(workspace_id=workspace_id)


def observation_from_proto(o: nodes_pb2.ObservedWorkspace) -> Observation | None:
    """None for an unknown state; ``applied_reboot_count`` None when the node did not
    send it (an older agent) or sent a negative count."""
    state = observed_from_proto(o.state)
    if state is None:
        return None
    applied = o.applied_reboot_count if o.HasField("applied_reboot_count") else None
    return Observation(
        o.workspace_id, state, o.reason, applied if applied is None or applied >= 0 else None
    )


def audit_to_proto(a: AuditRecord) -> trust_pb2.AuditEntry:
    return trust_pb2.AuditEntry(
        at=v1.ts(a.at),
        where=a.where,
        action=a.action,
        image=a.image,
        digest=a.digest,
        key_id=a.key_id,
        policy_version=a.policy_version,
        verdict=a.verdict,
        reason=a.reason,
        workspace_id=a.workspace_id,
        workspace_name=a.workspace_name,
    )


def audit_from_proto(a: trust_pb2.AuditEntry) -> AuditRecord:
    return AuditRecord(
        at=v1.epoch(a.at, "audit entry at"),
        where=a.where,
        action=a.action,
        image=a.image,
        digest=a.digest,
        key_id=a.key_id,
        policy_version=a.policy_version,
        verdict=a.verdict,
        reason=a.reason,
        workspace_id=a.workspace_id,
        workspace_name=a.workspace_name,
    )


def cache_to_proto(c: CacheRecord) -> admin_pb2.CacheEntry:
    return admin_pb2.CacheEntry(
        digest=c.digest, size_bytes=c.size_bytes, last_used=v1.ts(c.last_used), pinned=c.pinned
    )


def node_cache_to_proto(c: NodeCache) -> admin_pb2.ListCacheResponse:
    return admin_pb2.ListCacheResponse(
        node=c.node,
        budget_bytes=c.budget_bytes,
        used_bytes=c.used_bytes,
        entries=[cache_to_proto(e) for e in c.entries],
    )


def cache_from_proto(c: admin_pb2.CacheEntry) -> CacheRecord:
    return CacheRecord(c.digest, c.size_bytes, v1.epoch(c.last_used, "cache last_used"), c.pinned)


def node_info_to_proto(n: NodeInfo) -> nodes_pb2.RegisterRequest:
    return nodes_pb2.RegisterRequest(
        node=n.name,
        hypervisor=n.hypervisor,
        cpus=n.cpus,
        memory_mib=n.memory_mib,
        disk_gib=n.disk_gib,
        networks=list(n.networks),
        labels=dict(n.labels),
        agent_version=n.agent_version,
        cached_digests=list(n.cached_digests),
        peer_address=n.peer_address,
        disk_mbps=n.disk_mbps,
        net_mbps=n.net_mbps,
        agent_key=n.agent_key,
    )


def node_info_from_proto(r: nodes_pb2.RegisterRequest) -> NodeInfo:
    return NodeInfo(
        name=r.node,
        hypervisor=r.hypervisor,
        cpus=r.cpus,
        memory_mib=r.memory_mib,
        disk_gib=r.disk_gib,
        networks=tuple(r.networks),
        labels=dict(r.labels),
        cached_digests=tuple(r.cached_digests),
        peer_address=r.peer_address,
        disk_mbps=r.disk_mbps,
        net_mbps=r.net_mbps,
        agent_version=r.agent_version,
        agent_key=r.agent_key,
    )


def report_to_proto(r: NodeReport) -> nodes_pb2.ReportStatusRequest:
    return nodes_pb2.ReportStatusRequest(
        node=r.node,
        full=r.full,
        workspaces=[observation_to_proto(o) for o in r.observations],
        cached_digests=list(r.cached_digests),
        audit=[audit_to_proto(a) for a in r.audit],
        cache=[cache_to_proto(c) for c in r.cache],
        cache_budget_bytes=r.cache_budget_bytes,
        conditions=[v1.condition_to_proto(c) for c in r.conditions or ()],
        conditions_checked=r.conditions is not None,
    )


def report_from_proto(m: nodes_pb2.ReportStatusRequest) -> NodeReport:
    observations: list[Observation] = []
    unknown: list[str] = []
    for o in m.workspaces:
        obs = observation_from_proto(o)
        if obs is None:
            unknown.append(o.workspace_id)
        else:
            observations.append(obs)
    return NodeReport(
        node=m.node,
        full=m.full,
        observations=tuple(observations),
        unknown=tuple(unknown),
        cached_digests=tuple(m.cached_digests),
        cache=tuple(cache_from_proto(c) for c in m.cache),
        cache_budget_bytes=m.cache_budget_bytes,
        audit=tuple(audit_from_proto(a) for a in m.audit),
        conditions=(
            tuple(v1.condition_from_proto(c) for c in m.conditions)
            if m.conditions_checked
            else None
        ),
        orders_sequence=m.orders_sequence if m.full else 0,
    )
