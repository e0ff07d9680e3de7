"""The node's blob cache: atomic fetch, resume, one transfer per digest, LRU within a
budget, pins, re-index after a restart and corruption detection."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cache import BlobCache, BlobCorrupted, Source, blobs
from workspace.errors import ImageError, ResourceExhausted, Unavailable


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(n: int, size: int = 100) -> tuple[str, bytes]:
    data = bytes([n % 256]) * size
    return digest_of(data), data


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Served:
    """A fetcher over a dict of blobs that counts calls and records offsets."""

    def __init__(self, blobs: dict[str, bytes], chunk: int = 16) -> None:
        self.blobs = blobs
        self.chunk = chunk
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, digest: str, offset: int) -> Iterator[bytes]:
        with self.lock:
            self.calls.append((digest, offset))
        data = self.blobs[digest]
        for i in range(offset, len(data), self.chunk):
            yield data[i : i + self.chunk]


def cache_at(tmp_path: Path, budget: int = 0, clock: Clock | None = None) -> BlobCache:
    return BlobCache(tmp_path / "cache", budget, clock or Clock())


# -- fetch, verify, resume, share ------------------------------------------------------------


def test_fetch_stores_blob_atomically(tmp_path: Path) -> None:
    d, data = blob(1, 1000)
    cache = cache_at(tmp_path)
    fetch = Served({d: data})
    path = cache.ensure(d, fetch)
    assert path.read_bytes() == data
    assert path == cache.path(d)
    assert cache.has(d) and cache.digests() == [d]
    assert not any(cache.partial_dir.iterdir())
    # a hit does not fetch again
    assert cache.ensure(d, fetch) == path
    assert len(fetch.calls) == 1


def test_wrong_bytes_are_discarded(tmp_path: Path) -> None:
    d, _ = blob(1)
    cache = cache_at(tmp_path)
    with pytest.raises(ImageError, match="hash to"):
        cache.ensure(d, lambda _d, _o: iter([b"not the blob"]))
    assert not cache.has(d)
    assert not cache.path(d).exists()
    assert not any(cache.partial_dir.iterdir())


def test_empty_blob(tmp_path: Path) -> None:
    d = digest_of(b"")
    assert cache_at(tmp_path).ensure(d, Served({d: b""})).read_bytes() == b""


def test_failed_source_leaves_no_empty_partial(tmp_path: Path) -> None:
    d, _ = blob(1)
    cache = cache_at(tmp_path)

    def refused(digest: str, offset: int) -> Iterator[bytes]:
        raise ConnectionError("refused")
        yield b""

    with pytest.raises(Unavailable):
        cache.ensure(d, refused)
    assert not any(cache.partial_dir.iterdir())


def test_a_full_filesystem_removes_the_partial_and_tries_no_other_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing: a partial kept for a resume would keep the filesystem full
    after the workspace is gone (it is removed at start only once a day old)."""
    d, data = blob(2, 1000)
    cache = cache_at(tmp_path)

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(blobs.os, "fsync", no_space)
    peer, service = Served({d: data}), Served({d: data})
    with pytest.raises(ResourceExhausted, match=r"cache filesystem is full \(No space left"):
        cache.ensure(d, [Source("peer a", peer), Source("service", service)])
    assert not any(cache.partial_dir.iterdir())
    assert service.calls == []  # it would fail alike
    monkeypatch.undo()  # space was freed: the next try fetches it whole
    assert cache.ensure(d, service).read_bytes() == data
    assert service.calls == [(d, 0)]


def test_not_a_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a sha256 digest"):
        cache_at(tmp_path).ensure("md5:abc", Served({}))


