"""Disk image inspection in pure Python, before any qemu-img call.

We never let qemu guess a format. An uploaded file is checked here first: a
qcow2 that names a backing file or an external data file (which would make
QEMU open a path of the uploader's choosing; CVE-2024-32498 and earlier), an
encrypted qcow2, a declared format that does not match the content, or a
virtual size beyond the site's limit is refused.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
_OTHER_MAGICS = {
    b"KDMV": "vmdk",
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"LUKS\xba\xbe": "luks",
    b"QED\0": "qed",
}
_QCOW2_INCOMPAT_EXTERNAL_DATA = 1 << 2
_QCOW2_KNOWN_INCOMPAT = 0b11111  # dirty, corrupt, external data, compression type, extended L2


class UnsafeImage(ValueError):
    """The file is not what it claims to be, or is unsafe to hand to QEMU."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "raw" | "qcow2"
    virtual_size_bytes: int
    file_size_bytes: int


def sniff(header: bytes) -> str:
    """The format a header looks like: qcow2, another known container, or raw."""
    if header.startswith(QCOW2_MAGIC):
        return "qcow2"
    for magic, name in _OTHER_MAGICS.items():
        if header.startswith(magic):
            return name
    if len(header) >= 68 and header[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    return "raw"


def _check_qcow2(header: bytes, what: str) -> int:
    if len(header) < 72:
        raise UnsafeImage(f"{what}: truncated qcow2 header")
    (version, backing_off, backing_len, _cluster_bits, size, crypt) = struct.unpack(
        ">IQIIQI", header[4:36]
    )
    if version not in (2, 3):
        raise UnsafeImage(f"{what}: unsupported qcow2 version {version}")
    if backing_off or backing_len:
        raise UnsafeImage(f"{what}: qcow2 names a backing file; upload a self-contained image")
    if crypt:
        raise UnsafeImage(f"{what}: encrypted qcow2 images are not accepted")
    if version == 3:
        if len(header) < 80:
            raise UnsafeImage(f"{what}: truncated qcow2 v3 header")
        (incompat,) = struct.unpack(">Q", header[72:80])
        if incompat & _QCOW2_INCOMPAT_EXTERNAL_DATA:
            raise UnsafeImage(f"{what}: qcow2 uses an external data file; not accepted")
        if incompat & ~_QCOW2_KNOWN_INCOMPAT:
            raise UnsafeImage(f"{what}: qcow2 has unknown incompatible features {incompat:#x}")
    return int(size)


def inspect(
    path: str | os.PathLike[str], declared_format: str, max_virtual_bytes: int, what: str = "image"
) -> ImageInfo:
    """Check ``path`` against its declared format; raise UnsafeImage on any problem."""
    if declared_format not in ("raw", "qcow2"):
        raise UnsafeImage(f"{what}: format {declared_format!r} is not supported (raw, qcow2)")
    file_size = os.stat(path).st_size
    with open(path, "rb") as f:
        header = f.read(4096)
    actual = sniff(header)
    if actual != declared_format:
        raise UnsafeImage(
            f"{what}: declared {declared_format} but the content is {actual}; "
            f"declare the real format"
        )
    virtual = _check_qcow2(header, what) if actual == "qcow2" else file_size
    if virtual > max_virtual_bytes:
        raise UnsafeImage(
            f"{what}: virtual size {virtual} bytes exceeds the limit of {max_virtual_bytes}"
        )
    return ImageInfo(actual, virtual, file_size)
