"""Image inspection before QEMU sees a file (images/formats.py), with hostile inputs."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from images.formats import ImageInfo, UnsafeImage, inspect, sniff

MiB = 1024 * 1024
LIMIT = 1024**4  # the default limits.max_virtual_bytes

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qcow2_header(
    *,
    version: int = 3,
    backing_offset: int = 0,
    backing_len: int = 0,
    cluster_bits: int = 16,
    size: int = MiB,
    crypt_method: int = 0,
    incompatible: int = 0,
    l1_offset: int | None = None,
    refcount_offset: int = 0x10000,
    header_length: int = 104,
    compression_type: int | None = None,
) -> bytes:
    """A qcow2 laid out as in QEMU's docs/interop/qcow2.txt: the header in cluster 0, the
    refcount table in cluster 1, the L1 table (as many entries as the virtual size
    needs) from cluster 2, the file as long as its tables reach."""
    cluster = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 0x10000
    l1_entries = -(-size // (cluster * cluster // 8))
    l1_at = 2 * cluster if l1_offset is None else l1_offset
    header = struct.pack(
        ">4sIQIIQIIQQIIQ",
        b"QFI\xfb",
        version,
        backing_offset,
        backing_len,
        cluster_bits,
        size,
        crypt_method,
        l1_entries,
        l1_at,
        refcount_offset,
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
    )
    assert len(header) == 72
    if version >= 3:
        if compression_type is not None:
            header_length = 112
        header += struct.pack(">QQQII", incompatible, 0, 0, 4, header_length)
        if compression_type is not None:
            header += bytes([compression_type]).ljust(8, b"\0")
    end = max(3 * cluster, 2 * cluster + l1_entries * 8)
    return header.ljust(end, b"\0")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# -- good images ------------------------------------------------------------------------


@needs_qemu_img
def test_real_qcow2_accepted(tmp_path: Path) -> None:
    path = tmp_path / "f.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "1M")
    info = inspect(path, "qcow2", LIMIT)
    assert info == ImageInfo("qcow2", MiB, path.stat().st_size)


@needs_qemu_img
def test_real_qcow2_v2_accepted(tmp_path: Path) -> None:
    path = tmp_path / "f.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", str(path), "3M")
    assert inspect(path, "qcow2", LIMIT).virtual_size_bytes == 3 * MiB


def test_raw_accepted_with_file_size_as_virtual_size(tmp_path: Path) -> None:
    path = write(tmp_path, "disk.img", b"\x00" * 8192 + b"hello".ljust(512, b"\0"))
    assert inspect(path, "raw", LIMIT) == ImageInfo("raw", 8704, 8704)


def test_empty_raw_accepted(tmp_path: Path) -> None:
    assert inspect(write(tmp_path, "e", b""), "raw", LIMIT) == ImageInfo("raw", 0, 0)


def test_crafted_clean_qcow2_accepted(tmp_path: Path) -> None:
    data = qcow2_header(size=5 * MiB)
    path = write(tmp_path, "c.qcow2", data)
    assert inspect(path, "qcow2", LIMIT) == ImageInfo("qcow2", 5 * MiB, len(data))


def test_known_harmless_incompatible_bits_accepted(tmp_path: Path) -> None:
    # dirty (0), compression type (3: zstd), extended L2 (4): QEMU handles them, nothing
    # external. (The compression bit with no compression type said, zlib, was taken
    # here, and QEMU refuses to open such a file.)
    path = write(tmp_path, "c.qcow2", qcow2_header(incompatible=0b11001, compression_type=1))
    assert inspect(path, "qcow2", LIMIT).format == "qcow2"
    if shutil.which("qemu-img"):
        qemu_img("info", "-f", "qcow2", str(path))


def test_virtual_size_at_the_limit_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "c.qcow2", qcow2_header(size=4 * MiB))
    assert inspect(path, "qcow2", 4 * MiB).virtual_size_bytes == 4 * MiB


# -- hostile qcow2 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "pattern"),
    [
        (qcow2_header(backing_offset=512, backing_len=11), "names a backing file"),
        (qcow2_header(backing_offset=512, backing_len=0), "names a backing file"),
        (qcow2_header(version=2, backing_offset=512, backing_len=11), "names a backing file"),
        (qcow2_header(incompatible=1 << 2), "external data file"),
        (qcow2_header(incompatible=(1 << 2) | 1), "external data file"),
        (qcow2_header(crypt_method=1), "encrypted"),
        (qcow2_header(crypt_method=2), "encrypted"),
        (qcow2_header(version=2, crypt_method=1), "encrypted"),
        (qcow2_header(incompatible=1 << 5), "unknown incompatible features 0x20"),
        (qcow2_header(incompatible=1 << 63), "unknown incompatible features"),
        (qcow2_header(version=1), "unsupported qcow2 version 1"),
        (qcow2_header(version=4), "unsupported qcow2 version 4"),
        (b"QFI\xfb" + b"\0" * 20, "truncated qcow2 header"),
        (b"QFI\xfb", "truncated qcow2 header"),
        (qcow2_header()[:76], "truncated qcow2 v3 header"),
        (qcow2_header(size=8 * MiB)[:100], "truncated qcow2 v3 header"),
        (qcow2_header(size=8 * MiB)[:104], "lies beyond the end of the file \\(104 bytes\\)"),
        (qcow2_header(size=8 * MiB)[:0x20004], "L1 table .* lies beyond the end"),
        (qcow2_header(l1_offset=0xFFFFFFFFFFFF0000), "L1 table .* beyond the end of the file"),
        (qcow2_header(l1_offset=0x20008), "L1 table offset 0x20008 is not cluster-aligned"),
        (qcow2_header(refcount_offset=0x10200), "refcount table offset .* not cluster-aligned"),
        (qcow2_header(incompatible=1 << 1), "marked corrupt"),
        (qcow2_header(incompatible=(1 << 1) | 1), "marked corrupt"),
        (qcow2_header(cluster_bits=31), "cluster_bits 31 .*9 to 21"),
        (qcow2_header(cluster_bits=8), "cluster_bits 8"),
        (qcow2_header(cluster_bits=22), "cluster_bits 22"),
        (qcow2_header(header_length=72), "header length 72"),
        (qcow2_header(header_length=0x20000), "header length 131072 exceeds the cluster size"),
    ],
    ids=[
        "backing-file",
        "backing-offset-only",
        "v2-backing-file",
        "external-data-file",
        "external-data-file-and-dirty",
        "aes-encrypted",
        "luks-encrypted",
        "v2-encrypted",
        "unknown-incompat-bit5",
        "unknown-incompat-bit63",
        "version-1",
        "version-4",
        "truncated",
        "magic-only",
        "truncated-v3",
        "header-only-100-bytes",
        "header-only-104-bytes",
        "l1-table-cut-off",
        "l1-offset-ff",
        "l1-offset-unaligned",
        "refcount-offset-unaligned",
        "corrupt-bit",
        "corrupt-and-dirty",
        "cluster-bits-31",
        "cluster-bits-8",
        "cluster-bits-22",
        "v3-header-length-72",
        "header-longer-than-cluster",
    ],
)
def test_hostile_qcow2_refused(tmp_path: Path, header: bytes, pattern: str) -> None:
    path = write(tmp_path, "evil.qcow2", header)
    with pytest.raises(UnsafeImage, match=pattern) as exc:
        inspect(path, "qcow2", LIMIT, what="image evil, partition 'root'")
    assert str(exc.value).startswith("image evil, partition 'root': ")


def test_qcow2_virtual_size_beyond_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "big.qcow2", qcow2_header(size=2 * LIMIT))
    with pytest.raises(UnsafeImage, match=rf"virtual size {2 * LIMIT} bytes exceeds the limit"):
        inspect(path, "qcow2", LIMIT)


def test_sparse_raw_beyond_limit(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    with pytest.raises(UnsafeImage, match="exceeds the limit of 1048576"):
        inspect(path, "raw", MiB)


@needs_qemu_img
def test_real_qcow2_with_backing_file_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "1M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
    with pytest.raises(UnsafeImage, match="backing file"):
        inspect(overlay, "qcow2", LIMIT)


@needs_qemu_img
def test_real_qcow2_with_external_data_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(path), "1M")
    with pytest.raises(UnsafeImage, match="external data file"):
        inspect(path, "qcow2", LIMIT)


@needs_qemu_img
def test_real_encrypted_qcow2_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.qcow2"
    qemu_img(
        "create",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=abc",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        str(path),
        "1M",
    )
    with pytest.raises(UnsafeImage, match="encrypted"):
        inspect(path, "qcow2", LIMIT)


# -- declared format vs content ---------------------------------------------------------


def test_qcow2_declared_raw_refused(tmp_path: Path) -> None:
    # Handing this to QEMU as raw would give the guest the qcow2 metadata; as auto-probed
    # qcow2 it could open a backing file. Either way the declaration is a lie.
    path = write(tmp_path, "x.img", qcow2_header(backing_offset=512, backing_len=10))
    with pytest.raises(UnsafeImage, match="declared raw but the content is qcow2"):
        inspect(path, "raw", LIMIT)


def test_truncated_qcow2_declared_raw_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.img", b"QFI\xfb\0\0")
    with pytest.raises(UnsafeImage, match="content is qcow2"):
        inspect(path, "raw", LIMIT)


def test_raw_declared_qcow2_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.qcow2", b"\x00" * 4096)
    with pytest.raises(UnsafeImage, match="declared qcow2 but the content is raw"):
        inspect(path, "qcow2", LIMIT)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"KDMV" + b"\0" * 508, "vmdk"),
        (b"conectix" + b"\0" * 504, "vhd"),
        (b"vhdxfile" + b"\0" * 504, "vhdx"),
        (b"LUKS\xba\xbe" + b"\0" * 506, "luks"),
        (b"QED\0" + b"\0" * 508, "qed"),
        (
            b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + b"\x7f\x10\xda\xbe",
            "vdi",
        ),
    ],
)
@pytest.mark.parametrize("declared", ["raw", "qcow2"])
def test_other_containers_refused(tmp_path: Path, data: bytes, kind: str, declared: str) -> None:
    path = write(tmp_path, "x.img", data)
    with pytest.raises(UnsafeImage, match=f"declared {declared} but the content is {kind}"):
        inspect(path, declared, LIMIT)


@needs_qemu_img
@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("vmdk", "vmdk"), ("vdi", "vdi"), ("vpc", "vhd"), ("qed", "qed")],
)
def test_real_foreign_images_declared_raw_refused(tmp_path: Path, fmt: str, kind: str) -> None:
    path = tmp_path / f"x.{fmt}"
    qemu_img("create", "-f", fmt, str(path), "1M")
    with pytest.raises(UnsafeImage, match=f"content is {kind}"):
        inspect(path, "raw", LIMIT)


@pytest.mark.parametrize("declared", ["vmdk", "auto", "", "QCOW2"])
def test_unsupported_declared_format_refused(tmp_path: Path, declared: str) -> None:
    path = write(tmp_path, "x.img", b"\0" * 512)
    with pytest.raises(UnsafeImage, match="is not supported"):
        inspect(path, declared, LIMIT)


# -- sniff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"", "raw"),
        (b"\0" * 4096, "raw"),
        (b"QFI", "raw"),  # not the full magic
        (b"QFI\xfb", "qcow2"),
        (qcow2_header(), "qcow2"),
        (b"KDMV\x01\0\0\0", "vmdk"),
        (b"\0" * 64 + b"\x7f\x10\xda\xbe", "vdi"),
        (b"\0" * 64 + b"\x7f\x10\xda", "raw"),
        (b"xxQFI\xfb", "raw"),  # magic must be at offset 0
    ],
)
def test_sniff(header: bytes, expected: str) -> None:
    assert sniff(header) == expected


def test_v2_qcow2_needs_only_its_72_byte_header(tmp_path: Path) -> None:
    path = write(tmp_path, "v2.qcow2", qcow2_header(version=2, size=3 * MiB))
    assert inspect(path, "qcow2", LIMIT).virtual_size_bytes == 3 * MiB


def test_l1_table_too_small_for_the_virtual_size_refused(tmp_path: Path) -> None:
    data = bytearray(qcow2_header(size=MiB))
    data[24:32] = struct.pack(">Q", 4 * 1024**3)  # 4 GiB: 8 L1 entries, the header has 1
    path = write(tmp_path, "small-l1.qcow2", bytes(data))
    with pytest.raises(UnsafeImage, match="L1 table of 1 entries does not fit"):
        inspect(path, "qcow2", LIMIT)


@needs_qemu_img
@pytest.mark.parametrize("size", ["1M", "100M", "3G"])
@pytest.mark.parametrize("cluster", ["512", "65536", "2M"])
def test_real_qcow2_layouts_accepted(tmp_path: Path, size: str, cluster: str) -> None:
    path = tmp_path / "f.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster}", str(path), size)
    assert inspect(path, "qcow2", LIMIT).format == "qcow2"


@needs_qemu_img
def test_real_truncated_qcow2_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "8M")
    with open(path, "r+b") as f:
        f.truncate(0x20000)  # the header and the refcount table; the L1 table cut off
    with pytest.raises(UnsafeImage, match=r"L1 table .* beyond the end of the file"):
        inspect(path, "qcow2", LIMIT, what="partition root: f.qcow2")


@needs_qemu_img
@pytest.mark.parametrize(
    "options", ["", "cluster_size=512", "refcount_bits=1", "refcount_bits=64", "compat=0.10"]
)
def test_a_qcow2_cut_short_after_its_tables_is_refused(tmp_path: Path, options: str) -> None:
    """A download cut short keeps the header, the refcount and L1 tables (at the start of
    the file), and loses data and L2 tables: it was taken, as `qemu-img check` refuses
    it, and its workspaces read zeros where the data was. The refcounts say which
    clusters are in use; one past the end of the file refuses it."""
    raw = write(tmp_path, "data.raw", os.urandom(2 * MiB))
    whole = tmp_path / "whole.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *(["-o", options] if options else []),
             str(raw), str(whole))  # fmt: skip
    assert inspect(whole, "qcow2", LIMIT).virtual_size_bytes == 2 * MiB
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 128 * 1024):  # (a tail of a cluster is taken)
        path = write(tmp_path, "cut.qcow2", data[:cut])
        with pytest.raises(UnsafeImage, match=r"(past|beyond) the end of the file"):
            inspect(path, "qcow2", LIMIT, what="partition root")


# -- raw disks and other files ----------------------------------------------------------


@pytest.mark.parametrize("size", [27, 511, 513, 8197])
def test_a_raw_disk_of_any_size_is_taken(tmp_path: Path, size: int) -> None:
    # QEMU reads its whole sectors and ignores a tail; refusing would break imports of
    # files that were never meant as bootable disks (test data, a data-only partition).
    path = write(tmp_path, "notes.txt", b"x" * size)
    assert inspect(path, "raw", LIMIT, what="partition root: notes.txt").virtual_size_bytes == size


def iso_image() -> bytes:
    """The start of an ISO 9660 image: 16 system sectors, then a primary descriptor."""
    pvd = b"\x01CD001\x01".ljust(2048, b" ")
    return (b"\0" * 32768 + pvd).ljust(36 * 1024, b"\0")


@pytest.mark.parametrize("declared", ["raw", "qcow2"])
def test_iso_image_refused(tmp_path: Path, declared: str) -> None:
    path = write(tmp_path, "fake.iso", iso_image())
    with pytest.raises(UnsafeImage, match=r"partition root: the file is an ISO 9660 \(CD/DVD\)"):
        inspect(path, declared, LIMIT, what="partition root")


def test_sniff_sees_an_iso_only_at_its_offset() -> None:
    assert sniff(iso_image()) == "iso"
    assert sniff(b"CD001" + b"\0" * 40000) == "raw"
    assert sniff(iso_image()[:32772]) == "raw"  # cut before the magic ends


def test_push_progress_says_when_it_hashes_a_big_file_off_a_terminal() -> None:
    import io

    from workspace.cli import progress

    out = io.StringIO()
    bar = progress.PushProgress("ws", out)
    total = 2 * progress.BIG_FILE
    bar("hash", "/x/huge.raw", 0, total)
    bar("hash", "/x/huge.raw", total // 2, total)  # within LINE_EVERY_S: not said
    bar("hash", "/x/small.raw", 0, 1024)
    assert out.getvalue() == "ws: huge.raw: hashing 512.0 MiB\n"


# -- broken qcow2 that QEMU refuses to open -------------------------------------------------


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _snapshot_table(data: bytes) -> int:
    (offset,) = struct.unpack_from(">Q", data, 64)
    return int(offset)


def _qemu_refuses(path: Path) -> str:
    proc = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0, "qemu-img opened it"
    return proc.stderr


# (what is changed, a made file -> the broken one, what inspect says); the files come
# from qemu-img: v3 (header of 112 bytes, compression type zlib), 64 KiB clusters, with
# one internal snapshot.
_BROKEN = [
    ("compression-type-7", lambda d: _put(_put(d, 72, ">Q", 1 << 3), 104, ">B", 7),
     "unknown compression type 7"),
    ("zstd-without-its-bit", lambda d: _put(d, 104, ">B", 1),
     "compression type is zstd, but its compression type feature bit is not set"),
    ("zlib-with-the-zstd-bit", lambda d: _put(d, 72, ">Q", 1 << 3),
     "compression type is zlib, but its compression type feature bit is set"),
    ("65537-snapshots", lambda d: _put(d, 60, ">I", 65537),
     "65537 internal snapshots .*at most 65536"),
    ("snapshot-extra-data-1025", lambda d: _put(d, _snapshot_table(d) + 36, ">I", 1025),
     "internal snapshot 0 has 1025 bytes of extra data"),
    ("no-snapshot-table-unaligned", lambda d: _put(_put(d, 60, ">I", 0), 64, ">Q", 0x10008),
     "snapshot table offset 0x10008 is invalid"),
    ("header-extension-too-long", lambda d: _put(d, 112 + 4, ">I", 0x10000),
     "header extension .* runs past the end of the header's cluster"),
]  # fmt: skip


@needs_qemu_img
@pytest.mark.parametrize(
    ("change", "pattern"), [(c, p) for _, c, p in _BROKEN], ids=[i for i, _, _ in _BROKEN]
)
def test_a_qcow2_qemu_would_not_open_is_refused(
    tmp_path: Path, change: object, pattern: str
) -> None:
    """Each was taken, and qemu-img refused it on every node at create ("Could not open
    backing image"), as an error about the workspace's overlay."""
    made = tmp_path / "made.qcow2"
    qemu_img(
        "convert", "-f", "raw", "-O", "qcow2", str(write(tmp_path, "r", b"x" * MiB)), str(made)
    )
    qemu_img("snapshot", "-c", "s1", str(made))
    assert inspect(made, "qcow2", LIMIT).format == "qcow2"
    assert callable(change)
    path = write(tmp_path, "broken.qcow2", change(made.read_bytes()))
    _qemu_refuses(path)
    with pytest.raises(UnsafeImage, match=f"partition root: broken qcow2: .*{pattern}"):
        inspect(path, "qcow2", LIMIT, what="partition root")


def test_extended_l2_entries_need_clusters_of_16_kib(tmp_path: Path) -> None:
    small = qcow2_header(incompatible=1 << 4, cluster_bits=12, refcount_offset=4096)
    path = write(tmp_path, "x.qcow2", small)
    if shutil.which("qemu-img"):
        assert "subcluster size" in _qemu_refuses(path)
    with pytest.raises(UnsafeImage, match="extended L2 entries need clusters of at least 16384"):
        inspect(path, "qcow2", LIMIT)
    fits = qcow2_header(incompatible=1 << 4, cluster_bits=14, refcount_offset=16384)
    ok = write(tmp_path, "ok.qcow2", fits)
    assert inspect(ok, "qcow2", LIMIT).format == "qcow2"
