"""Blank partitions with a filesystem: a sparse raw file formatted by mkfs.ext4 (e2fsprogs).

The file is raw (attached with ``<driver type='raw'>``): mkfs writes only metadata, so
it stays sparse, and lazy inode-table/journal initialisation keeps formatting fast
whatever the size (the guest kernel finishes the initialisation in the background).
mkfs.ext4 runs under the same resource limits as qemu-img.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

MKFS_EXT4 = "mkfs.ext4"
_LIMIT_AS_BYTES = 2 * 1024**3
_LIMIT_CPU_S = 120
_LABEL_MAX = 16
# The namespace of the filesystem UUIDs of workspaces' ext4 blank disks (``fs_uuid``).
_FS_UUID_NAMESPACE = uuid.UUID("5b0f3c2e-8d1a-4e6b-9f27-3c4d5e6f7a80")


class MkfsError(RuntimeError):
    pass


def _mkfs() -> str:
    found = shutil.which(MKFS_EXT4) or shutil.which(MKFS_EXT4, path="/usr/sbin:/sbin")
    if found is None:
        raise MkfsError("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    return found


def fs_uuid(workspace_id: str, partition: str) -> str:
    """The filesystem UUID of workspace ``workspace_id``'s ext4 blank ``partition``.

    Derived, not random, so the service can name the filesystem in the guest's seed (its
    fstab line) before the node makes it; unique per workspace and partition, where a
    label (16 characters, and possibly also inside an image's own filesystems) is not."""
    return str(uuid.uuid5(_FS_UUID_NAMESPACE, f"{workspace_id}/{partition}"))


def ext4_command(path: Path, label: str = "", fs_id: str = "") -> list[str]:
    args = [
        "prlimit",
        f"--as={_LIMIT_AS_BYTES}",
        f"--cpu={_LIMIT_CPU_S}",
        _mkfs(),
        "-q",
        "-F",  # a regular file, not a block device
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
    ]
    if label:
        args += ["-L", label[:_LABEL_MAX]]
    if fs_id:
        args += ["-U", fs_id]
    return [*args, str(path)]


def create_ext4(
    path: Path, size_bytes: int, label: str = "", fs_id: str = "", timeout_s: float = 300.0
) -> None:
    """A sparse raw file of ``size_bytes`` holding an empty ext4 filesystem (with UUID
    ``fs_id``, else a random one)."""
    if size_bytes <= 0:
        raise MkfsError(f"{path}: size must be positive, got {size_bytes}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    try:
        proc = subprocess.run(
            ext4_command(path, label, fs_id),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        path.unlink(missing_ok=True)
        raise MkfsError(f"mkfs.ext4 {path.name} timed out after {timeout_s} s") from exc
    if proc.returncode != 0:
        path.unlink(missing_ok=True)
        raise MkfsError(f"mkfs.ext4 {path.name} failed: {(proc.stderr or proc.stdout).strip()}")
