"""Blobs uploaded but never imported are collected after blob_grace_s (injected clock)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from images.model import ImageSpec, Mode, Partition
from workspace.config import ServiceConfig, load
from workspace.domain.states import State
from workspace.identity import Identity, Kind
from workspace.ops import images as images_ops
from workspace.ops import save
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.unit import Env
from workspace.store import Blob, Store, Workspace
from workspace.store.blobs import BlobRepository, Discard

GRACE_S = 3600


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Catalog, Clock]:
    return _catalog(tmp_path)


def _catalog(tmp_path: Path, **overrides: object) -> tuple[Catalog, Clock]:
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path), blob_grace_s=GRACE_S, **overrides)
    clock = Clock()
    env = Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier(), clock=clock)
    return Catalog(env, BlobRepository(tmp_path / "blobs")), clock


def _rows(c: Catalog) -> set[str]:
    with c.env.store.read() as s:
        return set(s.execute(select(Blob.digest)).scalars())


def _import(c: Catalog, name: str, digest: str) -> None:
    part = Partition("root", Mode.COW, digest, format="raw")
    c.import_image("alice", ImageSpec(name, (part,)))


def test_an_unimported_blob_is_collected_once_its_grace_is_over(
    catalog: tuple[Catalog, Clock],
) -> None:
    c, clock = catalog
    kept, orphan = (c.upload_blob([bytes([i]) * 4096], "alice")[0] for i in (1, 2))
    _import(c, "img", kept)

    clock.now += GRACE_S  # exactly the grace: not yet
    assert c.collect_blobs() == []
    assert c.blobs.has(orphan)

    clock.now += 1
    fresh = c.upload_blob([b"\x03" * 4096], "alice")[0]  # each upload collects
    assert not c.blobs.has(orphan) and orphan not in _rows(c)
    # The imported blob and the one just uploaded (its grace starts now) stay.
    assert c.blobs.has(kept) and c.blobs.has(fresh)
    assert _rows(c) == {kept, fresh}
    # A blob uploaded before the grace ended can still be imported.
    clock.now += GRACE_S - 1
    _import(c, "late", fresh)
    clock.now += GRACE_S + 1
    assert c.collect_blobs() == []
    assert c.blobs.has(fresh)


def test_uploading_a_blob_again_restarts_its_grace(catalog: tuple[Catalog, Clock]) -> None:
    c, clock = catalog
    d = c.upload_blob([b"\x05" * 4096], "alice")[0]
    clock.now += GRACE_S + 1
    assert c.upload_blob([b"\x05" * 4096], "alice")[0] == d
    assert c.blobs.has(d)
    _import(c, "img", d)


def test_a_file_without_a_row_is_collected_by_its_age(
    catalog: tuple[Catalog, Clock], tmp_path: Path
) -> None:
    c, clock = catalog
    stray, _ = c.blobs.put([b"\x07" * 4096], 1 << 20)  # a crash between file and row
    assert stray not in _rows(c)
    clock.now = c.blobs.mtime(stray) + GRACE_S + 1
    assert c.collect_blobs() == [stray]
    assert not c.blobs.has(stray)


def _mark_saving(c: Catalog, since: float, image: str = "env:1") -> None:
    """A stopped workspace being saved as ``image`` since ``since`` (ops/save.py's mark)."""
    with c.env.store.write() as s:
        w = s.get(Workspace, "w1")
        if w is None:
            w = Workspace(id="w1", name="box", owner="alice", request_id="r", request_hash="h")
            w.image, w.cpus, w.memory_mib = "base:1", 1, 64
            w.state = w.desired_state = State.STOPPED.value
            w.created_at = w.updated_at = since
            s.add(w)
        w.saving_as, w.saving_since = image, since


def test_the_disks_a_save_under_way_sent_are_kept_past_the_grace(tmp_path: Path) -> None:
    """A save's node sends its disks one by one, and they are no image's until the last
    is sent and the image imported: a save longer than blob_grace_s (large disks,
    limits.save_timeout_s raised) lost its first disks to the collection the upload of
    its last one ran, and its import failed "has not been uploaded" after all that time."""
    c, clock = _catalog(tmp_path, limits={"save_timeout_s": 4 * GRACE_S})  # large disks
    old = c.upload_blob([b"\x08" * 4096], "alice")[0]  # before the save: collected
    clock.now += 10
    _mark_saving(c, clock.now)
    root = c.upload_blob([b"\x09" * 4096], None)[0]  # its node's copy of disk root
    clock.now += GRACE_S + 60
    data = c.upload_blob([b"\x0a" * 4096], None)[0]  # disk data, last: a collection ran
    assert not c.blobs.has(old)
    assert c.blobs.has(root) and c.blobs.has(data)
    parts = tuple(
        Partition(n, Mode.COW, d, format="raw") for n, d in (("root", root), ("data", data))
    )
    c.import_image("alice", ImageSpec("env:1", parts), vouched=(root, data))
    # A save that ended without an image (refused, failed) keeps nothing beyond the grace.
    lost = c.upload_blob([b"\x0b" * 4096], None)[0]
    _mark_saving(c, 0.0, "")
    clock.now += GRACE_S + 1
    assert c.collect_blobs() == [lost]
    # Nor does a mark that lapsed (its service died mid-save).
    _mark_saving(c, clock.now, "env:2")
    stale = c.upload_blob([b"\x0c" * 4096], None)[0]
    clock.now += c.env.cfg.limits.save_timeout_s + 60 + GRACE_S
    assert c.collect_blobs() == [stale]


def test_what_a_killed_save_sent_is_collected_with_no_upload_after_it(tmp_path: Path) -> None:
    """The disks a save had sent when its service was killed (kill -9) are no image's, and
    blobs were collected only after an upload: on a site with no upload after it they stayed
    for good (so did a push given up). The leader's housekeeping collects too
    (``collect_blobs_due``), when none ran for blob_grace_s / 2."""
    c, clock = _catalog(tmp_path)
    _mark_saving(c, clock.now)
    sent = c.upload_blob([b"\x0d" * 4096], None, "node:n1")[0]  # the save's first disk
    clock.now += 10
    pushed = c.upload_blob([b"\x0e" * 4096], "alice")[0]  # a push, given up
    # kill -9: the service that starts again clears its previous run's save marks.
    c = Catalog(c.env, BlobRepository(tmp_path / "blobs"))
    assert save.clear_orphaned(c.env) == 1
    clock.now += GRACE_S - 9  # the grace of the save's disk is over, not the push's
    assert c.collect_blobs_due() == [sent]
    assert not c.blobs.has(sent) and sent not in _rows(c)
    assert c.blobs.has(pushed) and pushed in _rows(c)
    clock.now += GRACE_S / 2 - 1  # the push's grace is over too, but no pass is due yet
    assert c.collect_blobs_due() == []
    assert c.blobs.has(pushed)
    clock.now += 1
    assert c.collect_blobs_due() == [pushed]
    assert _rows(c) == set() and not c.blobs.has(pushed)


# -- removal and replicas: files leave with their rows, under the store's lock ------------


def _replica(tmp_path: Path) -> Catalog:
    """A Catalog as another replica has it: its own store object and lock on the same
    database, the same blob directory."""
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path), blob_grace_s=GRACE_S)
    env = Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier())
    return Catalog(env, BlobRepository(tmp_path / "blobs"))