def test_interrupted_transfer_resumes_from_the_partial(tmp_path: Path) -> None:
    d, data = blob(7, 1000)
    cache = cache_at(tmp_path)

    def breaks_midway(digest: str, offset: int) -> Iterator[bytes]:
        yield data[offset:400]
        raise ConnectionError("link down")

    with pytest.raises(Unavailable, match="link down"):
        cache.ensure(d, breaks_midway)
    assert (cache.partial_dir / d.split(":")[1]).stat().st_size == 400
    assert not cache.has(d)

    # A new cache object (an agent restart) resumes too.
    cache = cache_at(tmp_path)
    fetch = Served({d: data})
    assert cache.ensure(d, fetch).read_bytes() == data
    assert fetch.calls == [(d, 400)]


def test_resumed_partial_with_bad_bytes_is_fetched_again_from_zero(tmp_path: Path) -> None:
    d, data = blob(8, 1000)
    cache = cache_at(tmp_path)
    (cache.partial_dir / d.split(":")[1]).write_bytes(b"garbage!" * 10)
    fetch = Served({d: data})
    assert cache.ensure(d, fetch).read_bytes() == data
    assert fetch.calls == [(d, 80), (d, 0)]


def test_concurrent_requests_share_one_transfer(tmp_path: Path) -> None:
    d, data = blob(3, 64 * 1024)
    cache = cache_at(tmp_path)
    gate = threading.Event()
    calls = []

    def slow(digest: str, offset: int) -> Iterator[bytes]:
        calls.append(offset)
        gate.wait(5)
        for i in range(offset, len(data), 4096):
            yield data[i : i + 4096]

    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(cache.ensure(d, slow))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # all eight are now waiting on the one transfer
    gate.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert calls == [0]
    assert len(results) == 8 and len(set(results)) == 1
    assert results[0].read_bytes() == data


def test_concurrent_requests_after_a_failure_resume_instead_of_restarting(
    tmp_path: Path,
) -> None:
    d, data = blob(4, 1000)
    cache = cache_at(tmp_path)
    offsets: list[int] = []

    def first_fails(digest: str, offset: int) -> Iterator[bytes]:
        offsets.append(offset)
        if len(offsets) == 1:
            yield data[:500]
            raise ConnectionError("reset")
        yield data[offset:]

    with pytest.raises(Unavailable):
        cache.ensure(d, first_fails)
    assert cache.ensure(d, first_fails).read_bytes() == data
    assert offsets == [0, 500]


# -- sources ----------------------------------------------------------------------------------


def test_failed_source_is_followed_by_the_next_at_the_same_offset(tmp_path: Path) -> None:
    d, data = blob(5, 1000)
    cache = cache_at(tmp_path)

    def peer(digest: str, offset: int) -> Iterator[bytes]:
        yield data[:300]
        raise ConnectionError("peer went away")

    service = Served({d: data})
    path = cache.ensure(d, [Source("peer a", peer), Source("service", service)])
    assert path.read_bytes() == data
    assert service.calls == [(d, 300)]
    assert cache.received_bytes == {"peer": 300, "service": 700}


def test_bad_source_is_followed_by_the_next_from_zero(tmp_path: Path) -> None:
    d, data = blob(6, 1000)
    cache = cache_at(tmp_path)
    liar = Served({d: b"x" * 1000})
    service = Served({d: data})
    path = cache.ensure(d, [Source("peer liar", liar), Source("service", service)])
    assert path.read_bytes() == data
    assert service.calls == [(d, 0)]


def test_source_sending_more_than_the_size_is_cut_off(tmp_path: Path) -> None:
    d, data = blob(9, 100)
    cache = cache_at(tmp_path)

    def endless(digest: str, offset: int) -> Iterator[bytes]:
        while True:
            yield b"y" * 64

    service = Served({d: data})
    path = cache.ensure(d, [Source("peer x", endless), Source("service", service)], 100)
    assert path.read_bytes() == data


def test_every_source_failing_names_them_all(tmp_path: Path) -> None:
    d, _ = blob(10)
    cache = cache_at(tmp_path)

    def down(digest: str, offset: int) -> Iterator[bytes]:
        raise ConnectionError("refused")

    with pytest.raises(Unavailable, match=r"peer a: .*refused.*service: .*refused"):
        cache.ensure(d, [Source("peer a", down), Source("service", down)])


