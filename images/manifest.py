"""Image references (``NAME[:VERSION]``) and push manifests (TOML), in pure Python.

An image is pushed as ``NAME:VERSION`` (``sci-base:1.2``; a plain ``NAME`` is accepted
too) with a manifest listing its partitions. The manifest file (see docs/images.md)::

    kernel = "vmlinuz"            # optional: direct boot (paths relative to this file)
    initrd = "initrd.img"         # optional, needs a kernel
    cmdline = "console=ttyS0"     # optional, needs a kernel
    context = "nocloud"           # optional: "none" (default) or "nocloud" (cloud-init seed)
    login_user = "debian"         # optional: the account `ws ssh` logs in as

    [[partitions]]
    name = "root"                 # [a-z0-9][a-z0-9_-]{0,31}, unique in the image
    file = "root.qcow2"
    mode = "cow"                  # cow (default) | readonly | blank
    format = "qcow2"              # raw | qcow2; default: detected from the content

    [[partitions]]
    name = "scratch"
    mode = "blank"                # created on the node at deploy time
    size = "10GiB"                # bytes (integer) or a number with K/M/G/T(iB)
    ext4 = true                   # optional: make an ext4 filesystem on it

Unknown keys are errors. This module imports neither ``workspace`` nor ``agent``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images import formats

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
PARTITION_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
MODES = ("cow", "readonly", "blank")
FORMATS = ("raw", "qcow2")
# Disks a VM can have (virtio targets vda..vdz).
MAX_PARTITIONS = 26
CHUNK_BYTES = 1024 * 1024

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*\Z")
_TOP_KEYS = frozenset({"kernel", "initrd", "cmdline", "partitions", "context", "login_user"})
CONTEXTS = ("none", "nocloud")
LOGIN_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_PART_KEYS = frozenset({"name", "file", "mode", "format", "size", "ext4"})


class ManifestError(ValueError):
    """A reference, size or manifest that is not valid; the message says what to fix."""


@dataclass(frozen=True)
class ImageRef:
    name: str
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name


def parse_ref(text: str) -> ImageRef:
    """``"sci-base:1.2"`` -> ImageRef("sci-base", "1.2"); a plain name has no version."""
    name, sep, version = text.partition(":")
    if not NAME_RE.match(name) or (sep and not VERSION_RE.match(version)):
        raise ManifestError(
            f"image {text!r} is not NAME:VERSION (NAME: up to 128 letters, digits, '.', '_', "
            "'-'; VERSION: up to 64 of the same; both start with a letter or digit)"
        )
    return ImageRef(name, version)


# The largest size a request can carry (the API's signed 64-bit byte counts).
MAX_SIZE = 2**63 - 1


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an integer or a string such as ``"32MiB"``, ``"10G"`` (binary units)."""
    if isinstance(value, bool):
        raise ManifestError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)) and m[2].lower() in _UNITS:
        size = int(m[1]) * _UNITS[m[2].lower()]
    else:
        raise ManifestError(
            f"{what}: {value!r} is not a size (bytes, or a number with K, M, G, T, KiB, MiB, ...)"
        )
    if size <= 0:
        raise ManifestError(f"{what}: must be more than 0 bytes, got {value!r}")
    if size > MAX_SIZE:
        raise ManifestError(f"{what}: {value!r} is larger than any disk ({MAX_SIZE} bytes)")
    return size


@dataclass(frozen=True)
class PartitionSpec:
    """One partition to push: a local file (cow, readonly) or a size (blank)."""

    name: str
    mode: str = "cow"  # cow | readonly | blank
    file: Path | None = None
    format: str = ""  # raw | qcow2 (files: "" = detect)
    size_bytes: int = 0  # blank only
    ext4: bool = False  # blank only


@dataclass(frozen=True)
class Manifest:
    partitions: tuple[PartitionSpec, ...]
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    # How the image takes deploy-time information: "none" or "nocloud" (a NoCloud seed).
    context: str = "none"
    login_user: str = ""  # the account `ws ssh` logs in as ("": none)

    def files(self) -> list[Path]:
        """Every local file the push sends (disks, kernel, initrd), in manifest order."""
        out = [p.file for p in self.partitions if p.file is not None]
        return out + [f for f in (self.kernel, self.initrd) if f is not None]