def test_another_replicas_image_of_the_same_content_keeps_its_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica A deletes an image; replica B uploads the same content and imports an image
    of it right after A's commit, before A's files are gone: B's image keeps its file."""
    a, b = _replica(tmp_path), _replica(tmp_path)
    data = [b"\x07" * 4096]
    d = a.upload_blob(data, "alice")[0]
    _import(a, "one", d)
    discarding = a.blobs.discarding

    @contextlib.contextmanager
    def racing() -> Iterator[Discard]:
        with discarding() as bin:
            yield bin
            # A's transaction has committed (the row is gone); B runs now.
            assert b.upload_blob(data, "alice")[0] == d
            _import(b, "two", d)

    monkeypatch.setattr(a.blobs, "discarding", racing)
    a.delete_image("alice", "one")
    monkeypatch.undo()
    assert b.blobs.has(d), "replica B's image lost its blob"
    assert b.blobs.check(d).intact
    assert d in _rows(b)


def test_a_delete_that_does_not_commit_leaves_the_files(catalog: tuple[Catalog, Clock]) -> None:
    c, _ = catalog
    d = c.upload_blob([b"\x08" * 4096], "alice")[0]
    with pytest.raises(RuntimeError), c.blobs.discarding() as bin:
        bin.take([d])
        assert not c.blobs.has(d)  # aside while the transaction runs
        raise RuntimeError("the commit failed")
    assert c.blobs.has(d) and c.blobs.check(d).intact
    assert list(c.blobs.trash_dir.iterdir()) == []


