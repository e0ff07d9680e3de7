"""A stopped workspace's disks saved as a new image's (``SaveTask``; ``ws image save``).

For each cow partition the service names, the workspace's overlay (over its cached base)
is copied by ``qemu-img convert`` into a self-contained qcow2 next to it and streamed to
the service (``Nodes.PutBlob``), which hashes it into its repository; the copy is then
removed. The domain must be shut off: the service marks the workspace so that it does
not start meanwhile, and the agent checks the domain itself before and after each copy.

A save the service no longer waits for (the task stream it came on broke: the service
failed it, cleared its mark, and the workspace may start or be saved again) is
cancelled: it stops at its next step (qemu-img is killed, a send ends) rather than go
on copying and sending for up to its time limit. One save of a workspace runs at a time
on its node: a save asked for again waits for the one before to end (both use the same
copy's name: the first's end removed the second's copy).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.disks import FILE_MODE, WorkspaceFiles
from agent.virt.base import DomainState, Driver
from images import qemu_img
from workspace.chunking import ChunkSizer
from workspace.domain.tasks import SavedPartition, SaveOutcome, SaveTask
from workspace.errors import DriverError, FailedPrecondition, NotFound, Unavailable
from workspace.files import private_fd
from workspace.log import about

log = logging.getLogger("agent.save")

# Bytes of a saved disk per PutBlob message, at most (fewer over a slow link; a 1 MiB
# message cut a link slower than 1 MiB per CHUNK_S: workspace/chunking.py).
CHUNK_BYTES = 256 * 1024
# A save asked for with no time limit (the service always sends one).
DEFAULT_TIMEOUT_S = 3600
# The name of a copy being made in the workspace's directory (removed after it is sent,
# and by an agent that starts again after dying mid-save: ``leftovers``).
COPY_SUFFIX = ".saving.qcow2"

# Sends one saved disk's bytes within a time limit (seconds); returns the digest and
# size the service stored.
# (workspace id, disk name, its size, its bytes, seconds left) -> (digest, size)
Send = Callable[[str, str, int, Iterator[bytes], float], tuple[str, int]]
# Told how far the copy of a disk is: (disk name, percent).
Copying = Callable[[str, float], None]
# How often a copy says how far it is, at most (seconds); its start and end always.
COPYING_EVERY_S = 1.0
# Why a cancelled save stopped (its service no longer waits for it).
CANCELLED = "the save was cancelled: the agent's connection to the service that asked for it broke"


class Saver:
    def __init__(self, files: WorkspaceFiles, driver: Driver) -> None:
        self.files = files
        self.driver = driver
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}  # workspace id -> held by its save

    def save(
        self,
        workspace_id: str,
        task: SaveTask,
        send: Send,
        copying: Copying | None = None,
        cancelled: threading.Event | None = None,
    ) -> SaveOutcome:
        """Flatten and send each partition ``task`` names; FailedPrecondition when the
        domain is not shut off, NotFound when it or a partition's overlay is missing.
        ``copying`` is told how far each copy is (at most every ``COPYING_EVERY_S``);
        once ``cancelled`` is set the save stops at its next step (Unavailable). A save
        of a workspace whose earlier save still runs here waits for it to end."""
        deadline = time.monotonic() + (task.timeout_s or DEFAULT_TIMEOUT_S)
        with self._lock:
            busy = self._busy.setdefault(workspace_id, threading.Lock())
        if not busy.acquire(blocking=False):
            log.info(
                "saving %s: waiting for an earlier save of it to end on this node",
                workspace_id,
                extra=about(workspace_id),
            )
            if not busy.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise DriverError(
                    f"workspace {workspace_id}: an earlier save of it did not end on this node "
                    "within the save's time limit"
                )
        try:
            return self._save(workspace_id, task, send, deadline, copying, cancelled)
        finally:
            busy.release()

    def _save(
        self,
        workspace_id: str,
        task: SaveTask,
        send: Send,
        deadline: float,
        copying: Copying | None,
        cancelled: threading.Event | None,
    ) -> SaveOutcome:
        go_on = _going_on(cancelled)
        sent: list[SavedPartition] = []
        for name in task.partitions:
            go_on()
            self._check_stopped(workspace_id)
            overlay = self.files.dir(workspace_id) / f"{name}.qcow2"
            if "/" in name or not overlay.is_file():
                raise NotFound(f"workspace {workspace_id} has no disk {name!r} on this node")
            copy = overlay.with_name(name + COPY_SUFFIX)
            try:
                started = time.monotonic()
                copy.unlink(missing_ok=True)
                left = deadline - started
                if left <= 0:
                    raise DriverError(f"the save ran out of time before disk {name}")
                told = _every(COPYING_EVERY_S, name, copying, go_on)
                # Made 0600 before qemu-img writes the disk into it (it keeps the mode of
                # a file that exists; one it makes is 0644 under the agent's umask, and
                # the workspace's directory is 0711: anyone knowing the name could read
                # the owner's disk for as long as the copy takes).
                os.close(private_fd(copy, os.O_WRONLY | os.O_TRUNC, FILE_MODE))
                qemu_img.flatten(overlay, copy, left, told)
                os.chmod(copy, FILE_MODE)
                go_on()
                self._check_stopped(workspace_id)  # it did not start under the copy
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DriverError(f"the save ran out of time after copying disk {name}")
                size = copy.stat().st_size
                digest, size = send(workspace_id, name, size, _chunks(copy, go_on), left)
                log.info(
                    "workspace %s: disk %s saved as %s (%d bytes) in %.1f s",
                    workspace_id,
                    name,
                    digest,
                    size,
                    time.monotonic() - started,
                    extra=about(workspace_id),
                )
                sent.append(SavedPartition(name, digest, size))
            except qemu_img.QemuImgError as exc:
                raise DriverError(f"workspace {workspace_id}: disk {name}: {exc}") from exc
            finally:
                copy.unlink(missing_ok=True)
        return SaveOutcome(tuple(sent))

    def _check_stopped(self, workspace_id: str) -> None:
        info = self.driver.get(workspace_id)
        if info is None:
            raise NotFound(f"workspace {workspace_id} is not defined on this node")
        if info.state is not DomainState.SHUTOFF:
            raise FailedPrecondition(
                f"workspace {workspace_id} is {info.state.value} on its node; "
                "only a shut-off workspace can be saved"
            )

    def leftovers(self) -> int:
        """Remove copies an agent that died mid-save left behind; how many."""
        gone = 0
        for wid in self.files.existing():
            for path in self.files.dir(wid).glob("*" + COPY_SUFFIX):
                path.unlink(missing_ok=True)
                gone += 1
        return gone


def _going_on(cancelled: threading.Event | None) -> Callable[[], None]:
    """Raises Unavailable once ``cancelled`` is set (asked at each step of a save)."""

    def go_on() -> None:
        if cancelled is not None and cancelled.is_set():
            raise Unavailable(CANCELLED)

    return go_on


def _every(
    seconds: float, disk: str, copying: Copying | None, go_on: Callable[[], None]
) -> Callable[[float], None]:
    """``copying`` for ``disk``, told the first figure, then at most every ``seconds``,
    and 100 when the copy is done; each figure first asks ``go_on`` (which raises to
    stop the copy: qemu-img is killed)."""
    last = [-seconds]

    def tell(percent: float) -> None:
        go_on()
        if copying is None:
            return
        now = time.monotonic()
        if now - last[0] >= seconds or percent >= 100.0:
            last[0] = now
            copying(disk, percent)

    return tell


def _chunks(path: Path, go_on: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """The copy's bytes, in chunks sized by how fast the link takes them (at most
    ``CHUNK_BYTES``; workspace/chunking.py): a slow link to the service is not cut."""
    with path.open("rb") as f:
        go_on()
        for data in ChunkSizer(CHUNK_BYTES).read(f):
            yield data
            go_on()
