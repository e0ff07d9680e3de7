"""The service's content-addressed blob repository: <blob_dir>/sha256/<hex>."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from images import digest as digests
from workspace.errors import InvalidArgument, NotFound

CHUNK_BYTES = 1024 * 1024


def check_digest(digest: str) -> str:
    """``digest`` unchanged, or InvalidArgument (the caller gave something else)."""
    try:
        return digests.check(digest)
    except digests.DigestError as exc:
        raise InvalidArgument(str(exc)) from None


class BlobRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Only the service reads blobs (it serves them): 0700 directories, 0600 files.
        for d in (root, root / "sha256", root / "tmp"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        for p in (root / "sha256").iterdir():  # stored 0644 by earlier versions
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digests.hex_of(check_digest(digest))

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def receive(self, chunks: Iterable[bytes], max_bytes: int) -> tuple[Path, str, int]:
        """Write a stream to a temp file, hashing while writing: (temp path, digest, size).

        The caller makes it visible with ``commit`` (or removes the temp file on error).
        """
        h = digests.Hasher()
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    if h.size_bytes + len(chunk) > max_bytes:
                        raise InvalidArgument(f"blob exceeds the limit of {max_bytes} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            return Path(tmp), h.digest(), h.size_bytes
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def commit(self, tmp: Path, digest: str) -> None:
        """Rename a received temp file to its content address (atomic)."""
        os.replace(tmp, self.path(digest))

    def put(self, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int]:
        """Store a stream; hash while writing, rename atomically. Returns (digest, size)."""
        tmp, digest, size = self.receive(chunks, max_bytes)
        try:
            self.commit(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest, size

    def remove(self, digest: str) -> bool:
        """Delete a blob; True if it was there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def read(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        path = self.path(digest)
        if not path.exists():
            raise NotFound(f"blob {digest} is not in the repository")
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def mtime(self, digest: str) -> float:
        return self.path(digest).stat().st_mtime

    def digests(self) -> list[str]:
        """Every digest held (files named by a sha256 hex)."""
        out = []
        for p in (self.root / "sha256").iterdir():
            try:
                out.append(digests.check(f"sha256:{p.name}"))
            except digests.DigestError:
                continue
        return out

    def remove_stale_temp(self, before: float) -> int:
        """Delete temp files of uploads last written before ``before`` (left by a crash)."""
        n = 0
        for p in (self.root / "tmp").iterdir():
            try:
                if p.stat().st_mtime < before:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                continue
        return n