# -- budget, LRU, pins ------------------------------------------------------------------------


def test_lru_blob_is_evicted_to_make_room(tmp_path: Path) -> None:
    blobs = dict(blob(n) for n in range(4))
    a, b, c, d = blobs
    cache = cache_at(tmp_path, budget=300)
    fetch = Served(blobs)
    for x in (a, b, c):
        cache.ensure(x, fetch, 100)
    cache.ensure(a, fetch, 100)  # a hit: a is now the most recently used
    cache.ensure(d, fetch, 100)
    assert set(cache.digests()) == {a, c, d}
    assert not cache.path(b).exists()
    assert cache.used_bytes() == 300


def test_eviction_without_a_size_hint_happens_while_streaming(tmp_path: Path) -> None:
    blobs = dict(blob(n) for n in range(3))
    a, b, c = blobs
    cache = cache_at(tmp_path, budget=200)
    fetch = Served(blobs)
    cache.ensure(a, fetch)
    cache.ensure(b, fetch)
    cache.ensure(c, fetch)  # size unknown: room is made as bytes arrive
    assert set(cache.digests()) == {b, c}


def test_pinned_blobs_are_never_evicted(tmp_path: Path) -> None:
    blobs = dict(blob(n) for n in range(4))
    a, b, c, d = blobs
    cache = cache_at(tmp_path, budget=300)
    fetch = Served(blobs)
    cache.pin("ws1", [a])
    for x in (a, b, c):
        cache.ensure(x, fetch, 100)
    cache.ensure(d, fetch, 100)  # a is the LRU but pinned: b goes
    assert set(cache.digests()) == {a, c, d}
    assert {e.digest: e.pinned for e in cache.entries()} == {a: True, c: False, d: False}


def test_budget_full_of_pinned_blobs_fails_the_fetch_clearly(tmp_path: Path) -> None:
    blobs = dict(blob(n) for n in range(3))
    a, b, c = blobs
    cache = cache_at(tmp_path, budget=250)
    fetch = Served(blobs)
    cache.pin("ws1", [a])
    cache.pin("ws2", [b])
    cache.ensure(a, fetch, 100)
    cache.ensure(b, fetch, 100)
    with pytest.raises(ResourceExhausted, match=r"budget of 250 bytes \(cache_budget_bytes\)"):
        cache.ensure(c, fetch, 100)
    assert not cache.has(c)
    assert not any(cache.partial_dir.iterdir())
    # Once a workspace is gone, its blob may go and the fetch succeeds.
    cache.unpin("ws1")
    cache.ensure(c, fetch, 100)
    assert set(cache.digests()) == {b, c}


def test_budget_is_checked_while_streaming_too(tmp_path: Path) -> None:
    d, data = blob(1, 500)
    cache = cache_at(tmp_path, budget=300)
    with pytest.raises(ResourceExhausted, match="does not fit"):
        cache.ensure(d, Served({d: data}))  # no size hint: caught at byte 301
    assert not any(cache.partial_dir.iterdir())


def test_zero_budget_means_unlimited(tmp_path: Path) -> None:
    blobs = dict(blob(n, 1000) for n in range(5))
    cache = cache_at(tmp_path, budget=0)
    for d in blobs:
        cache.ensure(d, Served(blobs), 1000)
    assert len(cache.digests()) == 5


def test_unpin_counts_as_a_use(tmp_path: Path) -> None:
    clock = Clock()
    blobs = dict(blob(n) for n in range(3))
    a, b, c = blobs
    cache = cache_at(tmp_path, budget=200, clock=clock)
    fetch = Served(blobs)
    cache.pin("ws1", [a])
    cache.ensure(a, fetch, 100)
    cache.ensure(b, fetch, 100)
    cache.unpin("ws1")  # a was in use until now: b is the least recently used
    cache.ensure(c, fetch, 100)
    assert set(cache.digests()) == {a, c}


