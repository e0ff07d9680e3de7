"""Content-addressed cache: <root>/blobs/sha256/<hex>, never modified once written.

A blob is streamed into <root>/partial/<hex>, hashed while it is written, checked
against its digest and renamed into place atomically. Concurrent requests for
one digest share one transfer; an interrupted transfer resumes from the partial
file's length. The cache survives agent restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from workspace.errors import ImageError

log = logging.getLogger("agent.cache")

# fetch(digest, offset) → chunks from that offset on
Fetcher = Callable[[str, int], Iterable[bytes]]


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"{digest!r} is not a sha256 digest")
    return hexpart


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.partial_dir = root / "partial"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def path(self, digest: str) -> Path:
        return self.blob_dir / _hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blob_dir.iterdir())

    def _digest_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(digest, threading.Lock())

    def ensure(self, digest: str, fetch: Fetcher) -> Path:
        """The cached blob's path, fetching it first if needed (one transfer per digest)."""
        final = self.path(digest)
        if final.exists():
            return final
        with self._digest_lock(digest):
            if final.exists():  # another thread fetched it while we waited
                return final
            self._fetch(digest, final, fetch)
            return final

    def _fetch(self, digest: str, final: Path, fetch: Fetcher) -> None:
        partial = self.partial_dir / final.name
        h = hashlib.sha256()
        offset = 0
        if partial.exists():
            with open(partial, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    h.update(chunk)
                    offset += len(chunk)
            log.info("resuming transfer of %s at byte %d", digest, offset)
        with open(partial, "ab") as f:
            for chunk in fetch(digest, offset):
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        got = "sha256:" + h.hexdigest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise ImageError(f"blob {digest}: received content hashes to {got}; discarded")
        os.chmod(partial, 0o644)
        os.replace(partial, final)
        log.info("cached blob %s (%d bytes)", digest, final.stat().st_size)
