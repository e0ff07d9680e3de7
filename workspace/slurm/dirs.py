"""The directories ws-slurm makes for its own files, when missing: every one with the
mode asked, not only the last. (``Path.mkdir(parents=True)`` makes the ones above it
0777 less the umask, 0755: a lock file's ``/srv/ws/state/`` had ``/srv/ws`` readable
by every local user.) The lock file's are 0700, SlurmUser's alone; the log file's 0750,
for its group to reach the 0640 log (README, "Slurm")."""

from __future__ import annotations

from pathlib import Path

LOCK_DIR_MODE = 0o700
LOG_DIR_MODE = 0o750


def make_dirs(path: Path, mode: int) -> None:
    """``path`` and each missing directory above it made with ``mode`` (less the
    umask); FileExistsError for a file where one goes."""
    try:
        path.mkdir(mode=mode, exist_ok=True)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dirs(path.parent, mode)
        path.mkdir(mode=mode, exist_ok=True)
