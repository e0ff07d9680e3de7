"""One daemon per store, one agent per node: an exclusive ``flock`` while it runs.

A service keeps rows between transactions and runs the background loops (node liveness,
the capacity queue, leases) on the belief that it is the only one on its SQLite store
(replicas need PostgreSQL: docs/design/replicas.md); an agent believes it is the only
one driving its node's VMs, bridges and dnsmasq from its state directory. So each holds
an exclusive lock on a file (``<database>.lock``, ``<state_dir>/agent.lock``) while it
runs, with its pid in it; a second one started on the same store or directory refuses
to start, naming the first one's pid. The kernel releases the lock when the holder
exits, however it exits, so a restart after a crash needs nothing cleaned up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from workspace.errors import ConfigError


class Held:
    """One lock, held until ``release``."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

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
        pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"{what} is in use by another {holder} (pid {pid}); {rule}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Held(fd, path)


def hold_store(database: Path) -> Held:
    """Take the SQLite store in the file ``database`` for this service process
    (PostgreSQL takes any number of replicas: nothing to hold there). The lock is beside
    the file the path leads to: a symlink to the store is the same store."""
    return hold(
        Path(f"{os.path.realpath(database)}.lock"),
        f"the SQLite store {database}",
        "workspace-service",
        "one service process per SQLite store (several replicas need PostgreSQL: database_url)",
    )


def hold_node(state_dir: str) -> Held:
    """Take the node's state directory for this agent process."""
    return hold(
        Path(state_dir) / "agent.lock",
        f"the state directory {state_dir}",
        "workspace-agent",
        "one agent per node (state_dir)",
    )