def test_files_a_dead_process_left_aside_go_back_or_go(
    catalog: tuple[Catalog, Clock],
) -> None:
    """A process that died between moving files aside and deleting them: at the next
    collection a file whose row is there goes back, one whose row is gone is deleted."""
    c, _ = catalog
    kept, dropped = (c.upload_blob([bytes([i]) * 4096], "alice")[0] for i in (9, 10))
    _import(c, "img", kept)
    for d in (kept, dropped):
        c.blobs.path(d).rename(c.blobs.trash_dir / f"{d.split(':')[1]}.deadbeef")
    with c.env.store.write() as s:
        s.delete(s.get(Blob, dropped))
    c.collect_blobs()
    assert c.blobs.has(kept) and c.blobs.check(kept).intact
    assert not c.blobs.has(dropped)
    assert list(c.blobs.trash_dir.iterdir()) == []


# -- the scan runs without the write lock ------------------------------------------------------


@pytest.mark.parametrize("meanwhile", ["imported", "imported as a kernel", "uploaded again"])
def test_a_blob_taken_while_the_collection_scans_is_kept(
    catalog: tuple[Catalog, Clock], monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """The collection scans every blob, image and workspace without the store's write
    lock (with many blobs it stalled every write). A blob it found old and unused that
    another caller imports (or uploads again) before the delete stays, and that caller
    is not kept waiting by the scan."""
    c, clock = catalog
    data = [b"\x0b" * 4096]
    d, other = (c.upload_blob(b, "alice")[0] for b in (data, [b"\x0c" * 4096]))
    clock.now += GRACE_S + 1
    real = images_ops._referenced
    done = threading.Event()

    # An admin imports it (alice's own claim on the blobs she sent ended with the grace:
    # ops/blob_access.py; an admin may build on any blob).
    admin = Identity(Kind.USER, "root", admin=True)

    def other_caller() -> None:
        if meanwhile == "imported":
            c.import_image(admin, ImageSpec("img", (Partition("root", Mode.COW, d, format="raw"),)))
        elif meanwhile == "imported as a kernel":
            root = Partition("root", Mode.COW, other, format="raw")
            c.import_image(admin, ImageSpec("img", (root,), kernel_digest=d))
        else:
            assert c.blobs.put(data, 1 << 20)[0] == d
            with c.env.store.write() as s:
                row = s.get(Blob, d)
                assert row is not None
                row.created_at = clock.now
        done.set()

    def scanned(s: Session) -> set[str]:
        found = real(s)  # the scan has found d unused
        if not done.is_set():
            t = threading.Thread(target=other_caller)
            t.start()
            t.join(30)
        assert done.is_set(), "a write waited for the collection's scan"
        return found

    monkeypatch.setattr(images_ops, "_referenced", scanned)
    assert d not in c.collect_blobs()
    assert c.blobs.has(d) and c.blobs.check(d).intact and d in _rows(c)
    monkeypatch.undo()
    clock.now += GRACE_S + 1
    if meanwhile.startswith("imported"):
        assert d not in c.collect_blobs()  # used by an image: kept for good
    else:
        assert d in c.collect_blobs()  # its new grace is over
