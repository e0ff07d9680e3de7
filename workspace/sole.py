"""One daemon per store, one agent per node: an exclusive ``flock`` while it runs.

A service keeps rows between transactions and runs the background loops (node liveness,
the capacity queue, leases) on the belief that it is the only one on its SQLite store
(replicas need PostgreSQL: docs/design/replicas.md); an agent believes it is the only
one driving its node's VMs, bridges and dnsmasq from its state directory. So each holds
an exclusive lock on a file (``<database>.lock``, ``<state_dir>/agent.lock``) while it
runs, with its pid in it; a second one started on the same store or directory refuses
to start, naming the first one's pid. The kernel releases the lock when the holder
exits, however it exits, so a restart after a crash needs nothing cleaned up. A holder
that got its stop signal writes "PID stopping" there (``Held.stopping``) while it
finishes its work, so that `ws-admin site up` run meanwhile waits for it to go.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from workspace.errors import ConfigError

# What a holder writes after its pid once it got its stop signal and finishes its work.
STOPPING = "stopping"


class Held:
    """One lock, held until ``release``."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def stopping(self) -> None:
        """Say in the file that this holder is on its way out (it got its stop signal and
        finishes what it does first, which may take a while): `ws-admin site up` then
        waits for it to be gone and starts it again, instead of taking it as running."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()} {STOPPING}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def hold(path: Path, what: str, holder: str, rule: str) -> Held:
    """Take ``path``'s lock for this process, or ConfigError naming the pid that has it:
    "``what`` is in use by another ``holder`` (pid N); ``rule``"."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip().replace(" ", ", ") or "unknown"
        os.close(fd)
        raise ConfigError(f"{what} is in use by another {holder} (pid {pid}); {rule}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Held(fd, path)


def stopping(path: Path) -> int | None:
    """The pid of the holder of the lock file ``path`` if it said it is stopping
    (``Held.stopping``), else None (also when there is no such file)."""
    try:
        pid, _, word = path.read_text().strip().partition(" ")
    except OSError:
        return None
    return int(pid) if word == STOPPING and pid.isdigit() else None


def store_lock(database: Path) -> Path:
    """The lock file of the SQLite store in ``database``: beside the file the path leads
    to, so a symlink to the store is the same store."""
    return Path(f"{os.path.realpath(database)}.lock")


def node_lock(state_dir: str | Path) -> Path:
    """The lock file of an agent's state directory."""
    return Path(state_dir) / "agent.lock"


def hold_store(database: Path) -> Held:
    """Take the SQLite store in the file ``database`` for this service process
    (PostgreSQL takes any number of replicas: nothing to hold there)."""
    return hold(
        store_lock(database),
        f"the SQLite store {database}",
        "workspace-service",
        "one service process per SQLite store (several replicas need PostgreSQL: database_url)",
    )


def hold_node(state_dir: str) -> Held:
    """Take the node's state directory for this agent process."""
    return hold(
        node_lock(state_dir),
        f"the state directory {state_dir}",
        "workspace-agent",
        "one agent per node (state_dir)",
    )
