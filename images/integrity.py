"""Integrity at rest at O(1) cost: a blob is re-hashed only when its file changed.

When a content-addressed blob hashes to its digest, the file's stat at that moment —
inode, size, mtime and ctime in nanoseconds (a ``Stamp``) — is recorded in a sidecar
file ``<stamp_dir>/<hex>`` (written atomically; it survives restarts). At every later
use the current stat is compared with the record: equal, the blob is what was hashed
(one ``stat``); different, it is hashed again. Any write through the filesystem moves
mtime and ctime, and ctime cannot be set back from user space, so a flipped byte is
caught at the next use. What it does not catch: writes below the filesystem (to the
block device, bit rot) and someone who rewrites the sidecar too; see
docs/design/cache.md. fs-verity would cover those, where the kernel has it.

Used by the node's cache (``agent/cache``) and the service's repository
(``workspace/store/blobs.py``). This module imports neither ``workspace`` nor ``agent``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from images.digest import from_hex, of_file


def private_dir(d: Path) -> Path:
    """``d`` made (if need be) 0700 with its files 0600: the owner's alone, also when an
    earlier version left the directory 0755 or its files 0644."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    for p in d.iterdir():
        with contextlib.suppress(FileNotFoundError):
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(p, 0o600)
    return d


def write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (created 0600, or truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class Stamp:
    """What a blob's file looked like when it last hashed to its digest."""

    ino: int
    size_bytes: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def differences(self, other: Stamp) -> list[str]:
        """The fields that differ from ``other`` (for messages)."""
        return [k for k, v in asdict(self).items() if asdict(other)[k] != v]


@dataclass(frozen=True)
class Check:
    """The outcome of checking one blob: ``intact`` or not; ``rehashed`` when its stat
    had changed (or was never recorded) and it was read again; ``changed`` names the
    stat fields that had moved; ``got`` is what a re-hash found."""

    intact: bool
    rehashed: bool
    changed: tuple[str, ...] = ()
    got: str = ""

    def describe(self, digest: str) -> str:
        if self.intact:
            if not self.rehashed:
                return f"blob {digest} unchanged since it was verified"
            why = f"its {', '.join(self.changed)} changed" if self.changed else "never verified"
            return f"blob {digest} re-hashed ({why}): intact"
        return (
            f"blob {digest} does not match its digest (modified on disk: it hashes to {self.got})"
        )


class Stamps:
    """The sidecar records of one blob directory, also kept in memory (this process is
    their only writer). A record that is missing or unreadable means "not verified"."""

    def __init__(self, stamp_dir: Path) -> None:
        self.dir = private_dir(stamp_dir)  # its owner's alone (QEMU never reads it)
        for tmp in stamp_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)  # a record half-written when a process died
        self._lock = threading.Lock()
        self._memo: dict[str, Stamp | None] = {}

    def path(self, hx: str) -> Path:
        return self.dir / hx

    def get(self, hx: str) -> Stamp | None:
        with self._lock:
            if hx in self._memo:
                return self._memo[hx]
        stamp = self._read(hx)
        with self._lock:
            self._memo.setdefault(hx, stamp)
            return self._memo[hx]

    def _read(self, hx: str) -> Stamp | None:
        try:
            raw = json.loads(self.path(hx).read_text())
            return Stamp(
                int(raw["ino"]), int(raw["size_bytes"]), int(raw["mtime_ns"]), int(raw["ctime_ns"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, hx: str, stamp: Stamp) -> None:
        """Record ``stamp`` for ``hx`` atomically (temp file + rename)."""
        tmp = self.dir / f".{hx}.{threading.get_ident()}.tmp"
        write_private(tmp, json.dumps(asdict(stamp), sort_keys=True).encode())
        os.replace(tmp, self.path(hx))
        with self._lock:
            self._memo[hx] = stamp

    def drop(self, hx: str) -> None:
        with self._lock:
            self._memo[hx] = None
        self.path(hx).unlink(missing_ok=True)

    def names(self) -> list[str]:
        """The hex names that have a record file (strays included)."""
        return [p.name for p in self.dir.iterdir() if not p.name.startswith(".")]


def check(path: Path, hx: str, stamps: Stamps) -> Check:
    """Is the blob at ``path`` (named by its digest's ``hx``) intact? One ``stat`` when it
    is unchanged since its record; else a re-hash, recorded when it matches.

    Raises FileNotFoundError when the file is gone. A mismatch drops the record; the
    caller decides what to do with the file (``quarantine``)."""
    stamp = Stamp.of(os.stat(path))
    recorded = stamps.get(hx)
    if recorded == stamp:
        return Check(True, False)
    changed = tuple(recorded.differences(stamp)) if recorded is not None else ()
    got = of_file(path)
    if got != from_hex(hx):
        stamps.drop(hx)
        return Check(False, True, changed, got)
    if Stamp.of(os.stat(path)) == stamp:  # not written to while we read it
        stamps.put(hx, stamp)
    return Check(True, True, changed, got)


def record(path: Path, hx: str, stamps: Stamps) -> None:
    """Record the stat of a blob the caller has just hashed (written, renamed in place)."""
    stamps.put(hx, Stamp.of(os.stat(path)))


# Quarantined blobs (a node's ``quarantine/``, the service's ``blobs/bad/``) are kept at
# most this long, and within a size bound their owner configures (``prune_quarantine``).
QUARANTINE_MAX_AGE_S = 7 * 24 * 3600
# That bound's default: ``quarantine_max_bytes`` (agent), ``bad_blobs_max_bytes`` (service).
QUARANTINE_MAX_BYTES = 4 * 1024**3


def prune_quarantine(
    quarantine_dir: Path,
    max_bytes: int,
    now: float | None = None,
    max_age_s: float = QUARANTINE_MAX_AGE_S,
) -> list[Path]:
    """Delete the quarantined blobs moved aside more than ``max_age_s`` ago, then the
    oldest until those left take at most ``max_bytes`` (0: no size bound); the newest is
    kept whatever its size (the evidence of the latest failure: it was moved, not
    copied, so keeping it costs no more than before). Returns what was deleted, oldest
    first. A blob's age is when it was quarantined (its name's suffix, ``quarantine``),
    not its mtime, which is the blob's own."""
    if not quarantine_dir.is_dir():
        return []
    now = time.time() if now is None else now
    found: list[tuple[float, Path, int]] = []
    for p in quarantine_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            _, _, ns = p.name.rpartition(".")
            at = int(ns) / 1e9 if ns.isdigit() else st.st_mtime
            found.append((at, p, st.st_size))
    found.sort(key=lambda f: (f[0], f[1].name), reverse=True)  # newest first
    kept_bytes, full = 0, False
    gone: list[Path] = []
    for i, (at, p, size) in enumerate(found):
        kept_bytes += size
        full = full or (i > 0 and max_bytes > 0 and kept_bytes > max_bytes)
        if full or now - at > max_age_s:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone[::-1]


def quarantine(path: Path, hx: str, quarantine_dir: Path) -> Path | None:
    """Move a bad blob aside (kept for inspection, out of use): its new path, or None
    when it was already gone. The directory is its owner's alone (0700)."""
    quarantine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(quarantine_dir, 0o700)
    dest = quarantine_dir / f"{hx}.{time.time_ns()}"
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, dest)
        return dest
    return None
