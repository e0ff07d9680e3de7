"""One lock per Slurm node name between ws-slurm runs on the controller.

slurmctld runs its power programs concurrently (Slurm 22.05 forks them and does not wait;
from 23.02 slurmscriptd runs each in a thread of its own), so a resume and a suspend of
the same node, two resumes of it, or one run's cleanup of a powered-down node's leftover
(``Program.sweep``) and a resume of that node, may overlap. Each run holds its nodes'
locks from its first look at the service until it is done with them; the cleanup only
takes a node whose lock is free, and looks at its state again under the lock.

The locks are Linux open-file-description locks (``F_OFD_SETLK``) on one byte each, at an
offset drawn from the node's name, of the **lock file** (``lock_file`` in the config,
default /var/lib/ws-slurm/nodes.lock): a file of their own, made 0600 (its directory, and
any missing above it, 0700: ``dirs``) when missing, that every run (slurmctld's, as
SlurmUser, and an admin's by hand) opens.
Until session 43 they were on the log file: a log rotated by renaming while a run held
its locks let a newer run lock the new file (two runs on one node), and no log file meant
no locks at all. Nothing renames the lock file; a run that cannot open it fails
(``LockFileError``, a config error: the nodes are told to Slurm) rather than run unlocked.
The locks belong to the run's own open file (not inherited by scontrol), so the kernel
frees them when the run ends however it ends: killed by slurmctld (SIGTERM, then
SIGKILL), or dying. Nothing is written to the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import stat
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from workspace import errors
from workspace.slurm.dirs import LOCK_DIR_MODE, make_dirs
from workspace.slurm.lockcheck import owner

POLL_S = 0.1  # how often a busy lock is tried again
# 48 bits of the name's digest each, far beyond the (empty) file's end (as when the
# locks were on the log file: the same offsets, so the same order of locking).
BASE = 1 << 56
_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid (+ padding)


def offset(node: str) -> int:
    """The byte a node's lock is on."""
    return BASE + int.from_bytes(hashlib.sha256(node.encode()).digest()[:6], "big")


class LockFileError(errors.ConfigError):
    """The lock file cannot be opened (or made): the run cannot keep other runs off its
    nodes, so it does nothing."""


def _fix_for_the_file(where: Path) -> str:
    """Why this run may not open the lock file that is there, and the fix ("" when it is
    not there: its directory is the problem; "" too when the file is this user's and
    its modes let it be opened). A file of another user's is one a run as
    that user made (root's, by hand): the directory's mode does not matter then."""
    try:
        st = os.stat(where)
    except OSError:
        return ""
    uid = os.geteuid()
    try:
        me = pwd.getpwuid(uid).pw_name
        chown = f"{me}:"
    except KeyError:  # a uid without a name (a container's)
        me, chown = f"uid {uid}", str(uid)
    mode = f"{stat.filemode(st.st_mode)} {owner(st)}"
    if st.st_uid != uid:
        return (
            f"it is {mode}, not {me}'s, who runs ws-slurm here: made by a run as "
            f"{owner(st)}? SlurmUser runs ws-slurm under slurmctld; run it by hand as "
            f"SlurmUser too: chown {chown} {where}"
        )
    if st.st_mode & (stat.S_IRUSR | stat.S_IWUSR) != stat.S_IRUSR | stat.S_IWUSR:
        return f"it is {mode}: chmod 0600 {where}"
    return ""  # its modes are right: refused for another reason (a security policy)


class NodeLocks:
    """The locks of one run, on the lock file at ``path`` (opened on first use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.held: dict[int, str] = {}  # offset -> node

    def open(self) -> None:
        """Open the lock file, made 0600 (and its directory 0700) if missing;
        LockFileError says why it cannot be."""
        if self.fd is not None:
            return
        if not self.path:
            raise LockFileError("lock_file is empty: ws-slurm runs lock their nodes on it")
        if not hasattr(fcntl, "F_OFD_SETLK"):
            raise LockFileError("ws-slurm's node locks need Linux (open file description locks)")
        where = Path(self.path)
        try:
            make_dirs(where.parent, LOCK_DIR_MODE)
            self.fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError):  # from mkdir: a file where a directory goes
                why = f"{exc.filename} is not a directory"
            fix = _fix_for_the_file(where) if isinstance(exc, PermissionError) else ""
            if fix:
                raise LockFileError(f"lock file {self.path}: {why} ({fix})") from None
            raise LockFileError(
                f"lock file {self.path}: {why} (ws-slurm locks its nodes "
                "there against other runs; it and its directory must be writable by "
                "SlurmUser, who runs ws-slurm under slurmctld: install -d -o slurm -g slurm "
                f"-m 0700 {where.parent}; or set lock_file in the ws-slurm config)"
            ) from None

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

    def wait(self) -> None:
        """Between two tries of a busy lock (tests pause here)."""
        time.sleep(POLL_S)

    def acquire(self, nodes: Iterable[str], wait_s: float) -> list[str]:
        """Lock ``nodes``, waiting up to ``wait_s`` for those another run holds (in one
        order for every run: no two runs wait for each other). Returns those not locked
        in time."""
        todo = sorted({offset(n): n for n in nodes}.items())
        self.open()
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
        return late

    def try_acquire(self, nodes: Iterable[str]) -> list[str]:
        """Those of ``nodes`` locked now, without waiting for any another run holds."""
        names = list(dict.fromkeys(nodes))
        self.open()
        got = []
        for node in names:
            at = offset(node)
            if at in self.held or self._lock(at, fcntl.F_WRLCK):
                self.held[at] = node
                got.append(node)
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
