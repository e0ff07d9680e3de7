"""workspace.v1 messages ⇄ domain objects (images, partitions, workspaces, ...)."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from images.model import ImageSpec, Mode, Partition
from workspace.domain.states import Desired, State
from workspace.v1 import common_pb2, images_pb2

_MODE_PREFIX = "PARTITION_MODE_"


def ts(epoch_s: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(epoch_s * 1e9))
    return t


def mode_to_proto(mode: Mode) -> common_pb2.PartitionMode.ValueType:
    return common_pb2.PartitionMode.Value(_MODE_PREFIX + mode.value)


def mode_from_proto(value: common_pb2.PartitionMode.ValueType, default: Mode = Mode.COW) -> Mode:
    """UNSPECIFIED becomes ``default``."""
    if value == common_pb2.PARTITION_MODE_UNSPECIFIED:
        return default
    return Mode(common_pb2.PartitionMode.Name(value).removeprefix(_MODE_PREFIX))


def state_to_proto(state: State) -> common_pb2.WorkspaceState.ValueType:
    return common_pb2.WorkspaceState.Value(f"WORKSPACE_STATE_{state.value}")


def desired_to_proto(desired: Desired) -> common_pb2.DesiredState.ValueType:
    return common_pb2.DesiredState.Value(f"DESIRED_STATE_{desired.value}")


def desired_from_proto(value: common_pb2.DesiredState.ValueType) -> Desired:
    return Desired(common_pb2.DesiredState.Name(value).removeprefix("DESIRED_STATE_"))


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
