"""Integrity at rest: a blob's stat is recorded when it hashes to its digest, compared at
every use, and the blob re-hashed only when the stat changed — in the node's cache, a
peer serving from it, and the service's repository."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.audit import AuditSpool
from agent.cache import BlobCache, BlobCorrupted, Source
from agent.gate import TrustGate
from agent.peers import PeerChannels, PeerServer
from agent.staging import Staging
from images import integrity
from images.model import Mode, Partition
from workspace.config import TlsConfig
from workspace.domain.model import Desired, Disk, Order
from workspace.errors import FailedPrecondition, ImageError, NotFound, Unavailable
from workspace.store.blobs import BlobRepository

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
HEX = DIGEST.split(":")[1]


class Hashes:
    """Counts the re-hashes ``images.integrity`` does (every re-hash reads the file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = integrity.of_file

        def counting(path: Path) -> str:
            self.count += 1
            return real(path)

        monkeypatch.setattr(integrity, "of_file", counting)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Hashes:
    return Hashes(monkeypatch)


def served(data: bytes = DATA) -> Source:
    calls: list[int] = []

    def fetch(digest: str, offset: int) -> Iterator[bytes]:
        calls.append(offset)
        yield data[offset:]

    return Source("service", fetch)


def flip(path: Path, at: int = 1000) -> None:
    """Change one byte in place, through the filesystem (as a user or a bug would)."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


# -- the record and the comparison ------------------------------------------------------------


def test_unchanged_blob_is_not_read_again(tmp_path: Path, hashes: Hashes) -> None:
    path = tmp_path / HEX
    path.write_bytes(DATA)
    stamps = integrity.Stamps(tmp_path / "verified")
    integrity.record(path, HEX, stamps)
    assert integrity.check(path, HEX, stamps) == integrity.Check(True, False)
    assert hashes.count == 0


def test_touched_blob_is_rehashed_once_and_still_valid(tmp_path: Path, hashes: Hashes) -> None:
    path = tmp_path / HEX
    path.write_bytes(DATA)
    stamps = integrity.Stamps(tmp_path / "verified")
    integrity.record(path, HEX, stamps)
    touch(path)
    got = integrity.check(path, HEX, stamps)
    assert got.intact and got.rehashed and "mtime_ns" in got.changed
    assert integrity.check(path, HEX, stamps) == integrity.Check(True, False)  # re-recorded
    assert hashes.count == 1


def test_flipped_byte_is_caught_even_with_mtime_set_back(tmp_path: Path) -> None:
    path = tmp_path / HEX
    path.write_bytes(DATA)
    stamps = integrity.Stamps(tmp_path / "verified")
    integrity.record(path, HEX, stamps)
    before = path.stat()
    flip(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide it: ctime still moves
    got = integrity.check(path, HEX, stamps)
    assert not got.intact and got.changed == ("ctime_ns",)
    assert "does not match its digest (modified on disk" in got.describe(DIGEST)
    assert stamps.get(HEX) is None  # never trusted again without a new hash


def test_record_survives_a_restart_and_a_bad_record_means_rehash(
    tmp_path: Path, hashes: Hashes
) -> None:
    path = tmp_path / HEX
    path.write_bytes(DATA)
    integrity.record(path, HEX, integrity.Stamps(tmp_path / "verified"))
    reloaded = integrity.Stamps(tmp_path / "verified")  # a new process
    assert integrity.check(path, HEX, reloaded) == integrity.Check(True, False)
    assert hashes.count == 0
    (tmp_path / "verified" / HEX).write_text("{garbage")
    assert integrity.check(path, HEX, integrity.Stamps(tmp_path / "verified")).rehashed


# -- the node's cache ---------------------------------------------------------------------------


def test_cache_hit_after_restart_reads_nothing(tmp_path: Path, hashes: Hashes) -> None:
    cache = BlobCache(tmp_path / "cache")
    path = cache.ensure(DIGEST, [served()], len(DATA))
    mtime_ns = path.stat().st_mtime_ns
    restarted = BlobCache(tmp_path / "cache")
    assert restarted.check(DIGEST) == integrity.Check(True, False)
    assert restarted.ensure(DIGEST, [served(b"")]) == path
    assert hashes.count == 0
    assert path.stat().st_mtime_ns == mtime_ns  # a hit leaves the blob's file alone


def test_cache_touched_blob_is_rehashed_and_used(tmp_path: Path, hashes: Hashes) -> None:
    cache = BlobCache(tmp_path / "cache")
    path = cache.ensure(DIGEST, [served()], len(DATA))
    touch(path)
    got = cache.check(DIGEST)
    assert got is not None and got.intact and got.rehashed
    assert cache.ensure(DIGEST, [served(b"")]) == path  # no fetch
    assert hashes.count == 1


def test_cache_flipped_byte_is_quarantined_and_refused_then_fetched_again(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path / "cache")
    path = cache.ensure(DIGEST, [served()], len(DATA))
    flip(path)
    with pytest.raises(BlobCorrupted, match=f"cached blob {DIGEST} does not match its digest"):
        cache.ensure(DIGEST, [served()], len(DATA))
    assert not cache.has(DIGEST) and not path.exists()
    (moved,) = cache.quarantine_dir.iterdir()
    assert moved.read_bytes() != DATA and len(moved.read_bytes()) == len(DATA)  # kept aside
    assert cache.ensure(DIGEST, [served()], len(DATA)).read_bytes() == DATA
    assert cache.check(DIGEST) == integrity.Check(True, False)


def test_cache_blob_of_an_older_agent_is_hashed_once(tmp_path: Path, hashes: Hashes) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.ensure(DIGEST, [served()], len(DATA))
    cache.stamps.drop(HEX)  # as an agent without records left it
    again = BlobCache(tmp_path / "cache")
    got = again.check(DIGEST)
    assert got is not None and got.rehashed and got.intact
    assert BlobCache(tmp_path / "cache").check(DIGEST) == integrity.Check(True, False)
    assert hashes.count == 1


def staging(tmp_path: Path) -> tuple[Staging, AuditSpool]:
    (tmp_path / "state").mkdir()
    spool = AuditSpool(tmp_path / "state")
    cache = BlobCache(tmp_path / "cache")
    stage = Staging(cache, TrustGate("n1", spool), lambda a, n: served(), served(), 1, lambda: None)
    return stage, spool


def order(wid: str) -> Order:
    root = Partition("root", Mode.COW, DIGEST, len(DATA), "raw")
    return Order(wid, wid, wid, Desired.RUNNING, 1, 512, "img:1", (Disk(root),), ())


def test_staging_audits_a_rehash_and_refuses_a_corrupted_blob(tmp_path: Path) -> None:
    stage, spool = staging(tmp_path)
    try:
        path = stage.ensure(order("w1"))[DIGEST]  # fetched: hashed while written
        stage.ensure(order("w2"))  # unchanged: a hit, nothing to audit
        assert spool.pending() == []
        touch(path)
        assert stage.ensure(order("w3")) == {DIGEST: path}
        (allow,) = spool.pending()
        assert (allow.action, allow.verdict, allow.workspace_id) == ("cache-hit", "allow", "w3")
        assert "re-hashed (its mtime_ns, ctime_ns changed): intact" in allow.reason
        flip(path)
        with pytest.raises(ImageError, match=r"image img:1: cached blob .* does not match"):
            stage.ensure(order("w4"))
        deny = spool.pending()[-1]
        assert (deny.action, deny.verdict, deny.digest) == ("cache-hit", "deny", DIGEST)
        assert "does not match its digest (modified on disk" in deny.reason
        assert stage.ensure(order("w5"))[DIGEST].read_bytes() == DATA  # fetched again
    finally:
        stage.close()


def test_peer_refuses_to_serve_a_corrupted_blob(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "peer-cache")
    flip(cache.ensure(DIGEST, [served()], len(DATA)))
    server = PeerServer(cache, "peer1", f"unix:{tmp_path / 'peer.sock'}", "", TlsConfig())
    server.start()
    channels = PeerChannels("node2", TlsConfig())
    try:
        fetch = channels.source(server.address).fetch
        with pytest.raises(Unavailable, match=r"DATA_LOSS: node peer1: cached blob .* does not"):
            list(fetch(DIGEST, 0))
        assert not cache.has(DIGEST) and server.servicer.served_bytes == 0
        with pytest.raises(Unavailable, match=grpc.StatusCode.NOT_FOUND.name):
            list(fetch(DIGEST, 0))  # quarantined: no longer held
    finally:
        channels.close()
        server.stop()


# -- the service's repository -------------------------------------------------------------------


def test_repository_serves_an_unchanged_blob_without_rehashing(
    tmp_path: Path, hashes: Hashes
) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    digest, _ = repo.put(iter([DATA]), 1 << 30)
    assert b"".join(BlobRepository(tmp_path / "blobs").read(digest)) == DATA  # restarted too
    assert hashes.count == 0


def test_repository_touched_blob_is_rehashed_and_served(tmp_path: Path, hashes: Hashes) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    digest, _ = repo.put(iter([DATA]), 1 << 30)
    touch(repo.path(digest))
    assert b"".join(repo.read(digest)) == DATA
    assert b"".join(repo.read(digest, 10)) == DATA[10:]
    assert hashes.count == 1


def test_repository_flipped_byte_refuses_the_fetch_and_marks_the_blob_bad(tmp_path: Path) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    bad: list[tuple[str, str]] = []
    repo.on_bad.append(lambda d, why: bad.append((d, why)))
    digest, _ = repo.put(iter([DATA]), 1 << 30)
    flip(repo.path(digest))
    with pytest.raises(FailedPrecondition, match=f"repository blob {digest} does not match"):
        list(repo.read(digest))
    assert not repo.has(digest)  # so HasBlobs asks for it again on the next push
    assert [p.name.split(".")[0] for p in repo.bad()] == [HEX]
    assert [d for d, _ in bad] == [digest] and "modified on disk" in bad[0][1]
    with pytest.raises(NotFound, match="no longer matched its digest"):
        list(repo.read(digest))
    # pushing the content again restores it
    assert repo.put(iter([DATA]), 1 << 30) == (digest, len(DATA))
    assert b"".join(repo.read(digest)) == DATA


# -- quarantined blobs are kept within a bound ------------------------------------------------

MIB = 1024 * 1024


def _bad_in_repository(repo: BlobRepository, n: int) -> str:
    """Blob number ``n`` (1 MiB) stored, then found changed on disk (moved to bad/)."""
    digest, _ = repo.put(iter([bytes([n]) * MIB]), 1 << 30)
    flip(repo.path(digest))
    with pytest.raises(FailedPrecondition):
        repo.check(digest)
    return digest.split(":")[1]


def test_the_repositorys_bad_blobs_are_kept_within_their_bound_the_newest_first(
    tmp_path: Path,
) -> None:
    """A repository that keeps finding bad blobs keeps the newest within
    `bad_blobs_max_bytes` (the oldest go), and none older than a week: its disk does not
    fill with them. The newest is kept even when it alone is over the bound."""
    repo = BlobRepository(tmp_path / "blobs", bad_max_bytes=2 * MIB + MIB // 2)
    made = [_bad_in_repository(repo, n) for n in range(1, 5)]
    assert [p.name.split(".")[0] for p in repo.bad()] == made[-2:]
    # A week later (the service restarted): the newest is past its week too.
    week = integrity.QUARANTINE_MAX_AGE_S
    gone = repo.prune_bad(time.time() + week + 60)
    assert [p.name.split(".")[0] for p in gone] == made[-2:] and repo.bad() == []
    tiny = BlobRepository(tmp_path / "blobs", bad_max_bytes=1)
    made = [_bad_in_repository(tiny, n) for n in range(5, 7)]
    assert [p.name.split(".")[0] for p in tiny.bad()] == made[-1:]


def test_the_caches_quarantine_is_kept_within_its_bound_the_newest_first(
    tmp_path: Path,
) -> None:
    """The same on a node: `quarantine_max_bytes` of the newest corrupted blobs."""
    cache = BlobCache(tmp_path / "cache", quarantine_max_bytes=2 * MIB)
    made = []
    for n in range(1, 5):
        data = bytes([n]) * MIB
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        flip(cache.ensure(digest, [served(data)], len(data)))
        with pytest.raises(BlobCorrupted):
            cache.ensure(digest, [served(data)], len(data))
        made.append(digest.split(":")[1])
    kept = sorted(cache.quarantine_dir.iterdir(), key=lambda p: int(p.name.split(".")[1]))
    assert [p.name.split(".")[0] for p in kept] == made[-2:]
