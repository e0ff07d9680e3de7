"""workspace.v1 messages ⇄ domain objects (images, partitions, workspaces, clusters, nodes,
networks, the queue, trust): the only place the public API's messages are built or read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from images.model import ImageSpec, Mode, Partition
from workspace.domain.elastic import AutoscaleInfo, ScaleResult
from workspace.domain.model import (
    ClusterRequest,
    ClusterView,
    CreateRequest,
    CreateSpec,
    ImageView,
    MemberSpec,
    NetworkInfo,
    Nic,
    NodeCondition,
    NodeStatus,
    QueueEntry,
    RepositoryUsage,
    SignatureStatus,
    TrustSettingsView,
    WorkspaceView,
)
from workspace.domain.netpolicy import Connectivity, Limits, PolicyUpdate, parse_rules
from workspace.domain.states import Desired, FailurePolicy, State
from workspace.domain.usage import Grouping, UsageReport
from workspace.errors import InvalidArgument
from workspace.identity import Identity
from workspace.scheduler.model import Affinity
from workspace.v1 import (
    admin_pb2,
    clusters_pb2,
    common_pb2,
    images_pb2,
    trust_pb2,
    usage_pb2,
    workspaces_pb2,
)

_MODE_PREFIX = "PARTITION_MODE_"


# What a Timestamp can hold: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_TS_MIN_S = -62135596800
_TS_MAX_S = 253402300799


def ts(epoch_s: float) -> Timestamp:
    """``epoch_s`` as a Timestamp; a time beyond what one holds (a lease stored before
    leases had a site maximum) is shown as the last (or first) time it can hold, not
    an error for every list that includes it."""
    t = Timestamp()
    if not _TS_MIN_S < epoch_s < _TS_MAX_S:
        t.seconds = _TS_MAX_S if epoch_s > 0 else _TS_MIN_S
        return t
    t.FromNanoseconds(int(epoch_s * 1e9))
    return t


def enum_name(enum: EnumDescriptor, value: int, what: str) -> str:
    """The name of ``value`` in ``enum``. A number the proto does not define (a wrong one, or
    a newer client's) is the caller's error, named with the numbers that are known (all
    but an ``_UNSPECIFIED`` one, which stands for the default; AFFINITY_NONE is a value)."""
    found = enum.values_by_number.get(value)
    if found is None:
        known = ", ".join(
            f"{v.name} ({v.number})" for v in enum.values if not v.name.endswith("_UNSPECIFIED")
        )
        raise InvalidArgument(f"unknown {what} {value}; one of {known}")
    return found.name


def mode_to_proto(mode: Mode) -> common_pb2.PartitionMode.ValueType:
    return common_pb2.PartitionMode.Value(_MODE_PREFIX + mode.value)


def mode_from_proto(value: common_pb2.PartitionMode.ValueType, default: Mode = Mode.COW) -> Mode:
    """UNSPECIFIED becomes ``default``."""
    if value == common_pb2.PARTITION_MODE_UNSPECIFIED:
        return default
    name = enum_name(common_pb2.PartitionMode.DESCRIPTOR, value, "partition mode")
    return Mode(name.removeprefix(_MODE_PREFIX))


# Enum ⇄ enum by table: these run for every workspace of every list and event.
_STATE_TO_PROTO = {s: common_pb2.WorkspaceState.Value(f"WORKSPACE_STATE_{s.value}") for s in State}
_DESIRED_TO_PROTO = {d: common_pb2.DesiredState.Value(f"DESIRED_STATE_{d.value}") for d in Desired}


def state_to_proto(state: State) -> common_pb2.WorkspaceState.ValueType:
    return _STATE_TO_PROTO[state]


def desired_to_proto(desired: Desired) -> common_pb2.DesiredState.ValueType:
    return _DESIRED_TO_PROTO[desired]


def desired_from_proto(value: common_pb2.DesiredState.ValueType) -> Desired:
    """UNSPECIFIED (an order from a service that did not say) means RUNNING."""
    if value == common_pb2.DESIRED_STATE_UNSPECIFIED:
        return Desired.RUNNING
    name = enum_name(common_pb2.DesiredState.DESCRIPTOR, value, "desired state")
    return Desired(name.removeprefix("DESIRED_STATE_"))


def partition_to_proto(p: Partition) -> common_pb2.Partition:
    return common_pb2.Partition(
        name=p.name,
        digest=p.digest,
        size_bytes=p.size_bytes,
        format=p.format,
        mode=mode_to_proto(p.mode),
        ext4=p.ext4,
        virtual_size_bytes=p.virtual_size_bytes,
    )


def partition_from_proto(p: common_pb2.Partition, default_mode: Mode = Mode.COW) -> Partition:
    return Partition(
        name=p.name,
        mode=mode_from_proto(p.mode, default_mode),
        digest=p.digest,
        size_bytes=p.size_bytes,
        format=p.format or "raw",
        virtual_size_bytes=p.virtual_size_bytes,
        ext4=p.ext4,
    )


def image_spec_from_proto(img: images_pb2.Image) -> ImageSpec:
    """The ImageSpec of an image as the API shows it (what ``ws image sign`` signs)."""
    return ImageSpec(
        img.name,
        tuple(partition_from_proto(p) for p in img.partitions),
        img.kernel_digest,
        img.initrd_digest,
        img.cmdline,
    )


def partitions_to_proto(parts: Iterable[Partition]) -> list[common_pb2.Partition]:
    return [partition_to_proto(p) for p in parts]


def epoch(t: Timestamp, what: str = "time") -> float:
    """Seconds since the epoch of ``t``; a Timestamp no time can be (before year 1, after
    9999, nanos outside 0..999999999) is the caller's error, named by ``what``."""
    if not (_TS_MIN_S <= t.seconds <= _TS_MAX_S and 0 <= t.nanos <= 999_999_999):
        raise InvalidArgument(
            f"{what} is not a valid time (seconds {t.seconds}, nanos {t.nanos}): seconds "
            f"must be from {_TS_MIN_S} to {_TS_MAX_S} (years 1 to 9999), nanos from 0 to "
            "999999999"
        )
    return t.ToNanoseconds() / 1e9


def _ts_or_none(epoch_s: float) -> Timestamp | None:
    """Unset for 0 ("never", "unknown")."""
    return ts(epoch_s) if epoch_s else None


def request_partition_from_proto(p: common_pb2.Partition, default_mode: Mode) -> Partition:
    """A partition as a request gives it: the format stays "" when not given (its default
    depends on the partition: the operation decides)."""
    return Partition(
        name=p.name,
        mode=mode_from_proto(p.mode, default_mode),
        digest=p.digest,
        size_bytes=p.size_bytes,
        format=p.format,
        virtual_size_bytes=p.virtual_size_bytes,
        ext4=p.ext4,
    )


# -- workspaces ------------------------------------------------------------------------------


def nic_to_proto(n: Nic) -> common_pb2.Nic:
    return common_pb2.Nic(
        network=n.network, ip=n.ip, mac=n.mac, prefix_len=n.prefix_len, gateway=n.gateway
    )


def limits_to_proto(limits: Limits) -> common_pb2.Limits:
    return common_pb2.Limits(**limits.as_dict())


def limits_from_proto(m: common_pb2.Limits) -> Limits:
    """As given (not validated: the operation names a bad one)."""
    return Limits(
        cpu_percent=m.cpu_percent,
        cpu_weight=m.cpu_weight,
        disk_mbps=m.disk_mbps,
        disk_iops=m.disk_iops,
        net_mbps=m.net_mbps,
    )


def connectivity_from_proto(text: str) -> Connectivity | None:
    """None for "" (the default); InvalidArgument for an unknown one."""
    return Connectivity.parse(text) if text else None


def caller_to_proto(who: Identity) -> workspaces_pb2.Caller:
    """``WhoAmI``'s answer: the caller's name, admin role and projects."""
    return workspaces_pb2.Caller(user=who.name, admin=who.admin, projects=list(who.projects))


def workspace_to_proto(w: WorkspaceView) -> common_pb2.Workspace:
    return common_pb2.Workspace(
        id=w.id,
        name=w.name,
        owner=w.owner,
        image=w.image,
        cpus=w.cpus,
        memory_mib=w.memory_mib,
        nics=[nic_to_proto(n) for n in w.nics],
        node=w.node,
        state=state_to_proto(w.state),
        desired_state=desired_to_proto(w.desired),
        reason=w.reason,
        request_id=w.request_id,
        created_at=ts(w.created_at),
        updated_at=ts(w.updated_at),
        reboot_count=w.reboot_count,
        applied_reboot_count=w.applied_reboot_count,  # None leaves it unset
        cluster=w.cluster,
        role=w.role,
        project=w.project,
        lease_expires_at=_ts_or_none(w.lease_expires_at),
        host_keys=list(w.host_keys),
        login_user=w.login_user,
        ssh_keys=list(w.ssh_keys),
        connectivity=w.connectivity.value,
        allow=[str(r) for r in w.allow],
        limits=limits_to_proto(w.limits),
        preemptible=w.preemptible,
        saving_as=w.saving_as,
        saving_disk=w.saving_disk,
        saving_sent_bytes=w.saving_sent_bytes,
        saving_size_bytes=w.saving_size_bytes,
        saving_copied_percent=w.saving_copied_percent,
        node_silent_since=_ts_or_none(w.node_silent_since),
        disks=partitions_to_proto(w.disks),
    )


def create_from_proto(req: workspaces_pb2.CreateWorkspaceRequest) -> CreateRequest:
    """The request as given: 0 and "" stay (they mean the defaults)."""
    return CreateRequest(
        spec=CreateSpec(
            image=req.image,
            name=req.name,
            cpus=req.cpus,
            memory_mib=req.memory_mib,
            networks=tuple(req.networks),
            requirements=dict(req.requirements),
            user_data=req.user_data,
            extra_partitions=tuple(
                request_partition_from_proto(x, Mode.BLANK) for x in req.extra_partitions
            ),
            grow_bytes=dict(req.grow_bytes),
            lease_s=req.lease_s,
            connectivity=connectivity_from_proto(req.connectivity),
            allow=parse_rules(req.allow),
            limits=limits_from_proto(req.limits),
            preemptible=req.preemptible,
        ),
        request_id=req.request_id,
        wait_for_capacity_s=req.wait_for_capacity_s,
        project=req.project,
    )


def update_from_proto(req: workspaces_pb2.UpdateWorkspaceRequest) -> PolicyUpdate:
    """`ws update`: InvalidArgument for an unknown connectivity or a rule that does not
    parse (naming it), and for allow rules without set_allow, which would change nothing."""
    if req.allow and not req.set_allow:
        raise InvalidArgument(
            "allow rules given without set_allow, which would leave the workspace's rules "
            "as they are: set set_allow to make them its rules (set_allow and no rules: none)"
        )
    return PolicyUpdate(
        ref=req.id,
        connectivity=connectivity_from_proto(req.connectivity),
        allow=parse_rules(req.allow) if req.set_allow else None,
        limits=limits_from_proto(req.limits),
        reset=tuple(dict.fromkeys(req.reset_limits)),
        cpus=req.cpus,
        memory_mib=req.memory_mib,
    )


# -- clusters --------------------------------------------------------------------------------


def member_to_proto(m: MemberSpec) -> clusters_pb2.ClusterMember:
    return clusters_pb2.ClusterMember(
        role=m.role,
        image=m.image,
        cpus=m.cpus,
        memory_mib=m.memory_mib,
        count=m.count,
        networks=list(m.networks),
        requirements=dict(m.requirements),
        user_data=m.user_data,
        extra_partitions=[partition_to_proto(x) for x in m.extra_partitions],
    )


def cluster_request_from_proto(req: clusters_pb2.CreateClusterRequest) -> ClusterRequest:
    return ClusterRequest(
        name=req.name,
        members=tuple(
            MemberSpec(
                role=m.role,
                image=m.image,
                cpus=m.cpus,
                memory_mib=m.memory_mib,
                count=m.count or 1 if m.count >= 0 else m.count,
                networks=tuple(m.networks),
                requirements=dict(m.requirements),
                user_data=m.user_data,
                extra_partitions=tuple(
                    request_partition_from_proto(x, Mode.BLANK) for x in m.extra_partitions
                ),
            )
            for m in req.members
        ),
        affinity=Affinity[
            enum_name(clusters_pb2.Affinity.DESCRIPTOR, req.affinity, "affinity").removeprefix(
                "AFFINITY_"
            )
        ],
        on_failure=FailurePolicy.TEARDOWN
        if enum_name(clusters_pb2.FailurePolicy.DESCRIPTOR, req.on_failure, "on_failure")
        == "FAILURE_POLICY_TEARDOWN"
        else FailurePolicy.KEEP,
        request_id=req.request_id,
        wait_for_capacity_s=req.wait_for_capacity_s,
        request_hash=hashlib.sha256(req.SerializeToString(deterministic=True)).hexdigest(),
        project=req.project,
        lease_s=req.lease_s,
        connectivity=connectivity_from_proto(req.connectivity),
        allow=parse_rules(req.allow),
        limits=limits_from_proto(req.limits),
        preemptible=req.preemptible,
    )


def cluster_to_proto(c: ClusterView) -> clusters_pb2.Cluster:
    return clusters_pb2.Cluster(
        id=c.id,
        name=c.name,
        owner=c.owner,
        state=clusters_pb2.ClusterState.Value(f"CLUSTER_STATE_{c.state.value}"),
        reason=c.reason,
        members=[workspace_to_proto(m) for m in c.members],
        affinity=clusters_pb2.Affinity.Value(f"AFFINITY_{c.affinity.name}"),
        on_failure=clusters_pb2.FailurePolicy.Value(f"FAILURE_POLICY_{c.on_failure.value}"),
        request_id=c.request_id,
        created_at=ts(c.created_at),
        updated_at=ts(c.updated_at),
        spec=[member_to_proto(m) for m in c.spec],
        project=c.project,
        preemptible=c.preemptible,
        autoscale=[autoscale_to_proto(a) for a in c.autoscale],
    )


def autoscale_to_proto(a: AutoscaleInfo) -> clusters_pb2.AutoscaleInfo:
    out = clusters_pb2.AutoscaleInfo(
        role=a.role, min=a.min, max=a.max, signal=a.signal, cooldown_s=a.cooldown_s
    )
    if a.last_action_at:
        out.last_action_at.CopyFrom(ts(a.last_action_at))
    if a.last is not None:
        out.decided_at.CopyFrom(ts(a.last.at))
        out.wanted = a.last.wanted
        out.current = a.last.current
        out.action = a.last.action
        out.detail = a.last.detail
    return out


def scale_to_proto(c: ClusterView, r: ScaleResult) -> clusters_pb2.ScaleClusterResponse:
    return clusters_pb2.ScaleClusterResponse(
        cluster=cluster_to_proto(c),
        previous=r.previous,
        count=r.count,
        added=list(r.added),
        removed=list(r.removed),
        message=r.message,
    )


# -- images ----------------------------------------------------------------------------------


def image_request_from_proto(req: images_pb2.ImportImageRequest) -> ImageSpec:
    """An import request: partitions as given (mode UNSPECIFIED = COW, format "" kept)."""
    return ImageSpec(
        req.name,
        tuple(request_partition_from_proto(p, Mode.COW) for p in req.partitions),
        req.kernel_digest,
        req.initrd_digest,
        req.cmdline,
    )


def image_to_proto(img: ImageView) -> images_pb2.Image:
    spec = img.spec
    return images_pb2.Image(
        name=spec.image,
        partitions=partitions_to_proto(spec.partitions),
        kernel_digest=spec.kernel_digest,
        initrd_digest=spec.initrd_digest,
        cmdline=spec.cmdline,
        owner=img.owner,
        created_at=ts(img.created_at),
        total_bytes=img.total_bytes,
        project=img.project,
        public=img.public,
        context=img.context,
        login_user=img.login_user,
    )


def usage_to_proto(u: RepositoryUsage) -> images_pb2.RepositoryUsage:
    return images_pb2.RepositoryUsage(
        owner=u.owner,
        used_bytes=u.used_bytes,
        quota_bytes=u.quota_bytes,
        max_blob_bytes=u.max_blob_bytes,
        max_virtual_bytes=u.max_virtual_bytes,
    )


# -- admin: nodes, networks, caches, the queue -------------------------------------------------


def node_to_proto(n: NodeStatus) -> admin_pb2.Node:
    return admin_pb2.Node(
        name=n.name,
        hypervisor=n.hypervisor,
        cpus=n.cpus,
        memory_mib=n.memory_mib,
        disk_gib=n.disk_gib,
        used_cpus=n.used_cpus,
        used_memory_mib=n.used_memory_mib,
        state=admin_pb2.NodeState.Value(f"NODE_STATE_{n.state.value}"),
        last_heartbeat=ts(n.last_heartbeat),
        labels=dict(n.labels),
        networks=list(n.networks),
        workspaces=n.workspaces,
        disk_mbps=n.disk_mbps,
        net_mbps=n.net_mbps,
        used_disk_mbps=n.used_disk_mbps,
        used_net_mbps=n.used_net_mbps,
        agent_version=n.agent_version,
        cpu_capacity=n.cpu_capacity,
        memory_capacity_mib=n.memory_capacity_mib,
        reason=n.reason,
        conditions=[condition_to_proto(c) for c in n.conditions],
    )


def condition_to_proto(c: NodeCondition) -> admin_pb2.NodeCondition:
    return admin_pb2.NodeCondition(code=c.code, subject=c.subject, message=c.message)


def condition_from_proto(c: admin_pb2.NodeCondition) -> NodeCondition:
    return NodeCondition(code=c.code, message=c.message, subject=c.subject)


def network_to_proto(n: NetworkInfo) -> admin_pb2.Network:
    return admin_pb2.Network(
        name=n.name,
        subnet=n.subnet,
        gateway=n.gateway,
        range_start=n.range_start,
        range_end=n.range_end,
        bridge=n.bridge,
        mac_prefix=n.mac_prefix,
        dns=list(n.dns),
        allocated=n.allocated,
        vlan=n.vlan,
    )


def network_from_proto(n: admin_pb2.Network) -> NetworkInfo:
    return NetworkInfo(
        name=n.name,
        subnet=n.subnet,
        gateway=n.gateway,
        range_start=n.range_start,
        range_end=n.range_end,
        bridge=n.bridge,
        mac_prefix=n.mac_prefix,
        dns=tuple(n.dns),
        vlan=n.vlan,
    )


def queue_entry_to_proto(e: QueueEntry) -> admin_pb2.QueueEntry:
    return admin_pb2.QueueEntry(
        kind=e.kind,
        id=e.id,
        name=e.name,
        owner=e.owner,
        position=e.position,
        cpus=e.cpus,
        memory_mib=e.memory_mib,
        queued_at=ts(e.queued_at),
        deadline=ts(e.deadline),
        reason=e.reason,
        holds=list(e.holds),
    )


# -- trust -----------------------------------------------------------------------------------


def trust_settings_to_proto(p: TrustSettingsView) -> trust_pb2.TrustPolicy:
    return trust_pb2.TrustPolicy(
        version=p.version,
        mode=trust_pb2.TRUST_MODE_ENFORCE if p.enforce else trust_pb2.TRUST_MODE_WARN,
        keys=[
            trust_pb2.TrustedKey(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                image_patterns=list(k.image_patterns),
                expires_at=_ts_or_none(k.expires_at),
                revoked=k.revoked,
                comment=k.comment,
                added_at=_ts_or_none(k.added_at),
            )
            for k in p.keys
        ],
        revoked_digests=list(p.revoked_digests),
        stop_running_on_revoke=p.stop_running_on_revoke,
        change=p.change,
    )


def signatures_to_proto(s: SignatureStatus) -> trust_pb2.ImageSignatures:
    return trust_pb2.ImageSignatures(
        image=s.image,
        envelopes_json=list(s.envelopes),
        trusted=s.trusted,
        reason=s.reason,
        key_id=s.key_id,
        policy_version=s.policy_version,
    )


# -- usage -----------------------------------------------------------------------------------

_GROUPING_TO_PROTO = {
    g: usage_pb2.UsageGrouping.Value(f"USAGE_GROUPING_{g.name}") for g in Grouping
}


def grouping_from_proto(value: usage_pb2.UsageGrouping.ValueType) -> Grouping:
    """UNSPECIFIED means per workspace."""
    if value == usage_pb2.USAGE_GROUPING_UNSPECIFIED:
        return Grouping.WORKSPACE
    name = enum_name(usage_pb2.UsageGrouping.DESCRIPTOR, value, "usage grouping")
    return Grouping[name.removeprefix("USAGE_GROUPING_")]


def usage_query_from_proto(req: usage_pb2.GetUsageRequest) -> tuple[float, float, Grouping]:
    """(since, until, grouping); unset times are 0 (from the first record, until now)."""
    since = epoch(req.since, "since") if req.HasField("since") else 0.0
    until = epoch(req.until, "until") if req.HasField("until") else 0.0
    return since, until, grouping_from_proto(req.by)


def usage_report_to_proto(r: UsageReport) -> usage_pb2.UsageReport:
    return usage_pb2.UsageReport(
        since=_ts_or_none(r.since),
        until=ts(r.until),
        by=_GROUPING_TO_PROTO[r.by],
        rows=[
            usage_pb2.UsageRow(
                key=row.key,
                name=row.name,
                owner=row.owner,
                project=row.project,
                core_hours=row.core_hours,
                memory_gib_hours=row.memory_gib_hours,
                disk_gib_hours=row.disk_gib_hours,
                preemptible_core_hours=row.preemptible_core_hours,
                preemptible_memory_gib_hours=row.preemptible_memory_gib_hours,
                preemptible_disk_gib_hours=row.preemptible_disk_gib_hours,
                project_deleted=_ts_or_none(row.project_deleted_at),
            )
            for row in r.rows
        ],
        next_page_token=r.next_page_token,
    )