# -- restart: re-index, persisted last use and pins, corruption --------------------------------


def test_restart_reindexes_with_last_use_and_pins(tmp_path: Path) -> None:
    clock = Clock()
    blobs = dict(blob(n) for n in range(3))
    a, b, c = blobs
    cache = cache_at(tmp_path, budget=300, clock=clock)
    fetch = Served(blobs)
    for x in (a, b, c):
        cache.ensure(x, fetch, 100)
    cache.pin("ws1", [b])
    before = {e.digest: e.last_used for e in cache.entries()}

    again = cache_at(tmp_path, budget=300, clock=clock)
    assert again.digests() == cache.digests()
    assert {e.digest: e.last_used for e in again.entries()} == before
    assert [e.digest for e in again.entries() if e.pinned] == [b]
    assert again.pin_owners() == {"ws1"}
    # LRU order survived: a (oldest) goes, c stays, b is pinned.
    d, data = blob(9)
    again.ensure(d, Served({d: data}), 100)
    assert set(again.digests()) == {b, c, d}


def test_corrupted_entry_is_refused_at_its_next_use_then_fetched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d, data = blob(2, 1000)
    cache = cache_at(tmp_path)
    cache.ensure(d, Served({d: data}))
    path = cache.path(d)
    with open(path, "r+b") as f:
        f.seek(500)
        f.write(b"bitrot")

    again = cache_at(tmp_path)  # after a restart too
    assert again.has(d)
    fetch = Served({d: data})
    with (
        caplog.at_level(logging.ERROR, logger="agent.cache"),
        pytest.raises(BlobCorrupted, match="does not match its digest"),
    ):
        again.ensure(d, fetch)
    assert fetch.calls == []  # refused, not silently replaced
    assert "does not match its digest" in caplog.text
    # the next use fetches it again; then it is a plain hit
    assert again.ensure(d, fetch).read_bytes() == data
    assert again.ensure(d, fetch) == path and fetch.calls == [(d, 0)]


def test_verify_quarantines_a_corrupted_entry(tmp_path: Path) -> None:
    d, data = blob(2, 1000)
    cache_at(tmp_path).ensure(d, Served({d: data}))
    path = cache_at(tmp_path).path(d)
    path.write_bytes(b"truncated")
    again = cache_at(tmp_path)
    assert not again.verify(d)
    assert not again.has(d) and not path.exists()
    assert [p.read_bytes() for p in again.quarantine_dir.iterdir()] == [b"truncated"]


def test_intact_entry_is_used_without_fetching_after_restart(tmp_path: Path) -> None:
    d, data = blob(2, 1000)
    cache_at(tmp_path).ensure(d, Served({d: data}))
    fetch = Served({d: data})
    assert cache_at(tmp_path).ensure(d, fetch).read_bytes() == data
    assert fetch.calls == []


def test_reindex_drops_stray_files_and_stale_partials(tmp_path: Path) -> None:
    clock = Clock()
    cache = cache_at(tmp_path, clock=clock)
    (cache.blob_dir / "not-a-digest").write_bytes(b"x")
    old = cache.partial_dir / ("ab" * 32)
    old.write_bytes(b"x")
    os.utime(old, (clock.now - 3 * 24 * 3600, clock.now - 3 * 24 * 3600))
    fresh = cache.partial_dir / ("cd" * 32)
    fresh.write_bytes(b"x")
    os.utime(fresh, (clock.now, clock.now))
    cache_at(tmp_path, clock=clock)
    assert not (cache.blob_dir / "not-a-digest").exists()
    assert not old.exists()
    assert fresh.exists()  # a recent partial is kept for resuming


def test_unreadable_pin_file_is_dropped(tmp_path: Path) -> None:
    cache = cache_at(tmp_path)
    cache.pin("ws1", [blob(1)[0]])
    (cache.root / "pins" / "ws2").write_text("{not json")
    assert cache_at(tmp_path).pin_owners() == {"ws1"}
