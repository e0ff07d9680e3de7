"""Content-addressed cache: <root>/blobs/sha256/<hex>, never modified once written.

A blob is streamed into <root>/partial/<hex>, hashed while it is written, checked
against its digest and renamed into place atomically. Concurrent requests for one
digest share one transfer; an interrupted transfer resumes from the partial file's
length. A blob may come from several sources (peer agents, then the service): a
source that fails mid-way is followed by the next one at the same offset, one that
sends wrong bytes is caught by the hash and the next one starts again from zero. A
full filesystem (ENOSPC) removes the partial at once and fails the fetch
(ResourceExhausted): no other source is tried.

Budget and LRU: the cache holds at most ``budget_bytes`` (0: no limit), counting
complete blobs and the transfers in progress. Before a transfer grows past it, the
least recently used blobs that no workspace pins are deleted; when pinned blobs
alone fill the budget the fetch fails with ResourceExhausted.

Integrity at every use (``images.integrity``): when a blob hashes to its digest (at
download, or a re-hash), its stat is recorded in ``<root>/verified/<hex>``. Every use
(a hit, a peer served) compares the blob's stat with that record and re-hashes only
when it changed; a blob that no longer matches is moved to ``<root>/quarantine/``
and the use fails with ``BlobCorrupted`` (the next ``ensure`` fetches it again). The
last-use time of a blob is its record file's mtime (set with utime on every use, so
it survives restarts); the cache itself never touches the blob file. Its ctime moves
when someone writes to it, and also when its owner or mode changes: libvirt's
``dynamic_ownership`` hands a guest's kernel and initrd to the QEMU user while the guest
runs (and back), so those two are re-hashed at the next start. That is on purpose: while
QEMU owns the file it could have written to it, and the re-hash is what finds it.

Restart: the directory is re-listed (``_reindex``) and nothing is read: a blob whose
record still matches its stat is used at once; one without a record (cached by an
older agent) is re-hashed at its first use.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.cache.pins import Pins
from images import integrity
from images.digest import DigestError, Hasher, from_hex, hex_of, is_valid
from workspace.domain.model import CacheRecord
from workspace.errors import ImageError, ResourceExhausted, Unavailable, WorkspaceError

log = logging.getLogger("agent.cache")

CHUNK_BYTES = 1024 * 1024
# Partial transfers untouched for this long are deleted at start (nobody will resume them).
PARTIAL_MAX_AGE_S = 24 * 3600
# A write that failed with these: the cache's filesystem is full (the partial is removed).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Quarantined (corrupted) blobs are kept this long for inspection, and within
# ``quarantine_max_bytes`` (the newest always): pruned at start and at each quarantine.
QUARANTINE_MAX_AGE_S = integrity.QUARANTINE_MAX_AGE_S

# fetch(digest, offset) → chunks from that offset on
Fetcher = Callable[[str, int], Iterable[bytes]]


@dataclass(frozen=True)
class Source:
    """Where a blob can come from: a peer agent or the service."""

    name: str
    fetch: Fetcher


@dataclass
class _Entry:
    size_bytes: int
    last_used: float


class BlobCorrupted(ImageError):
    """A cached blob no longer matches its digest: moved to quarantine, not used."""

    def __init__(self, message: str, digest: str, moved_to: Path | None) -> None:
        super().__init__(message)
        self.digest = digest
        self.moved_to = moved_to


class _BadData(ImageError):
    """A source sent bytes that are not the blob (partial deleted)."""

    def __init__(self, message: str, resumed: bool) -> None:
        super().__init__(message)
        self.resumed = resumed


def _hex(digest: str) -> str:
    try:
        return hex_of(digest)
    except DigestError as exc:
        raise ImageError(f"{digest!r} is not a sha256 digest") from exc


def fmt_bytes(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


class BlobCache:
    def __init__(
        self,
        root: Path,
        budget_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        quarantine_max_bytes: int = integrity.QUARANTINE_MAX_BYTES,
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.quarantine_max_bytes = quarantine_max_bytes
        self.clock = clock  # wall clock for last-use times (tests pass their own)
        self.blob_dir = root / "blobs" / "sha256"
        self.partial_dir = root / "partial"
        self.quarantine_dir = root / "quarantine"
        # QEMU (an unprivileged user) opens cached bases, kernels and initrds through
        # root/blobs/sha256: those directories are traverse-only for others (0711), the
        # files 0600 (libvirt's dynamic ownership chowns the ones a domain uses). Partial
        # downloads and quarantined blobs stay private (0700, their files 0600; made so
        # also where an earlier version left them 0755 and 0644).
        for d, mode in ((root, 0o711), (root / "blobs", 0o711), (self.blob_dir, 0o711)):
            d.mkdir(parents=True, exist_ok=True, mode=mode)
            os.chmod(d, mode)
        integrity.private_dir(self.partial_dir)
        integrity.private_dir(self.quarantine_dir)
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, _Entry] = {}  # hex → entry
        # hex → the stat of the blob when it last hashed to its digest (persistent).
        self.stamps = integrity.Stamps(root / "verified")
        self._reserved: dict[str, int] = {}  # hex → bytes of a transfer in progress
        self.pins = Pins(root / "pins")
        # Bytes received per source kind ("peer", "service", …): for tests and benchmarks.
        self.received_bytes: dict[str, int] = {}
        # Lookups answered from the cache / that needed a fetch (agent/metrics.py).
        self.hits = 0
        self.misses = 0
        self._reindex()

    # -- index -------------------------------------------------------------------------

    def _reindex(self) -> None:
        for path in self.blob_dir.iterdir():
            name = path.name
            if not is_valid(f"sha256:{name}"):
                log.warning("removing stray file %s from the blob cache", path)
                path.unlink(missing_ok=True)
                continue
            st = path.stat()
            if st.st_mode & 0o077:  # cached by an agent that wrote blobs 0644
                os.chmod(path, 0o600)
            self._entries[name] = _Entry(st.st_size, self._last_use(name, st.st_mtime))
        for name in self.stamps.names():
            if name not in self._entries:
                self.stamps.drop(name)  # its blob is gone (evicted before a crash)
        now = self.clock()
        for path in self.partial_dir.iterdir():
            if now - path.stat().st_mtime > PARTIAL_MAX_AGE_S:
                log.info("removing stale partial transfer %s", path)
                path.unlink(missing_ok=True)
        self._prune_quarantine()
        used = sum(e.size_bytes for e in self._entries.values())
        budget = fmt_bytes(self.budget_bytes) if self.budget_bytes else "unlimited"
        log.info(
            "blob cache %s: %d blob(s), %s (budget %s, %d pinned); each is checked against "
            "its verified stat at every use",
            self.root,
            len(self._entries),
            fmt_bytes(used),
            budget,
            len(self.pins.pinned() & {from_hex(h) for h in self._entries}),
        )

    def path(self, digest: str) -> Path:
        return self.blob_dir / _hex(digest)

    def has(self, digest: str) -> bool:
        with self._lock:
            return _hex(digest) in self._entries

    def digests(self) -> list[str]:
        with self._lock:
            return sorted(from_hex(h) for h in self._entries)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values())

    def entries(self) -> list[CacheRecord]:
        with self._lock:
            pinned = self.pins.pinned()
            return [
                CacheRecord(from_hex(h), e.size_bytes, e.last_used, from_hex(h) in pinned)
                for h, e in sorted(self._entries.items())
            ]

    def _last_use(self, hx: str, blob_mtime: float) -> float:
        """The last use of a blob: its record's mtime (the blob's own, if it has none)."""
        try:
            return self.stamps.path(hx).stat().st_mtime
        except FileNotFoundError:
            return blob_mtime

    def _touch(self, hx: str) -> None:
        now = self.clock()
        entry = self._entries.get(hx)
        if entry is not None:
            entry.last_used = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.stamps.path(hx), (now, now))

    # -- pins --------------------------------------------------------------------------

    def pin(self, owner: str, digests: Iterable[str]) -> None:
        """Mark ``digests`` in use by ``owner`` (a workspace id): never evicted while so."""
        wanted = frozenset(d for d in digests if d)
        for d in wanted:
            _hex(d)
        with self._lock:
            self.pins.set(owner, wanted)

    def unpin(self, owner: str) -> None:
        with self._lock:
            released = self.pins.drop(owner)
            still = self.pins.pinned()
            for d in released - still:
                self._touch(_hex(d))  # last used: when its last workspace went away

    def pin_owners(self) -> set[str]:
        with self._lock:
            return self.pins.owners()

    # -- getting a blob ----------------------------------------------------------------

    def _digest_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(digest, threading.Lock())

    def ensure(self, digest: str, sources: Fetcher | Sequence[Source], size_bytes: int = 0) -> Path:
        """The cached blob's path, fetching it first if needed (one transfer per digest).

        ``sources`` are tried in order; ``size_bytes`` (0: unknown) is the blob's size
        as the service knows it: room is made for it up front, and a source that sends
        more is treated as a bad source.
        """
        hx = _hex(digest)
        final = self.blob_dir / hx
        if callable(sources):
            sources = [Source("fetcher", sources)]
        with self._lock:
            present = hx in self._entries
        if present and self._unchanged(hx):  # the O(1) hit: one stat, no lock held long
            with self._lock:
                self._touch(hx)
                self.hits += 1
            return final
        with self._digest_lock(digest):
            if self._check(hx) is not None:  # present (maybe fetched meanwhile) and intact
                with self._lock:
                    self._touch(hx)
                    self.hits += 1
                return final
            with self._lock:
                self.misses += 1
            self._fetch(digest, hx, list(sources), size_bytes)
            return final

    def check(self, digest: str) -> integrity.Check | None:
        """Check a cached blob before a use: None when it is not cached; else whether it
        had to be re-hashed (its stat changed since it was verified). A blob that does
        not match its digest is quarantined and BlobCorrupted raised."""
        hx = _hex(digest)
        if not self.has(digest):
            return None
        if self._unchanged(hx):
            return integrity.Check(True, False)
        with self._digest_lock(digest):
            return self._check(hx)

    def verify(self, digest: str) -> bool:
        """Whether the blob is cached and intact (False, and quarantined, if corrupted)."""
        try:
            return self.check(digest) is not None
        except BlobCorrupted:
            return False

    def _unchanged(self, hx: str) -> bool:
        """The blob's stat equals its record: it is what was hashed."""
        try:
            st = os.stat(self.blob_dir / hx)
        except FileNotFoundError:
            return False
        return self.stamps.get(hx) == integrity.Stamp.of(st)

    def _check(self, hx: str) -> integrity.Check | None:
        """None if the entry is absent; its check (re-hashing if its stat changed) if
        present; BlobCorrupted if it is not intact. Called with the digest's lock held."""
        with self._lock:
            present = hx in self._entries
        if not present:
            return None
        final = self.blob_dir / hx
        try:
            got = integrity.check(final, hx, self.stamps)
        except FileNotFoundError:
            log.warning("cached blob sha256:%s disappeared from %s", hx, final)
            self._forget(hx)
            return None
        digest = from_hex(hx)
        if got.intact:
            if got.rehashed:
                log.info("cached %s", got.describe(digest))
            return got
        moved = integrity.quarantine(final, hx, self.quarantine_dir)
        self._forget(hx)
        self._prune_quarantine()
        message = f"cached {got.describe(digest)}; moved to {moved}, it will be fetched again"
        log.error("%s", message)
        raise BlobCorrupted(message, digest, moved)

    def _prune_quarantine(self) -> None:
        """Quarantined blobs past a week, or beyond ``quarantine_max_bytes`` (the oldest
        first; the newest is kept): a node that keeps finding bad blobs does not fill
        its disk with them."""
        for path in integrity.prune_quarantine(
            self.quarantine_dir, self.quarantine_max_bytes, self.clock()
        ):
            log.info(
                "removed quarantined blob %s (kept a week, and the newest within "
                "quarantine_max_bytes = %d)",
                path,
                self.quarantine_max_bytes,
            )

    def _forget(self, hx: str) -> None:
        with self._lock:
            self._entries.pop(hx, None)
        self.stamps.drop(hx)

    def _fetch(self, digest: str, hx: str, sources: list[Source], size_bytes: int) -> None:
        errors: list[str] = []
        all_bad_data = True
        try:
            for src in sources:
                retried = False
                while True:
                    try:
                        self._transfer(digest, hx, src, size_bytes)
                        return
                    except _BadData as exc:
                        if exc.resumed and not retried:
                            # The partial may have held the bad bytes: once more from zero.
                            log.warning("%s; fetching it again from zero", exc.message)
                            retried = True
                            continue
                        log.warning("%s", exc.message)
                        errors.append(exc.message)
                    except ResourceExhausted:
                        raise
                    except Exception as exc:
                        msg = exc.message if isinstance(exc, WorkspaceError) else repr(exc)
                        log.warning("fetching %s from %s failed: %s", digest, src.name, msg)
                        errors.append(f"{src.name}: {msg}")
                        all_bad_data = False
                    break
        finally:
            with self._lock:
                self._reserved.pop(hx, None)
        if not sources:
            raise Unavailable(f"blob {digest}: no source to fetch it from")
        text = f"cannot fetch blob {digest}: " + "; ".join(errors)
        raise ImageError(text) if all_bad_data else Unavailable(text)

    def _transfer(self, digest: str, hx: str, src: Source, size_bytes: int) -> None:
        partial = self.partial_dir / hx
        h = Hasher()
        offset = 0
        if partial.exists():
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
                    offset += len(chunk)
            if offset:
                log.info("resuming transfer of %s from %s at byte %d", digest, src.name, offset)
        resumed = offset > 0
        received = 0
        stream: Iterator[bytes] = iter(())
        try:
            reserved = self._reserve(digest, hx, max(size_bytes, offset))
            stream = iter(src.fetch(digest, offset))
            fd = os.open(partial, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "ab") as f:
                for chunk in stream:
                    offset += len(chunk)
                    received += len(chunk)
                    if size_bytes and offset > size_bytes:
                        f.close()
                        partial.unlink(missing_ok=True)
                        raise _BadData(
                            f"blob {digest}: {src.name} sent more than its {size_bytes} bytes; "
                            "discarded",
                            resumed,
                        )
                    if offset > reserved:
                        reserved = self._reserve(digest, hx, offset)
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except ResourceExhausted:
            partial.unlink(missing_ok=True)  # it cannot be completed: give the space back
            raise
        except OSError as exc:
            if exc.errno not in _FULL_ERRNOS:
                with contextlib.suppress(FileNotFoundError):
                    if partial.stat().st_size == 0:
                        partial.unlink()
                raise
            # The filesystem is full: a partial kept for a resume would keep it full (and
            # every other source fails the same way). Give the space back now.
            partial.unlink(missing_ok=True)
            why = exc.strerror or os.strerror(exc.errno or 0)
            raise ResourceExhausted(
                f"blob {digest}: the node's cache filesystem is full ({why}) at "
                f"{self.partial_dir}; the partial transfer was removed"
            ) from exc
        except Exception:
            with contextlib.suppress(FileNotFoundError):
                if partial.stat().st_size == 0:
                    partial.unlink()  # nothing arrived: leave no empty partial behind
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # ends the stream (a gRPC call) when we stop reading early
            if received:
                kind = src.name.split(" ", 1)[0]
                with self._lock:
                    self.received_bytes[kind] = self.received_bytes.get(kind, 0) + received
        got = h.digest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise _BadData(
                f"blob {digest}: the bytes from {src.name} hash to {got}; discarded", resumed
            )
        os.chmod(partial, 0o600)
        final = self.blob_dir / hx
        os.replace(partial, final)
        integrity.record(final, hx, self.stamps)  # what was just hashed
        now = self.clock()
        with self._lock:
            self._entries[hx] = _Entry(offset, now)
            self._touch(hx)
            self._reserved.pop(hx, None)
        log.info("cached blob %s (%d bytes) from %s", digest, offset, src.name)

    # -- budget ------------------------------------------------------------------------

    def _reserve(self, digest: str, hx: str, size_bytes: int) -> int:
        """Make room for a transfer of ``size_bytes``, evicting LRU unpinned blobs."""
        with self._lock:
            self._reserved[hx] = max(self._reserved.get(hx, 0), size_bytes)
            if not self.budget_bytes:
                return self._reserved[hx]
            used = sum(e.size_bytes for e in self._entries.values())
            used += sum(self._reserved.values())
            if used <= self.budget_bytes:
                return self._reserved[hx]
            pinned = {_hex(d) for d in self.pins.pinned()}
            victims = sorted((e.last_used, h) for h, e in self._entries.items() if h not in pinned)
            for _, victim in victims:
                if used <= self.budget_bytes:
                    break
                size = self._entries.pop(victim).size_bytes
                (self.blob_dir / victim).unlink(missing_ok=True)
                self.stamps.drop(victim)
                used -= size
                log.info("evicted blob sha256:%s (%d bytes, least recently used)", victim, size)
            if used <= self.budget_bytes:
                return self._reserved[hx]
            need = self._reserved.pop(hx)
            pinned_bytes = sum(e.size_bytes for h, e in self._entries.items() if h in pinned)
        raise ResourceExhausted(
            f"blob {digest} ({need} bytes) does not fit in the node's blob cache: its budget "
            f"of {self.budget_bytes} bytes (cache_budget_bytes) is taken by {pinned_bytes} "
            "bytes of blobs pinned by workspaces on the node and by transfers in progress; "
            "raise cache_budget_bytes or remove workspaces from the node"
        )
