"""Disk image inspection in pure Python, before any qemu-img call.

We never let qemu guess a format. An uploaded file is checked here first: a
qcow2 that names a backing file or an external data file (which would make
QEMU open a path of the uploader's choosing; CVE-2024-32498 and earlier), an
encrypted qcow2, a qcow2 whose header or tables do not hold together (qemu-img
would fail on it later, on a node, naming the overlay instead), an ISO 9660
image, a declared format that does not match the content, or a virtual size
beyond the site's limit is refused. The same checks run in `ws image push`
before a file is hashed. A raw disk may be any size: QEMU reads whole sectors of
it and ignores a tail (a file that is no disk boots nothing, and harms nothing).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

QCOW2_MAGIC = b"QFI\xfb"
_OTHER_MAGICS = {
    b"KDMV": "vmdk",
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"LUKS\xba\xbe": "luks",
    b"QED\0": "qed",
    b"WithoutFreeSpace": "parallels",
    b"WithouFreSpacExt": "parallels",
    # A VMDK's text descriptor (monolithicFlat and the split kinds): it names the extent
    # files that hold the disk, and taken as raw it was a disk of a few hundred bytes.
    b"# Disk DescriptorFile": "vmdk",
}
# qemu-img's name of a format where it is not ours (``qemu-img convert -f vpc``).
_QEMU_DRIVERS = {"vhd": "vpc"}
# ISO 9660: the primary volume descriptor's "CD001" at 32769 (sector 16, byte 1).
_ISO_MAGIC = b"CD001"
_ISO_OFFSET = 32769
# The bytes of a file ``sniff`` needs to tell every format it knows.
SNIFF_BYTES = _ISO_OFFSET + len(_ISO_MAGIC)

_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_EXTERNAL_DATA = 1 << 2
_QCOW2_INCOMPAT_COMPRESSION = 1 << 3
_QCOW2_INCOMPAT_EXTENDED_L2 = 1 << 4
_QCOW2_KNOWN_INCOMPAT = 0b11111  # dirty, corrupt, external data, compression type, extended L2
# QEMU's own bounds (block/qcow2.h): cluster_bits, and the largest L1 and refcount tables.
_MIN_CLUSTER_BITS = 9
_MAX_CLUSTER_BITS = 21
_MAX_L1_BYTES = 32 * 1024 * 1024
_MAX_REFTABLE_BYTES = 8 * 1024 * 1024
_V2_HEADER = 72
_V3_HEADER = 104
# Compression types (the v3 header's byte 104, when its header is longer): zlib, zstd.
_COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}
# Extended L2 entries split a cluster into 32 subclusters of at least 512 bytes.
_MIN_EXTENDED_L2_CLUSTER_BITS = 14
# Header extensions (after the header, up to the end of its cluster): the end marker, and
# the backing file's format (a name QEMU keeps in 16 bytes).
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_MAX_BACKING_FORMAT = 15
# Internal snapshots (block/qcow2.h): how many, their table's size, each one's extra data.
_MAX_SNAPSHOTS = 65536
_MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024
_MAX_SNAPSHOT_EXTRA = 1024
_SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")  # 40 bytes, then extra data, id and name
_INT64_MAX = (1 << 63) - 1
# The bits of a refcount table entry that are its block's offset.
_REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00


class UnsafeImage(ValueError):
    """The file is not what it claims to be, or is unsafe to hand to QEMU."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "raw" | "qcow2"
    virtual_size_bytes: int
    file_size_bytes: int


