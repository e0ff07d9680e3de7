"""Files only their owner may read (0600), whatever mode an older one was left with:
configs (a ``database_url`` may carry a password), keys, logs and records that name
users, workspaces and addresses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


def private_fd(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with the file made 0600 (also if it existed)."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def open_private(path: Path) -> TextIO:
    """``path`` opened for writing, created if missing, its contents kept (a lock file)."""
    return os.fdopen(private_fd(path, os.O_WRONLY), "w")


def write_private(path: Path, data: str | bytes, *, sync: bool = False) -> None:
    """``data`` into ``path`` at once (through ``.<name>.tmp`` beside it), 0600 from the
    start; ``sync``: on disk before it replaces ``path``. A write that fails (a full
    disk) leaves ``path`` as it was and no ``.tmp`` behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with os.fdopen(private_fd(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            f.write(raw)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
