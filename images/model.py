"""What an image is, as every process sees it: partitions with their mode, and the image
spec a workspace is bound to (the thing a signature covers).

These frozen dataclasses are the one representation of a partition between the edges:
the service stores them (as JSON, through ``to_dict``/``from_dict``), the scheduler reads
their digests, the codecs turn them into protobuf messages, the agent builds disks from
them and the signing code builds its statement from them.

This module imports neither ``workspace`` nor ``agent``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any


class Mode(enum.StrEnum):
    """How a workspace gets a partition: a per-VM overlay on a cached base (COW), the
    cached base itself shared read-only (READONLY), or an empty disk made at deploy (BLANK)."""

    COW = "COW"
    READONLY = "READONLY"
    BLANK = "BLANK"


@dataclass(frozen=True)
class Partition:
    name: str
    mode: Mode = Mode.COW
    digest: str = ""  # "sha256:<hex>"; "" for blank partitions
    size_bytes: int = 0  # the blob's size (blank: the virtual size)
    format: str = "raw"  # raw | qcow2
    virtual_size_bytes: int = 0  # the disk the guest sees (0: not recorded)
    ext4: bool = False  # blank only: make an ext4 filesystem at deploy

    def disk_bytes(self) -> int:
        """The size of the disk the guest sees (a raw blob's size where not recorded)."""
        if self.virtual_size_bytes:
            return self.virtual_size_bytes
        return self.size_bytes if self.format == "raw" else 0

    def grown(self, virtual_size_bytes: int) -> Partition:
        return replace(self, virtual_size_bytes=virtual_size_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "mode": self.mode.value,
            "virtual_size_bytes": self.virtual_size_bytes,
            "ext4": self.ext4,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Partition:
        """From ``to_dict``'s form; keys missing in rows written before they existed
        take their defaults."""
        return cls(
            name=str(d["name"]),
            mode=Mode(str(d.get("mode") or "COW")),
            digest=str(d.get("digest") or ""),
            size_bytes=int(d.get("size_bytes") or 0),
            format=str(d.get("format") or "raw"),
            virtual_size_bytes=int(d.get("virtual_size_bytes") or 0),
            ext4=bool(d.get("ext4", False)),
        )


@dataclass(frozen=True)
class ImageSpec:
    """An image as a workspace is bound to it: what a publisher's signature covers."""

    image: str
    partitions: tuple[Partition, ...] = ()
    kernel_digest: str = ""
    initrd_digest: str = ""
    cmdline: str = ""

    def digests(self) -> list[str]:
        """Every blob this image needs: partitions with content, then kernel and initrd."""
        out = [p.digest for p in self.partitions if p.digest]
        out += [d for d in (self.kernel_digest, self.initrd_digest) if d]
        return list(dict.fromkeys(out))

    def only(self, names: Iterable[str]) -> ImageSpec:
        """The same image with only the partitions named (in their order)."""
        keep = set(names)
        return replace(self, partitions=tuple(p for p in self.partitions if p.name in keep))

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "partitions": [p.to_dict() for p in self.partitions],
            "kernel_digest": self.kernel_digest,
            "initrd_digest": self.initrd_digest,
            "cmdline": self.cmdline,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], image: str = "") -> ImageSpec:
        return cls(
            image=str(d.get("image") or image),
            partitions=tuple(Partition.from_dict(p) for p in d.get("partitions") or ()),
            kernel_digest=str(d.get("kernel_digest") or ""),
            initrd_digest=str(d.get("initrd_digest") or ""),
            cmdline=str(d.get("cmdline") or ""),
        )
