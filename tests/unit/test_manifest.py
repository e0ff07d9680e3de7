"""Image references, sizes and push manifests (images/manifest.py)."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from images import formats
from images.manifest import (
    ImageRef,
    Manifest,
    ManifestError,
    PartitionSpec,
    detect_format,
    load,
    parse,
    parse_ref,
    parse_size,
    sha256_file,
    single,
)

MiB = 1024 * 1024


# -- NAME:VERSION ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("sci-base:1.2", ImageRef("sci-base", "1.2")),
        ("appliance", ImageRef("appliance")),
        ("Deb_12.x:2024-05-01", ImageRef("Deb_12.x", "2024-05-01")),
        ("a" * 128 + ":" + "1" * 64, ImageRef("a" * 128, "1" * 64)),
    ],
)
def test_refs(text: str, ref: ImageRef) -> None:
    assert parse_ref(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        *("", ":1", "name:", "a:b:c", "-x:1", "x:-1", "a b", "x/y:1", "a" * 129, "x:" + "1" * 65),
        # a newline at the end of either part: `$` would have let it through
        *("nl:1\n", "nl\n:1", "nl\n"),
    ],
)
def test_bad_refs(text: str) -> None:
    with pytest.raises(ManifestError, match="NAME:VERSION"):
        parse_ref(text)


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("32MiB", 32 * MiB),
        ("32M", 32 * MiB),
        ("32 mib", 32 * MiB),
        ("1G", 1024**3),
        ("2TiB", 2 * 1024**4),
        ("7K", 7 * 1024),
        ("9b", 9),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [0, -1, "0M", "1.5G", "1 PB", "ten", True, None, 1.5])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ManifestError, match="size"):
        parse_size(value, "size")


# -- manifests -------------------------------------------------------------------------


def test_full_manifest(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    path = tmp_path / "img" / "sci.toml"
    path.write_text(
        """
kernel = "vmlinuz"
initrd = "../initrd.img"
cmdline = "console=ttyS0"

[[partitions]]
name = "root"
file = "root.qcow2"
format = "qcow2"

[[partitions]]
name = "ref-data"
file = "/data/ref.raw"
mode = "readonly"

[[partitions]]
name = "scratch"
mode = "blank"
size = "32MiB"
ext4 = true