def sniff(header: bytes) -> str:
    """The format a file's first bytes (``SNIFF_BYTES`` of them to see an ISO) look like:
    qcow2, another known container, iso, or raw."""
    if header.startswith(QCOW2_MAGIC):
        return "qcow2"
    for magic, name in _OTHER_MAGICS.items():
        if header.startswith(magic):
            return name
    if len(header) >= 68 and header[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if header[_ISO_OFFSET:SNIFF_BYTES] == _ISO_MAGIC:
        return "iso"
    return "raw"


def qemu_driver(fmt: str) -> str:
    """The name qemu-img knows a format ``sniff`` names by (``-f`` of qemu-img convert)."""
    return _QEMU_DRIVERS.get(fmt, fmt)


def sniff_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return sniff(f.read(SNIFF_BYTES))


def _table(what: str, name: str, offset: int, size: int, cluster: int, file_size: int) -> None:
    """A qcow2 table of ``size`` bytes at ``offset``: cluster-aligned, inside the file."""
    if offset % cluster:
        raise UnsafeImage(
            f"{what}: broken qcow2: the {name} offset {offset:#x} is not cluster-aligned"
        )
    if size and offset + size > file_size:
        raise UnsafeImage(
            f"{what}: broken qcow2: the {name} ({size} bytes at {offset:#x}) lies beyond "
            f"the end of the file ({file_size} bytes); is it truncated?"
        )


def _counted_from(block: bytes, first: int, bits: int) -> bool:
    """Whether a refcount block of ``bits``-bit entries counts a cluster at or after its
    entry ``first`` (entries narrower than a byte are packed from its low bits)."""
    byte, shift = divmod(first * bits, 8)
    if shift and byte < len(block) and block[byte] >> shift:
        return True
    rest = block[byte + bool(shift) :]
    return rest != bytes(len(rest))


def _check_in_use(
    f: BinaryIO, what: str, cluster: int, order: int, rt_off: int, rt_bytes: int, file_size: int
) -> None:
    """Every cluster the qcow2's refcounts say is in use starts inside the file, as
    `qemu-img check` sees it: a download cut short after its tables ends before its data
    or its L2 tables, which QEMU would read as zeros. Only the refcount blocks that count
    clusters past the end of the file are read (in a whole file: the one of its end)."""
    bits = 1 << order
    per_block = cluster * 8 // bits  # the clusters one refcount block counts
    in_file = -(-file_size // cluster)  # the clusters that start inside the file
    f.seek(rt_off)
    table = f.read(rt_bytes)
    read: set[int] = set()  # blocks read whole: each once, however many entries name it
    for i in range(in_file // per_block, len(table) // 8):
        (entry,) = struct.unpack_from(">Q", table, i * 8)
        block_off = entry & _REFT_OFFSET_MASK
        first = max(0, in_file - i * per_block)
        if not block_off or (not first and block_off in read):
            continue
        _table(what, "refcount block", block_off, cluster, cluster, file_size)
        if not first:
            read.add(block_off)
        f.seek(block_off)
        if _counted_from(f.read(cluster), first, bits):
            raise UnsafeImage(
                f"{what}: truncated qcow2: its refcounts use clusters past the end of the "
                f"file ({file_size} bytes); is it a partial download? (qemu-img check "
                "says more)"
            )


def _check_compression(what: str, incompat: int, header: bytes, header_len: int) -> None:
    """A v3 qcow2's compression type (byte 104 of a header longer than 104 bytes, else
    zlib) is one QEMU knows, and its incompatible feature bit is set exactly when it is
    not zlib: QEMU refuses to open the file otherwise."""
    kind = header[_V3_HEADER] if header_len > _V3_HEADER else 0
    if kind not in _COMPRESSION_TYPES:
        raise UnsafeImage(
            f"{what}: broken qcow2: unknown compression type {kind} (qemu knows 0, zlib, "
            "and 1, zstd)"
        )
    if bool(kind) != bool(incompat & _QCOW2_INCOMPAT_COMPRESSION):
        raise UnsafeImage(
            f"{what}: broken qcow2: its compression type is {_COMPRESSION_TYPES[kind]}, but "
            f"its compression type feature bit is {'not set' if kind else 'set'}"
        )


def _check_extensions(f: BinaryIO, what: str, start: int, end: int) -> None:
    """The header extensions between the header (``start``) and the end of its cluster
    (``end``) each fit there, as QEMU reads them (the file reads as zeros past its end,
    and a zero type ends them)."""
    f.seek(start)
    data = f.read(end - start).ljust(end - start + 8, b"\0")  # (+8: a last type and length)
    offset = start
    while offset < end:
        kind, length = struct.unpack_from(">II", data, offset - start)
        offset += 8
        if offset > end or length > end - offset:
            raise UnsafeImage(
                f"{what}: broken qcow2: a header extension ({kind:#x}, {length} bytes) runs "
                f"past the end of the header's cluster ({end} bytes)"
            )
        if kind == _EXT_END:
            return
        if kind == _EXT_BACKING_FORMAT and length > _MAX_BACKING_FORMAT:
            raise UnsafeImage(
                f"{what}: broken qcow2: a backing format name of {length} bytes (qemu "
                f"takes at most {_MAX_BACKING_FORMAT})"
            )
        offset += (length + 7) & ~7


def _check_snapshots(
    f: BinaryIO, what: str, count: int, offset: int, cluster: int, file_size: int
) -> None:
    """The internal snapshot table: cluster-aligned (also when empty), at most QEMU's
    number of snapshots, each with at most its extra data, the whole at most its size.
    Only the entries' headers are read (a snapshot's own L1 table is not)."""
    if offset % cluster or offset > _INT64_MAX - count * _SNAPSHOT_ENTRY.size:
        raise UnsafeImage(f"{what}: broken qcow2: the snapshot table offset {offset:#x} is invalid")
    if count > _MAX_SNAPSHOTS:
        raise UnsafeImage(
            f"{what}: broken qcow2: {count} internal snapshots (qemu takes at most "
            f"{_MAX_SNAPSHOTS})"
        )
    if not count:
        return
    _table(what, "snapshot table", offset, 1, cluster, file_size)
    at = offset
    for i in range(count):
        at = (at + 7) & ~7
        f.seek(at)
        entry = f.read(_SNAPSHOT_ENTRY.size).ljust(_SNAPSHOT_ENTRY.size, b"\0")
        *_, id_len, name_len, _, _, _, _, extra = _SNAPSHOT_ENTRY.unpack(entry)
        if extra > _MAX_SNAPSHOT_EXTRA:
            raise UnsafeImage(
                f"{what}: broken qcow2: internal snapshot {i} has {extra} bytes of extra "
                f"data (qemu takes at most {_MAX_SNAPSHOT_EXTRA}; qemu-img check -r all "
                "removes them)"
            )
        at += _SNAPSHOT_ENTRY.size + extra + id_len + name_len
        if at - offset > _MAX_SNAPSHOT_TABLE_BYTES:
            raise UnsafeImage(
                f"{what}: broken qcow2: its snapshot table is larger than "
                f"{_MAX_SNAPSHOT_TABLE_BYTES} bytes"
            )


def _check_qcow2(f: BinaryIO, header: bytes, file_size: int, what: str) -> int:
    if len(header) < _V2_HEADER:
        raise UnsafeImage(f"{what}: truncated qcow2 header ({len(header)} bytes)")
    (version, backing_off, backing_len, cluster_bits, size, crypt) = struct.unpack(
        ">IQIIQI", header[4:36]
    )
    if version not in (2, 3):
        raise UnsafeImage(f"{what}: unsupported qcow2 version {version}")
    if backing_off or backing_len:
        raise UnsafeImage(f"{what}: qcow2 names a backing file; upload a self-contained image")
    if crypt:
        raise UnsafeImage(f"{what}: encrypted qcow2 images are not accepted")
    incompat = 0
    header_len = _V2_HEADER
    refcount_order = 4  # a v2 qcow2's refcounts are 16 bits
    if version == 3:
        if len(header) < _V3_HEADER:
            raise UnsafeImage(f"{what}: truncated qcow2 v3 header ({len(header)} bytes)")
        (incompat,) = struct.unpack(">Q", header[72:80])
        (refcount_order, header_len) = struct.unpack(">II", header[96:104])
        if incompat & _QCOW2_INCOMPAT_EXTERNAL_DATA:
            raise UnsafeImage(f"{what}: qcow2 uses an external data file; not accepted")
        if incompat & _QCOW2_INCOMPAT_CORRUPT:
            raise UnsafeImage(
                f"{what}: the qcow2 is marked corrupt; repair it (qemu-img check -r all) "
                "or convert it again"
            )
        if incompat & ~_QCOW2_KNOWN_INCOMPAT:
            raise UnsafeImage(f"{what}: qcow2 has unknown incompatible features {incompat:#x}")
        if header_len < _V3_HEADER:
            raise UnsafeImage(
                f"{what}: broken qcow2: header length {header_len} (a v3 header has at "
                f"least {_V3_HEADER} bytes)"
            )
        if refcount_order > 6:
            raise UnsafeImage(f"{what}: broken qcow2: refcount order {refcount_order} (at most 6)")
    if not _MIN_CLUSTER_BITS <= cluster_bits <= _MAX_CLUSTER_BITS:
        raise UnsafeImage(
            f"{what}: broken qcow2: cluster_bits {cluster_bits} (qemu accepts "
            f"{_MIN_CLUSTER_BITS} to {_MAX_CLUSTER_BITS})"
        )
    cluster = 1 << cluster_bits
    if header_len > cluster:
        raise UnsafeImage(
            f"{what}: broken qcow2: header length {header_len} exceeds the cluster size {cluster}"
        )
    if file_size < header_len:
        raise UnsafeImage(
            f"{what}: truncated qcow2: the file has {file_size} bytes, its header {header_len}"
        )
    if version == 3:
        _check_compression(what, incompat, header, header_len)
    if incompat & _QCOW2_INCOMPAT_EXTENDED_L2 and cluster_bits < _MIN_EXTENDED_L2_CLUSTER_BITS:
        raise UnsafeImage(
            f"{what}: broken qcow2: extended L2 entries need clusters of at least "
            f"{1 << _MIN_EXTENDED_L2_CLUSTER_BITS} bytes, not {cluster}"
        )
    _check_extensions(f, what, header_len, cluster)
    (l1_entries, l1_off, rt_off, rt_clusters, nb_snapshots, snap_off) = struct.unpack(
        ">IQQIIQ", header[36:72]
    )
    l2_entry = 16 if incompat & _QCOW2_INCOMPAT_EXTENDED_L2 else 8
    l1_span = cluster * (cluster // l2_entry)  # the guest bytes one L1 entry maps
    if l1_entries * 8 > _MAX_L1_BYTES or l1_entries < -(-size // l1_span):
        raise UnsafeImage(
            f"{what}: broken qcow2: an L1 table of {l1_entries} entries does not fit its "
            f"virtual size of {size} bytes"
        )
    _table(what, "L1 table", l1_off, l1_entries * 8, cluster, file_size)
    if rt_clusters == 0 or rt_clusters * cluster > _MAX_REFTABLE_BYTES:
        raise UnsafeImage(f"{what}: broken qcow2: a refcount table of {rt_clusters} cluster(s)")
    _table(what, "refcount table", rt_off, rt_clusters * cluster, cluster, file_size)
    _check_snapshots(f, what, nb_snapshots, snap_off, cluster, file_size)
    _check_in_use(f, what, cluster, refcount_order, rt_off, rt_clusters * cluster, file_size)
    return int(size)


def inspect(
    path: str | os.PathLike[str], declared_format: str, max_virtual_bytes: int, what: str = "image"
) -> ImageInfo:
    """Check ``path`` against its declared format; raise UnsafeImage on any problem."""
    if declared_format not in ("raw", "qcow2"):
        raise UnsafeImage(f"{what}: format {declared_format!r} is not supported (raw, qcow2)")
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header = f.read(SNIFF_BYTES)
        actual = sniff(header)
        if actual == "iso":
            raise UnsafeImage(f"{what}: {ISO_REFUSED}")
        if actual != declared_format:
            raise UnsafeImage(
                f"{what}: declared {declared_format} but the content is {actual}; "
                f"declare the real format"
            )
        qcow2 = actual == "qcow2"
        virtual = _check_qcow2(f, header[:4096], file_size, what) if qcow2 else file_size
    if virtual > max_virtual_bytes:
        raise UnsafeImage(
            f"{what}: virtual size {virtual} bytes exceeds the limit of {max_virtual_bytes}"
        )
    return ImageInfo(actual, virtual, file_size)


ISO_REFUSED = (
    "the file is an ISO 9660 (CD/DVD) image, not a disk image; images here are disks "
    "(raw or qcow2): install from it into a disk (virt-install, then push that disk), "
    "or put its files in a disk image"
)
