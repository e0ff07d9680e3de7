"""Rows ↔ protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from workspace.store import models
from workspace.v1 import admin_pb2, common_pb2, images_pb2


def ts(epoch_s: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(epoch_s * 1e9))
    return t


def state_enum(name: str) -> common_pb2.WorkspaceState.ValueType:
    return common_pb2.WorkspaceState.Value(f"WORKSPACE_STATE_{name}")


def desired_enum(name: str) -> common_pb2.DesiredState.ValueType:
    return common_pb2.DesiredState.Value(f"DESIRED_STATE_{name}")


def mode_enum(name: str) -> common_pb2.PartitionMode.ValueType:
    return common_pb2.PartitionMode.Value(f"PARTITION_MODE_{name}")


def mode_name(value: common_pb2.PartitionMode.ValueType) -> str:
    return common_pb2.PartitionMode.Name(value).removeprefix("PARTITION_MODE_")


def workspace(ws: models.Workspace, nics: list[common_pb2.Nic]) -> common_pb2.Workspace:
    return common_pb2.Workspace(
        id=ws.id,
        name=ws.name,
        owner=ws.owner,
        image=ws.image,
        cpus=ws.cpus,
        memory_mib=ws.memory_mib,
        nics=nics,
        node=ws.node,
        state=state_enum(ws.state),
        desired_state=desired_enum(ws.desired_state),
        reason=ws.reason,
        request_id=ws.request_id,
        created_at=ts(ws.created_at),
        updated_at=ts(ws.updated_at),
        reboot_count=ws.reboot_count,
        cluster=ws.cluster,
        role=ws.role,
    )


def partition(p: dict[str, object]) -> common_pb2.Partition:
    return common_pb2.Partition(
        name=str(p["name"]),
        digest=str(p.get("digest", "")),
        size_bytes=int(p.get("size_bytes", 0)),  # type: ignore[call-overload]
        format=str(p.get("format", "raw")),
        mode=mode_enum(str(p.get("mode", "COW"))),
        ext4=bool(p.get("ext4", False)),
        virtual_size_bytes=int(p.get("virtual_size_bytes", 0)),  # type: ignore[call-overload]
    )


def image(img: models.Image) -> images_pb2.Image:
    return images_pb2.Image(
        name=img.name,
        partitions=[partition(p) for p in img.partitions],
        kernel_digest=img.kernel_digest,
        initrd_digest=img.initrd_digest,
        cmdline=img.cmdline,
        owner=img.owner,
        created_at=ts(img.created_at),
    )


def node(n: models.Node, workspaces: int) -> admin_pb2.Node:
    return admin_pb2.Node(
        name=n.name,
        hypervisor=n.hypervisor,
        cpus=n.cpus,
        memory_mib=n.memory_mib,
        disk_gib=n.disk_gib,
        used_cpus=n.used_cpus,
        used_memory_mib=n.used_memory_mib,
        state=admin_pb2.NodeState.Value(f"NODE_STATE_{n.state}"),
        last_heartbeat=ts(n.last_heartbeat),
        labels=n.labels,
        networks=n.networks,
        workspaces=workspaces,
    )


def network(n: models.Network, allocated: int) -> admin_pb2.Network:
    return admin_pb2.Network(
        name=n.name,
        subnet=n.subnet,
        gateway=n.gateway,
        range_start=n.range_start,
        range_end=n.range_end,
        bridge=n.bridge,
        mac_prefix=n.mac_prefix,
        dns=n.dns,
        allocated=allocated,
    )
