"""One service process per SQLite store.

SQLite serialises writers, but a service process also keeps rows between transactions
and runs the background loops (node liveness, the capacity queue, leases) on the belief
that it is the only one: replicas need PostgreSQL (docs/design/replicas.md). So a
service holds an exclusive ``flock`` on ``<database>.lock`` while it runs; a second one
started on the same file refuses to start, naming the first one's pid. The kernel
releases the lock when the holder exits, however it exits, so a restart after a crash
needs nothing cleaned up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from workspace.errors import ConfigError


class Held:
    """The lock on one SQLite store, held until ``release``."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def lock_path(url: str) -> Path | None:
    """Where the lock of the store at ``url`` lives (None: not a SQLite file)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database + ".lock")


def hold(url: str) -> Held | None:
    """Take the store at ``url`` for this process, or ConfigError if another has it.
    None for a store that is not a SQLite file (PostgreSQL takes any number)."""
    path = lock_path(url)
    if path is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"the SQLite store {path.with_suffix('')} is in use by another workspace-service "
            f"(pid {holder}); one service process per SQLite store (several replicas need "
            "PostgreSQL: database_url)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Held(fd, path)