[[partitions]]
name = "swap"
mode = "blank"
size = 1048576
"""
    )
    m = load(path)
    base = (tmp_path / "img").resolve()
    assert m == Manifest(
        (
            PartitionSpec("root", "cow", base / "root.qcow2", "qcow2"),
            PartitionSpec("ref-data", "readonly", Path("/data/ref.raw"), ""),
            PartitionSpec("scratch", "blank", None, "", 32 * MiB, True),
            PartitionSpec("swap", "blank", None, "", MiB, False),
        ),
        base / "vmlinuz",
        tmp_path.resolve() / "initrd.img",
        "console=ttyS0",
    )
    assert m.files() == [
        base / "root.qcow2",
        Path("/data/ref.raw"),
        base / "vmlinuz",
        tmp_path.resolve() / "initrd.img",
    ]


def test_kernel_only_manifest() -> None:
    m = parse({"kernel": "k"}, Path("/x"))
    assert m.partitions == () and m.kernel == Path("/x/k")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "nothing to boot"),
        ({"partitions": []}, "nothing to boot"),
        ({"kernel": "k", "colour": "red"}, "unknown key.*colour"),
        ({"partitions": {"name": "x"}}, "array of tables"),
        ({"partitions": ["root"]}, "expected a table"),
        ({"partitions": [{"name": "root", "file": "f", "size": 1}]}, "blank partitions only"),
        ({"partitions": [{"name": "root", "file": "f", "ext4": True}]}, "blank partitions only"),
        ({"partitions": [{"name": "root", "file": "f", "owner": "x"}]}, "unknown key.*owner"),
        ({"partitions": [{"name": "Root", "file": "f"}]}, "name 'Root' is not valid"),
        ({"partitions": [{"file": "f"}]}, "name '' is not valid"),
        ({"partitions": [{"name": "root"}]}, "cow partition needs a file"),
        ({"partitions": [{"name": "root", "file": "f", "mode": "rw"}]}, "mode 'rw'"),
        ({"partitions": [{"name": "root", "file": "f", "format": "vmdk"}]}, "format 'vmdk'"),
        ({"partitions": [{"name": "s", "mode": "blank"}]}, "needs a size"),
        ({"partitions": [{"name": "s", "mode": "blank", "size": "x"}]}, "not a size"),
        ({"partitions": [{"name": "s", "mode": "blank", "size": 1, "file": "f"}]}, "no file"),
        (
            {"partitions": [{"name": "s", "mode": "blank", "size": 1, "ext4": "yes"}]},
            "true or false",
        ),
        (
            {
                "partitions": [
                    {"name": "s", "mode": "blank", "size": 1, "ext4": True, "format": "qcow2"}
                ]
            },
            "raw file",
        ),
        ({"partitions": [{"name": "a", "file": "f"}, {"name": "a", "file": "g"}]}, "named twice"),
        ({"partitions": [{"name": "a", "file": "f"}], "initrd": "i"}, "need a kernel"),
        ({"partitions": [{"name": "a", "file": "f"}], "cmdline": "x"}, "need a kernel"),
        ({"kernel": 3}, "kernel must be a string"),
        (
            {"partitions": [{"name": f"p{i}", "file": "f"} for i in range(27)]},
            "at most 26 partitions",
        ),
    ],
)
def test_bad_manifests(data: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(data, Path("/x"))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.toml"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[partitions]\n")
    with pytest.raises(ManifestError, match=r"bad\.toml"):
        load(bad)
    bad.write_text('[[partitions]]\nname = "x"\n')
    with pytest.raises(ManifestError, match=r"bad\.toml: partition 'x': a cow partition needs"):
        load(bad)


def test_single(tmp_path: Path) -> None:
    m = single(tmp_path / "disk.raw")
    assert m.partitions == (PartitionSpec("root", "cow", tmp_path / "disk.raw", ""),)
    assert single("d", "qcow2").partitions[0].format == "qcow2"
    with pytest.raises(ManifestError, match="vmdk"):
        single("d", "vmdk")


# -- files ---------------------------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\0" * 4096)
    qcow = tmp_path / "a.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 508)
    vmdk = tmp_path / "a.vmdk"
    vmdk.write_bytes(b"KDMV" + b"\0" * 508)
    assert detect_format(raw) == "raw"
    assert detect_format(qcow) == "qcow2"
    with pytest.raises(ManifestError, match="vmdk, not raw or qcow2; convert"):
        detect_format(vmdk)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
@pytest.mark.parametrize(
    ("fmt", "options", "found"),
    [
        ("vpc", "", "vhd"),
        ("vmdk", "", "vmdk"),
        ("vmdk", "subformat=monolithicFlat", "vmdk"),  # a text descriptor, its -flat.vmdk
        ("parallels", "", "parallels"),
        ("vdi", "", "vdi"),
        ("vhdx", "", "vhdx"),
        ("qed", "", "qed"),
    ],
)
def test_a_disk_of_another_format_is_refused_with_a_command_that_converts_it(
    tmp_path: Path, fmt: str, options: str, found: str
) -> None:
    """A VMDK descriptor or a Parallels disk was taken for a raw disk of a few hundred
    bytes (or a few MiB of metadata) and pushed, and booted nothing; a VHD was refused
    with `qemu-img convert -f vhd`, which qemu-img does not know (it calls it vpc)."""
    disk = tmp_path / f"disk.{found}"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            fmt,
            *(["-o", options] if options else []),
            str(disk),
            "1M",
        ],
        check=True,
    )
    with pytest.raises(ManifestError, match=f"the file is {found}, not raw or qcow2") as exc:
        detect_format(disk)
    with pytest.raises(formats.UnsafeImage, match=f"declared raw but the content is {found}"):
        formats.inspect(disk, "raw", 2**40)
    command = str(exc.value).rpartition("(")[2].rstrip(")")
    assert command.startswith(f"qemu-img convert -f {fmt} -O qcow2 ")
    subprocess.run(shlex.split(command), check=True, capture_output=True, cwd=tmp_path)
    assert detect_format(tmp_path / "out.qcow2") == "qcow2"


@pytest.mark.parametrize("name", ["disk.qcow2", "disk.QCOW2", "disk.qcow"])
def test_a_file_named_qcow2_that_is_not_one_is_not_taken_for_raw(tmp_path: Path, name: str) -> None:
    """A 404 page saved as disk.qcow2 was pushed as a raw disk of a few hundred bytes
    (`ws image push` and `ws-admin image import` said nothing), and its workspaces
    booted nothing. Its format is to be said now; said raw, it is taken."""
    page = tmp_path / name
    page.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    with pytest.raises(ManifestError, match=r"not a qcow2 .* --format raw"):
        detect_format(page)
    assert single(page, "raw").partitions[0].format == "raw"
    assert formats.inspect(page, "raw", 2**40).format == "raw"


def test_sha256_file(tmp_path: Path) -> None:
    data = b"x" * (3 * MiB + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    digest, size = sha256_file(path, lambda done, total: seen.append((done, total)))
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert seen[-1] == (len(data), len(data)) and len(seen) == 4
