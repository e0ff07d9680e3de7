"""Per-workspace files on the node: disks (overlays, blanks), the console log."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.seed import check_seed_size, write_seed_iso
from agent.virt.base import DiskSpec, DomainSpec, NicSpec, tap_name
from images import formats, mkfs, qemu_img
from images.model import Mode, Partition
from workspace.domain.model import Order
from workspace.errors import DriverError
from workspace.files import private_fd

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
SEED_ISO = "seed.iso"
# What a filesystem mounted at the root has (mkfs.ext4 makes it): no workspace's.
NOT_OURS = "lost+found"
# The virtual size limit is the service's business (checked at import).
_NO_SIZE_LIMIT = 1 << 62


# Directories on QEMU's path (this root, each workspace's) are 0711: QEMU runs as an
# unprivileged user (libvirt-qemu) and must traverse them to open the disks libvirt
# hands it, but nobody else may list them; every file in them is 0600 (libvirt's
# dynamic ownership chowns a running domain's disks to QEMU's user and back).
DIR_MODE = 0o711
FILE_MODE = 0o600


def disk_target(index: int) -> str:
    """The virtio target of the disk at ``index``: vda..vdz, then vdaa, vdab, ... (as
    Linux names them; a workspace may have 26 partitions and a seed after them)."""
    letters = ""
    n = index + 1
    while n:
        n, r = divmod(n - 1, len(_LETTERS))
        letters = _LETTERS[r] + letters
    return "vd" + letters


def domain_spec(
    order: Order, disks: tuple[DiskSpec, ...], paths: Mapping[str, Path], console_log: Path
) -> DomainSpec:
    """What the driver defines for ``order``, its disks prepared and blobs cached."""
    return DomainSpec(
        workspace_id=order.workspace_id,
        name=order.name,
        cpus=order.cpus,
        memory_mib=order.memory_mib,
        disks=disks,
        nics=tuple(
            NicSpec(n.mac, n.bridge, n.ip, tap_name(order.workspace_id, i))
            for i, n in enumerate(order.nics)
        ),
        kernel=str(paths[order.kernel_digest]) if order.kernel_digest else "",
        initrd=str(paths[order.initrd_digest]) if order.initrd_digest else "",
        cmdline=order.cmdline,
        console_log=str(console_log),
        hostname=order.hostname,
        limits=order.limits,
    )


class WorkspaceFiles:
    """<root>/<workspace id>/: overlays, blank disks, seed.iso, console.log, agent.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # agent.json is read, changed and written from several threads (an operation, a
        # trust re-check): one at a time, so that neither loses what the other wrote.
        self._state_lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(root, DIR_MODE)

    def dir(self, workspace_id: str) -> Path:
        return self.root / workspace_id

    def console_log(self, workspace_id: str) -> Path:
        return self.dir(workspace_id) / "console.log"

    def make_console_log(self, workspace_id: str) -> Path:
        """The console log, made 0600 if missing: what a guest prints (cloud-init's
        output, a password a script echoes) is its owner's; the hypervisor's log writer
        (virtlogd) appends to it and keeps its mode."""
        path = self.console_log(workspace_id)
        os.close(private_fd(path, os.O_WRONLY | os.O_APPEND))
        return path

    def seed_iso(self, workspace_id: str) -> Path:
        """The workspace's NoCloud seed image (``agent/seed.py``), when its order has one."""
        return self.dir(workspace_id) / SEED_ISO

    def existing(self) -> set[str]:
        """The workspaces with a directory here. Not ``lost+found`` (a filesystem mounted
        here for the disks has one) nor a hidden directory: neither is a workspace's,
        and each used to be taken as one left over, removed and reported."""
        return {
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and p.name != NOT_OURS and not p.name.startswith(".")
        }

    def remove(self, workspace_id: str) -> None:
        """Delete the workspace's directory. DriverError if some of it could not be (a
        filesystem gone read-only): the removal failed and is tried again later. (Errors
        were ignored: the removal was taken as done, the directory found again by the
        next pass and removed again, at every pass.)"""
        failed: list[BaseException] = []

        def onerror(
            func: object, path: str, exc_info: tuple[object, BaseException, object]
        ) -> None:
            if not isinstance(exc_info[1], FileNotFoundError):
                failed.append(exc_info[1])

        shutil.rmtree(self.dir(workspace_id), onerror=onerror)
        if failed:
            raise DriverError(
                f"workspace {workspace_id}: its files in {self.dir(workspace_id)} could not "
                f"all be deleted: {failed[0]}"
            )

    def prepare(
        self, order: Order, base_paths: dict[str, Path], keep: bool = False
    ) -> tuple[DiskSpec, ...]:
        """Create this workspace's disks; ``base_paths`` maps digests to cached blobs.

        One disk per partition, in order, then (when the order has a seed) the NoCloud
        seed ISO as the last one: a raw virtio disk, read-only, written again at every
        create. A seed over the node's limit is refused before anything is made.
        ``keep``: the disks were all made before (the domain went away behind the
        agent's back): the overlays and blank disks that exist are kept as they are,
        with what the owner wrote on them; only missing ones are made."""
        if order.seed is not None:
            try:
                check_seed_size(order.seed)
            except DriverError as exc:
                raise DriverError(f"workspace {order.workspace_id}: {exc.message}") from exc
        d = self.dir(order.workspace_id)
        d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(d, DIR_MODE)
        disks: list[DiskSpec] = []
        for index, disk in enumerate(order.disks):
            p = disk.partition
            target = disk_target(index)
            try:
                if p.mode is not Mode.BLANK:
                    # Checked at import by the service too; the node does not rely on it
                    # before QEMU or qemu-img open the file.
                    formats.inspect(base_paths[p.digest], p.format, _NO_SIZE_LIMIT, "cached blob")
                if p.mode is Mode.READONLY:
                    disks.append(
                        DiskSpec(
                            str(base_paths[p.digest]),
                            p.format,
                            target,
                            readonly=True,
                            shareable=True,
                        )
                    )
                    continue
                if p.mode is Mode.BLANK:
                    disks.append(self._blank(d, p, target, order.workspace_id, keep))
                    continue
                path = d / f"{p.name}.qcow2"
                if keep and path.is_file():
                    disks.append(DiskSpec(str(path), "qcow2", target))
                    continue
                path.unlink(missing_ok=True)
                qemu_img.create_overlay(base_paths[p.digest], p.format, path, p.virtual_size_bytes)
                os.chmod(path, FILE_MODE)
                disks.append(DiskSpec(str(path), "qcow2", target))
            except (qemu_img.QemuImgError, mkfs.MkfsError, formats.UnsafeImage, OSError) as exc:
                raise DriverError(f"workspace {order.workspace_id}: disk {p.name}: {exc}") from exc
        if order.seed is not None:
            path = self.seed_iso(order.workspace_id)
            try:
                write_seed_iso(path, order.seed)
            except (DriverError, OSError) as exc:
                reason = exc.message if isinstance(exc, DriverError) else f"{exc}"
                raise DriverError(f"workspace {order.workspace_id}: {reason}") from exc
            disks.append(DiskSpec(str(path), "raw", disk_target(len(disks)), readonly=True))
        else:
            self.seed_iso(order.workspace_id).unlink(missing_ok=True)
        return tuple(disks)

    @staticmethod
    def _blank(d: Path, p: Partition, target: str, workspace_id: str, keep: bool) -> DiskSpec:
        """An empty disk: qcow2 (or raw) from qemu-img, or a raw file formatted ext4 with
        the filesystem UUID the workspace's seed mounts it by (``mkfs.fs_uuid``); with
        ``keep``, the one made before if it exists."""
        size = p.virtual_size_bytes or p.size_bytes
        fmt = "raw" if p.ext4 else (p.format or "qcow2")
        path = d / f"{p.name}.{fmt}"
        if keep and path.is_file():
            return DiskSpec(str(path), fmt, target)
        path.unlink(missing_ok=True)
        if p.ext4:
            mkfs.create_ext4(path, size, label=p.name, fs_id=mkfs.fs_uuid(workspace_id, p.name))
        else:
            qemu_img.create_blank(path, size, fmt)
        os.chmod(path, FILE_MODE)
        return DiskSpec(str(path), fmt, target)

    # -- small per-workspace agent state (survives restarts) ---------------------------

    def load_state(self, workspace_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.dir(workspace_id) / "agent.json").read_text())
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def save_state(self, workspace_id: str, state: dict[str, Any]) -> None:
        """Replace the workspace's agent state with ``state``."""
        d = self.dir(workspace_id)
        with self._state_lock:
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            tmp = d / "agent.json.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(state))
            os.replace(tmp, d / "agent.json")

    def update_state(self, workspace_id: str, **changes: Any) -> None:
        """Set these keys of the workspace's agent state, keeping the others (written
        only if one changes)."""
        with self._state_lock:
            state = self.load_state(workspace_id)
            if any(state.get(key) != value for key, value in changes.items()):
                self.save_state(workspace_id, {**state, **changes})
