"""Projects and quotas: proto (workspace.v1 Projects) ⇄ domain (workspace/domain/tenancy.py)."""

from __future__ import annotations

from workspace.codec.v1 import enum_name, limits_from_proto, limits_to_proto
from workspace.domain.tenancy import LeaseAction, ProjectSpec, ProjectUse, Quota
from workspace.v1 import projects_pb2


def quota_to_proto(q: Quota) -> projects_pb2.Quota:
    return projects_pb2.Quota(
        instances=q.instances,
        vcpus=q.vcpus,
        memory_mib=q.memory_mib,
        disk_gib=q.disk_gib,
        image_bytes=q.image_bytes,
        preemptible_instances=q.preemptible_instances,
        preemptible_vcpus=q.preemptible_vcpus,
        preemptible_memory_mib=q.preemptible_memory_mib,
        preemptible_disk_gib=q.preemptible_disk_gib,
    )


def quota_from_proto(q: projects_pb2.Quota) -> Quota:
    return Quota(
        q.instances,
        q.vcpus,
        q.memory_mib,
        q.disk_gib,
        q.image_bytes,
        q.preemptible_instances,
        q.preemptible_vcpus,
        q.preemptible_memory_mib,
        q.preemptible_disk_gib,
    )


def lease_action_from_proto(value: projects_pb2.LeaseAction.ValueType) -> LeaseAction:
    """UNSPECIFIED is STOP; a number the proto does not define is InvalidArgument."""
    name = enum_name(projects_pb2.LeaseAction.DESCRIPTOR, value, "on_expiry")
    return LeaseAction.DESTROY if name == "LEASE_ACTION_DESTROY" else LeaseAction.STOP


def project_from_proto(p: projects_pb2.Project) -> ProjectSpec:
    action = lease_action_from_proto(p.on_expiry)
    return ProjectSpec(
        name=p.name,
        quota=quota_from_proto(p.quota),
        default_lease_s=p.default_lease_s,
        max_lease_s=p.max_lease_s,
        on_expiry=action,
        default_limits=limits_from_proto(p.default_limits),
    )


def project_to_proto(p: ProjectSpec) -> projects_pb2.Project:
    return projects_pb2.Project(
        name=p.name,
        quota=quota_to_proto(p.quota),
        default_lease_s=p.default_lease_s,
        max_lease_s=p.max_lease_s,
        on_expiry=lease_action_to_proto(p.on_expiry),
        users=list(p.users),
        default_limits=limits_to_proto(p.default_limits),
    )


def lease_action_to_proto(action: LeaseAction) -> projects_pb2.LeaseAction.ValueType:
    return projects_pb2.LeaseAction.Value(f"LEASE_ACTION_{action.value}")


def use_to_proto(u: ProjectUse) -> projects_pb2.ProjectQuota:
    return projects_pb2.ProjectQuota(
        project=u.project,
        limits=quota_to_proto(u.limits),
        used=quota_to_proto(u.used),
        leases=projects_pb2.LeasePolicy(
            default_lease_s=u.default_lease_s,
            max_lease_s=u.max_lease_s,
            on_expiry=lease_action_to_proto(u.on_expiry),
        ),
    )
