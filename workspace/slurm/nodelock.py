"""One lock per Slurm node name between ws-slurm runs on the controller.

slurmctld runs its power programs concurrently (Slurm 22.05 forks them and does not wait;
from 23.02 slurmscriptd runs each in a thread of its own), so a resume and a suspend of
the same node, two resumes of it, or one run's cleanup of a powered-down node's leftover
(``Program.sweep``) and a resume of that node, may overlap. Each run holds its nodes'
locks from its first look at the service until it is done with them; the cleanup only
takes a node whose lock is free, and looks at its state again under the lock.

The locks are Linux open-file-description locks (``F_OFD_SETLK``) on one byte each, at an
offset drawn from the node's name, of the log file: the one file every run (slurmctld's,
as SlurmUser, and an admin's by hand) shares and may write, made by the admin for
SlurmUser (README). They belong to the run's own open file (not inherited by scontrol),
so the kernel frees them when the run ends however it ends: killed by slurmctld
(SIGTERM, then SIGKILL), or dying. Nothing is written to the file for them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import struct
import time
from collections.abc import Iterable

log = logging.getLogger("ws-slurm")
POLL_S = 0.1  # how often a busy lock is tried again
# Far beyond any log file's end; 48 bits of the name's digest each.
BASE = 1 << 56
_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid (+ padding)


def offset(node: str) -> int:
    """The byte a node's lock is on."""
    return BASE + int.from_bytes(hashlib.sha256(node.encode()).digest()[:6], "big")


class NodeLocks:
    """The locks of one run. ``path`` None: no locking (said once in the log)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd: int | None = None
        self.held: dict[int, str] = {}  # offset -> node
        self._said = False

    def _open(self) -> bool:
        if self.fd is not None:
            return True
        if self.path is None or not hasattr(fcntl, "F_OFD_SETLK"):
            return False
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            if not self._said:
                log.warning("cannot lock nodes against other ws-slurm runs: %s: %s",
                            self.path, exc.strerror or exc)  # fmt: skip
                self._said = True
            return False
        return True

    def _lock(self, at: int, kind: int) -> bool:
        assert self.fd is not None
        arg = struct.pack(_FLOCK, kind, os.SEEK_SET, at, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _rotated(self) -> bool:
        """The path names another file than the one locked (the log was rotated)."""
        assert self.fd is not None and self.path is not None
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        mine = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def _reopen(self) -> None:
        held = list(self.held.values())
        self.close()
        if held and self._open():
            for node in held:  # ours a moment ago: free unless another run took it
                if self._lock(offset(node), fcntl.F_WRLCK):
                    self.held[offset(node)] = node

    def wait(self) -> None:
        """Between two tries of a busy lock (tests pause here)."""
        time.sleep(POLL_S)

    def acquire(self, nodes: Iterable[str], wait_s: float) -> list[str]:
        """Lock ``nodes``, waiting up to ``wait_s`` for those another run holds (in one
        order for every run: no two runs wait for each other). Returns those not locked
        in time. Without a lock file every node counts as locked."""
        todo = sorted({offset(n): n for n in nodes}.items())
        if not self._open():
            return []
        deadline = time.monotonic() + wait_s
        late: list[str] = []
        for at, node in todo:
            if at in self.held:
                continue
            while not self._lock(at, fcntl.F_WRLCK):
                if time.monotonic() >= deadline:
                    late.append(node)
                    break
                self.wait()
            else:
                self.held[at] = node
        if self._rotated():
            self._reopen()
            return [n for n in (node for _, node in todo) if offset(n) not in self.held]
        return late

    def try_acquire(self, nodes: Iterable[str]) -> list[str]:
        """Those of ``nodes`` locked now, without waiting for any another run holds.
        Without a lock file: all of them."""
        names = list(dict.fromkeys(nodes))
        if not self._open():
            return names
        got = []
        for node in names:
            at = offset(node)
            if at in self.held or self._lock(at, fcntl.F_WRLCK):
                self.held[at] = node
                got.append(node)
        if got and self._rotated():
            self.release(got)
            return []
        return got

    def release(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            at = offset(node)
            if at in self.held and self.fd is not None:
                self._lock(at, fcntl.F_UNLCK)
                self.held.pop(at)

    def close(self) -> None:
        """Every lock freed (the kernel does the same when the run is killed)."""
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.held.clear()
