"""A workspace's partitions from its image plus the request's disk options
(workspace.domain.layout.disk_layout): extra blank partitions, grown cow ones, limits.
Requests are decoded as the Workspaces API decodes them (workspace.codec.v1)."""

from __future__ import annotations

from typing import Any

import pytest

from images.model import Mode, Partition
from workspace.codec import v1
from workspace.config import LimitsConfig
from workspace.domain.layout import disk_layout
from workspace.errors import InvalidArgument
from workspace.v1 import common_pb2

MiB = 1024 * 1024
BLANK = common_pb2.PARTITION_MODE_BLANK
IMAGE: list[dict[str, Any]] = [
    {
        "name": "root",
        "digest": "sha256:" + "a" * 64,
        "size_bytes": 300_000,
        "format": "qcow2",
        "mode": "COW",
        "virtual_size_bytes": 64 * MiB,
        "ext4": False,
    },
    {
        "name": "data",
        "digest": "sha256:" + "b" * 64,
        "size_bytes": 8 * MiB,
        "format": "raw",
        "mode": "READONLY",
        "virtual_size_bytes": 8 * MiB,
        "ext4": False,
    },
    # as stored before virtual sizes were recorded
    {"name": "old", "digest": "sha256:" + "c" * 64, "size_bytes": 4 * MiB, "format": "raw"},
    {"name": "oldq", "digest": "sha256:" + "d" * 64, "size_bytes": 4 * MiB, "format": "qcow2"},
]
LIMITS = LimitsConfig(max_extra_partitions=2, max_grow_bytes=1024 * MiB)


def layout(
    extra: list[common_pb2.Partition] | None = None,
    grow: dict[str, int] | None = None,
    image: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    out = disk_layout(
        "img:1",
        [Partition.from_dict(p) for p in image or IMAGE],
        [v1.request_partition_from_proto(x, Mode.BLANK) for x in extra or []],
        grow or {},
        LIMITS,
    )
    return [p.to_dict() for p in out]


# The image as the store reads it: rows from before virtual sizes were recorded take
# the defaults.
STORED = [Partition.from_dict(p).to_dict() for p in IMAGE]


def blank(name: str, size: int = 32 * MiB, **kw: Any) -> common_pb2.Partition:
    kw.setdefault("mode", BLANK)
    return common_pb2.Partition(name=name, size_bytes=size, **kw)


def test_no_options_is_the_image() -> None:
    assert layout() == STORED
    assert layout() is not IMAGE


def test_grow_and_add() -> None:
    out = layout(
        [blank("scratch", ext4=True), blank("tmp", format="raw")],
        {"root": 128 * MiB, "old": 8 * MiB},
    )
    assert [p["name"] for p in out] == ["root", "data", "old", "oldq", "scratch", "tmp"]
    assert out[0]["virtual_size_bytes"] == 128 * MiB
    assert out[0]["size_bytes"] == 300_000  # the blob is what it is
    assert out[2]["virtual_size_bytes"] == 8 * MiB
    assert IMAGE[0]["virtual_size_bytes"] == 64 * MiB  # the image is not changed
    assert out[4] == {
        "name": "scratch",
        "digest": "",
        "size_bytes": 32 * MiB,
        "format": "raw",
        "mode": "BLANK",
        "virtual_size_bytes": 32 * MiB,
        "ext4": True,
    }
    assert (out[5]["format"], out[5]["ext4"]) == ("raw", False)
    # a blank without a format is qcow2; mode UNSPECIFIED means blank
    only = layout([blank("x", mode=common_pb2.PARTITION_MODE_UNSPECIFIED)])
    assert only[-1]["format"] == "qcow2" and only[-1]["mode"] == "BLANK"
    # growing to the same size is allowed
    assert layout(grow={"root": 64 * MiB})[0]["virtual_size_bytes"] == 64 * MiB


@pytest.mark.parametrize(
    ("extra", "grow", "message"),
    [
        ([], {"nope": MiB}, r"grow 'nope': image img:1 has no such partition \(it has: data, old"),
        ([], {"data": 16 * MiB}, "the partition is readonly; only cow partitions can grow"),
        (
            [],
            {"root": 32 * MiB},
            r"33554432 bytes \(32\.0 MiB\) is smaller than the image's 67108864 bytes "
            r"\(64\.0 MiB\); partitions can grow",
        ),
        (
            [],
            {"root": 2048 * MiB},
            r"2147483648 bytes \(2\.0 GiB\) is more than the limit of 1073741824 "
            r"\(1\.0 GiB, the site's limits\.max_grow_bytes\)",
        ),
        ([], {"root": 128 * MiB + 1}, "not a multiple of 512"),
        ([], {"oldq": 128 * MiB}, "re-import the image"),
        ([blank("a"), blank("b"), blank("c")], {}, "at most 2 extra partitions"),
        ([blank("Bad")], {}, "extra partition 'Bad': invalid name"),
        ([blank("root")], {}, "already has that name"),
        ([blank("s"), blank("s")], {}, "already has that name"),
        ([blank("s", mode=common_pb2.PARTITION_MODE_COW)], {}, "only blank partitions"),
        ([blank("s", mode=common_pb2.PARTITION_MODE_READONLY)], {}, "only blank partitions"),
        ([blank("s", digest="sha256:" + "e" * 64)], {}, "no content"),
        ([blank("s", size=0)], {}, "give its size"),
        ([blank("s", size=2048 * MiB)], {}, "more than the limit"),
        ([blank("s", size=1000)], {}, "not a multiple of 512"),
        ([blank("s", format="vmdk")], {}, "format 'vmdk'"),
        ([blank("s", format="qcow2", ext4=True)], {}, "ext4 blank partition is a raw file"),
    ],
)
def test_refused(extra: list[common_pb2.Partition], grow: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        layout(extra, grow)


def test_at_most_26_disks() -> None:
    image = [dict(IMAGE[0], name=f"p{i}") for i in range(25)]
    assert len(layout([blank("x")], image=image)) == 26
    with pytest.raises(InvalidArgument, match="at most 26 partitions; this one would have 27"):
        layout([blank("x"), blank("y")], image=image)