def _str(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ManifestError(f"{what}: {key} must be a string, got {value!r}")
    return value


def _path(base: Path, text: str) -> Path:
    return (base / os.path.expanduser(text)).resolve()


def _partition(data: object, index: int, base: Path) -> PartitionSpec:
    what = f"partition #{index + 1}"
    if not isinstance(data, dict):
        raise ManifestError(f"{what}: expected a table ([[partitions]])")
    unknown = sorted(set(data) - _PART_KEYS)
    if unknown:
        raise ManifestError(f"{what}: unknown key(s) {', '.join(unknown)}")
    name = _str(data, "name", what)
    if not PARTITION_NAME_RE.match(name):
        raise ManifestError(
            f"{what}: name {name!r} is not valid (1-32 of a-z, 0-9, '_', '-'; first a-z or 0-9)"
        )
    what = f"partition {name!r}"
    mode = _str(data, "mode", what) or "cow"
    if mode not in MODES:
        raise ManifestError(f"{what}: mode {mode!r} is not one of {', '.join(MODES)}")
    fmt = _str(data, "format", what)
    if fmt and fmt not in FORMATS:
        raise ManifestError(f"{what}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    ext4 = data.get("ext4", False)
    if not isinstance(ext4, bool):
        raise ManifestError(f"{what}: ext4 must be true or false")
    file = _str(data, "file", what)
    if mode == "blank":
        if file:
            raise ManifestError(f"{what}: a blank partition has no file (give a size)")
        if "size" not in data:
            raise ManifestError(f"{what}: a blank partition needs a size")
        if ext4 and fmt == "qcow2":
            raise ManifestError(f"{what}: an ext4 blank partition is a raw file; drop format")
        return PartitionSpec(
            name, mode, None, fmt, parse_size(data["size"], f"{what}: size"), bool(ext4)
        )
    if not file:
        raise ManifestError(f"{what}: a {mode} partition needs a file")
    if "size" in data or ext4:
        raise ManifestError(f"{what}: size and ext4 are for blank partitions only")
    return PartitionSpec(name, mode, _path(base, file), fmt)


def parse(data: Mapping[str, Any], base_dir: Path) -> Manifest:
    """A manifest from parsed TOML; relative paths are resolved against ``base_dir``."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ManifestError(f"unknown key(s) {', '.join(unknown)}")
    raw_parts = data.get("partitions", [])
    if not isinstance(raw_parts, list):
        raise ManifestError("partitions must be an array of tables ([[partitions]])")
    parts = tuple(_partition(p, i, base_dir) for i, p in enumerate(raw_parts))
    names = [p.name for p in parts]
    for n in names:
        if names.count(n) > 1:
            raise ManifestError(f"partition {n!r} is named twice")
    if len(parts) > MAX_PARTITIONS:
        raise ManifestError(f"at most {MAX_PARTITIONS} partitions, got {len(parts)}")
    kernel = _str(data, "kernel", "manifest")
    initrd = _str(data, "initrd", "manifest")
    cmdline = check_cmdline(_str(data, "cmdline", "manifest"))
    if (initrd or cmdline) and not kernel:
        raise ManifestError("initrd and cmdline need a kernel")
    if not parts and not kernel:
        raise ManifestError("nothing to boot: no partition and no kernel")
    context = _str(data, "context", "manifest") or "none"
    if context not in CONTEXTS:
        raise ManifestError(f"context {context!r} is not one of {', '.join(CONTEXTS)}")
    login_user = check_login_user(_str(data, "login_user", "manifest"))
    return Manifest(
        parts,
        _path(base_dir, kernel) if kernel else None,
        _path(base_dir, initrd) if initrd else None,
        cmdline,
        context,
        login_user,
    )


# What a kernel cmdline cannot hold: the characters XML 1.0 cannot carry (the node writes
# the cmdline into the domain's XML; libvirt refused it at every boot).
_NOT_IN_CMDLINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def check_cmdline(cmdline: str) -> str:
    """``cmdline`` if the domain's XML can carry it, else ManifestError."""
    bad = _NOT_IN_CMDLINE.search(cmdline)
    if bad:
        raise ManifestError(
            f"the kernel cmdline has a character it cannot have ({bad[0]!r} at offset "
            f"{bad.start()}): a control character (tabs and newlines aside) or a non-character"
        )
    return cmdline


def check_login_user(login_user: str) -> str:
    """``login_user`` if it is "" or a user name, else ManifestError."""
    if login_user and not LOGIN_USER_RE.match(login_user):
        raise ManifestError(
            f"login_user {login_user!r} is not a user name (1-32 of a-z, 0-9, '_', '-'; "
            "first a-z or '_')"
        )
    return login_user


def load(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest file; relative paths in it are relative to the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ManifestError(f"{p}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{p}: {exc}") from exc
    try:
        return parse(data, p.resolve().parent)
    except ManifestError as exc:
        raise ManifestError(f"{p}: {exc}") from exc


def single(path: str | os.PathLike[str], fmt: str = "") -> Manifest:
    """The short form of a push: one cow partition "root" from ``path``."""
    if fmt and fmt not in FORMATS:
        raise ManifestError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return Manifest((PartitionSpec("root", "cow", Path(path).resolve(), fmt),))


def detect_format(path: str | os.PathLike[str]) -> str:
    """raw or qcow2 from the file's content; other containers are refused, and so is a
    file named as a qcow2 that is not one (an error page saved by a failed download is
    no raw disk): its format is then said, not guessed."""
    found = formats.sniff_file(path)
    if found == "iso":
        raise ManifestError(f"{path}: {formats.ISO_REFUSED}")
    if found == "raw" and Path(path).suffix.lower() in (".qcow2", ".qcow"):
        raise ManifestError(
            f"{path}: named as a qcow2, but its content is not a qcow2 (it does not begin "
            "with QFI\\xfb): a failed or partial download? If it is a raw disk, say so: "
            '--format raw (in a manifest: format = "raw")'
        )
    if found not in FORMATS:
        raise ManifestError(
            f"{path}: the file is {found}, not raw or qcow2; convert it first "
            f"(qemu-img convert -f {formats.qemu_driver(found)} -O qcow2 {path} out.qcow2)"
        )
    return found


def sha256_file(
    path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None
) -> tuple[str, int]:
    """("sha256:<hex>", size) of a file; ``progress(done, total)`` after each MiB."""
    h = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return "sha256:" + h.hexdigest(), done
