"""The service's content-addressed blob repository: <blob_dir>/sha256/<hex>.

Integrity at rest (``images.integrity``): when a blob is stored, the stat of its file
is recorded in ``<blob_dir>/verified/<hex>``; before a blob is served (``read``) or
inspected for an import (``checked_size``), its stat is compared with that record and
it is re-hashed only when it changed. A blob that no longer matches its digest is
moved to ``<blob_dir>/bad/`` (logged at ERROR; ``bad`` lists them) and the use
refused with FailedPrecondition; uploading the same content again (``ws image push``
sends it, since the repository no longer has it) puts it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from images import digest as digests
from images import integrity
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("workspace.store.blobs")

CHUNK_BYTES = 1024 * 1024


def check_digest(digest: str) -> str:
    """``digest`` unchanged, or InvalidArgument (the caller gave something else)."""
    try:
        return digests.check(digest)
    except digests.DigestError as exc:
        raise InvalidArgument(str(exc)) from None


class BlobRepository:
    def __init__(self, root: Path, bad_max_bytes: int = integrity.QUARANTINE_MAX_BYTES) -> None:
        self.root = root
        # ``bad/`` keeps a week and at most this many bytes (``bad_blobs_max_bytes``).
        self.bad_max_bytes = bad_max_bytes
        # Only the service reads blobs (it serves them): 0700 directories, 0600 files,
        # also those earlier versions left 0755/0644 (blobs, and bad/, the blobs found
        # bad and kept aside).
        for d in (root, root / "sha256", root / "tmp"):
            integrity.private_dir(d)
        self.bad_dir = integrity.private_dir(root / "bad")
        self.prune_bad()
        self.trash_dir = integrity.private_dir(root / "trash")
        self.stamps = integrity.Stamps(root / "verified")
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # hex → held while re-hashing it
        # Called with (digest, reason) when a blob is found bad (the catalog audits it).
        self.on_bad: list[Callable[[str, str], None]] = []

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digests.hex_of(check_digest(digest))

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def receive(
        self, chunks: Iterable[bytes], max_bytes: int, expected: str = "", said_bytes: int = 0
    ) -> tuple[Path, str, int]:
        """Write a stream to a temp file, hashing while writing: (temp path, digest, size).

        The caller makes it visible with ``commit`` (or removes the temp file on error).
        ``expected``: the digest the sender said ("": none); bytes that hash to another
        (an upload cut short, a file changed since it was hashed) are InvalidArgument,
        and the temp file goes. ``said_bytes``: the byte count the sender said (0: none); a
        stream that ends at another (a client that gave up, its cancel seen by gRPC's
        server as the stream's end) is InvalidArgument likewise.
        """
        if expected:
            check_digest(expected)
        if said_bytes < 0:
            raise InvalidArgument(
                f"the upload said it has {said_bytes} bytes: a size is 0 or more; nothing stored"
            )
        h = digests.Hasher()
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    if h.size_bytes + len(chunk) > max_bytes:
                        raise InvalidArgument(f"blob exceeds the limit of {max_bytes} bytes")
                    if said_bytes and h.size_bytes + len(chunk) > said_bytes:
                        raise InvalidArgument(
                            f"the upload sent more than the {said_bytes} bytes it said; nothing "
                            "stored (a file that grew while it was sent): send it again"
                        )
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if said_bytes and h.size_bytes != said_bytes:
                raise InvalidArgument(
                    f"the upload ended after {h.size_bytes} of the {said_bytes} bytes it said; "
                    "nothing stored (an upload cut short, or a file that changed while it "
                    "was sent): send it again"
                )
            if expected and h.digest() != expected:
                raise InvalidArgument(
                    f"the {h.size_bytes} bytes uploaded hash to {h.digest()}, not {expected} "
                    "as the upload said; nothing stored (an upload cut short, or a file "
                    "that changed after it was hashed): send it again"
                )
            os.chmod(tmp, 0o600)
            return Path(tmp), h.digest(), h.size_bytes
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.filename is None:  # a write that failed (ENOSPC): say where
                exc.filename = tmp
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def commit(self, tmp: Path, digest: str) -> None:
        """Rename a received temp file to its content address (atomic), and record what
        was hashed."""
        path = self.path(digest)
        os.replace(tmp, path)
        integrity.record(path, digests.hex_of(digest), self.stamps)

    def put(self, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int]:
        """Store a stream; hash while writing, rename atomically. Returns (digest, size)."""
        tmp, digest, size = self.receive(chunks, max_bytes)
        try:
            self.commit(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest, size

    @contextlib.contextmanager
    def discarding(self) -> Iterator[Discard]:
        """Blob files to delete with a writing transaction: ``take`` them inside it (they
        are moved aside at once, under the store's lock, so no replica's upload of the
        same content can land between the rows' delete and the files'); when the block
        ends they are deleted, or put back if it raised (the rows stayed)."""
        bin = Discard(self)
        try:
            yield bin
        except BaseException:
            bin.restore()
            raise
        bin.purge()

    def has_trash(self) -> bool:
        """Whether files wait in ``trash/`` (a transaction's, or a dead process's)."""
        with os.scandir(self.trash_dir) as it:
            return next(it, None) is not None

    def sweep_trash(self, kept: Callable[[str], bool]) -> None:
        """Files a process left aside when it died before deleting or restoring them
        (call under the store's lock): back in place if ``kept(digest)`` (their rows
        are there), else deleted."""
        for p in self.trash_dir.iterdir():
            digest = f"sha256:{p.name.partition('.')[0]}"
            try:
                back = kept(check_digest(digest)) and not self.has(digest)
            except InvalidArgument:
                back = False
            with contextlib.suppress(FileNotFoundError):
                if back:
                    os.replace(p, self.path(digest))
                    log.warning("blob %s put back from the trash (its delete never ended)", digest)
                else:
                    p.unlink()

    def check(self, digest: str) -> integrity.Check:
        """Is the stored blob still what was hashed? One stat when it is unchanged since
        it was verified, else a re-hash. NotFound if absent; FailedPrecondition (the blob
        moved to ``bad/``) if it no longer matches its digest."""
        path = self.path(digest)
        hx = digests.hex_of(digest)
        with self._lock:
            lock = self._locks.setdefault(hx, threading.Lock())
        with lock:  # N nodes asking for a changed blob: one re-hash
            try:
                got = integrity.check(path, hx, self.stamps)
            except FileNotFoundError:
                raise NotFound(self._missing(digest)) from None
            if got.intact:
                if got.rehashed:
                    log.info("repository %s", got.describe(digest))
                return got
            moved = integrity.quarantine(path, hx, self.bad_dir)
        self.prune_bad()
        message = (
            f"repository {got.describe(digest)}; moved to {moved}; refused: push the image "
            "again to restore it"
        )
        log.error("%s", message)
        for hook in self.on_bad:
            try:
                hook(digest, message)
            except Exception:
                log.exception("cannot record that blob %s is bad", digest)
        raise FailedPrecondition(message)

    def prune_bad(self, now: float | None = None) -> list[Path]:
        """Delete the blobs in ``bad/`` past a week, or beyond ``bad_max_bytes`` (the
        oldest first; the newest is kept): a repository that keeps finding bad blobs
        does not fill the service's disk with them. Returns what went."""
        gone = integrity.prune_quarantine(self.bad_dir, self.bad_max_bytes, now)
        for path in gone:
            log.info(
                "removed bad blob %s (kept a week, and the newest within bad_blobs_max_bytes = %d)",
                path,
                self.bad_max_bytes,
            )
        return gone

    def _missing(self, digest: str) -> str:
        hx = digests.hex_of(digest)
        bad = sorted(self.bad_dir.glob(f"{hx}.*")) if self.bad_dir.is_dir() else []
        if bad:
            return (
                f"blob {digest} was taken out of the repository: it no longer matched its "
                f"digest (moved to {bad[-1]}); push the image again to restore it"
            )
        return f"blob {digest} is not in the repository"

    def bad(self) -> list[Path]:
        """Blobs moved aside because they no longer matched their digest (newest last)."""
        if not self.bad_dir.is_dir():
            return []
        return sorted(self.bad_dir.iterdir(), key=lambda p: p.stat().st_mtime)

    def read(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset``, after ``check`` (raised at the first chunk)."""
        self.check(digest)
        path = self.path(digest)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(self._missing(digest)) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if not 0 <= offset <= size:
                raise InvalidArgument(
                    f"offset {offset} is outside blob {digest} ({size} bytes): give 0 to {size}"
                )
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


class Discard:
    """The blob files one transaction takes out of the repository (``discarding``)."""

    def __init__(self, repo: BlobRepository) -> None:
        self._repo = repo
        self._aside: list[tuple[Path, Path]] = []  # (its place, where it waits)
        self.freed = 0  # bytes

    def take(self, digests: Iterable[str]) -> None:
        """Move these blobs' files aside now (those absent are skipped)."""
        for d in digests:
            path = self._repo.path(d)
            hx = path.name  # the digest's hex
            aside = self._repo.trash_dir / f"{hx}.{uuid.uuid4().hex[:8]}"
            try:
                size = path.stat().st_size
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            self._repo.stamps.drop(hx)
            self._aside.append((path, aside))
            self.freed += size

    def purge(self) -> None:
        for _, aside in self._aside:
            aside.unlink(missing_ok=True)
        self._aside = []

    def restore(self) -> None:
        """Put the files back (one uploaded meanwhile at the same place wins: the same
        content); they are hashed again before their next use."""
        for path, aside in self._aside:
            if path.exists():
                aside.unlink(missing_ok=True)
            else:
                os.replace(aside, path)
        self._aside = []
        self.freed = 0
