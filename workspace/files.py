"""Files only their owner may read (0600), whatever mode an older one was left with:
configs (a ``database_url`` may carry a password), keys, logs and records that name
users, workspaces and addresses; and files anyone may read but only their owner write
(0644: certificates, CRLs), whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


def private_fd(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open(path, flags | O_CREAT)`` with the file made 0600 (or ``mode``), also if
    it existed, whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    os.fchmod(fd, mode)
    return fd


def open_private(path: Path) -> TextIO:
    """``path`` opened for writing, created if missing, its contents kept (a lock file)."""
    return os.fdopen(private_fd(path, os.O_WRONLY), "w")


def write_private(path: Path, data: str | bytes, *, sync: bool = False) -> None:
    """``data`` into ``path`` at once (through ``.<name>.tmp`` beside it), 0600 from the
    start; ``sync``: on disk before it replaces ``path``. A write that fails (a full
    disk) leaves ``path`` as it was and no ``.tmp`` behind."""
    _write(path, data, 0o600, sync)


def write_public(path: Path, data: str | bytes, *, sync: bool = False) -> None:
    """As ``write_private``, 0644: for what anyone may read and only its owner change (a
    certificate, a CRL), whatever the umask (one of 000 made them world-writable)."""
    _write(path, data, 0o644, sync)


def _write(path: Path, data: str | bytes, mode: int, sync: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with os.fdopen(private_fd(tmp, os.O_WRONLY | os.O_TRUNC, mode), "wb") as f:
            f.write(raw)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
