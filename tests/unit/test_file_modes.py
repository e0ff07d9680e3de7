"""Files the service and the agent write are 0600 and their directories 0700 (0711 where
QEMU, an unprivileged user, must traverse to a disk), whatever the umask (022 here)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from agent.cache import BlobCache
from agent.cache.blobs import BlobCorrupted, Source
from agent.disks import WorkspaceFiles
from agent.virt.base import DomainSpec
from agent.virt.fake import FakeDriver
from images import digest as digests
from images.model import Mode, Partition
from workspace.config import FakeDriverConfig
from workspace.domain.model import Disk, Order
from workspace.domain.states import Desired
from workspace.errors import FailedPrecondition, Unavailable
from workspace.site.hostenv import HostEnv
from workspace.store import Store
from workspace.store.blobs import BlobRepository


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_service_database_and_its_wal_are_private(tmp_path: Path) -> None:
    db = tmp_path / "service" / "service.db"
    store = Store(f"sqlite:///{db}")
    try:
        with store.write() as s:
            s.execute(text("CREATE TABLE t (x INTEGER)"))
        files = [db, db.with_name("service.db-wal"), db.with_name("service.db-shm")]
        assert all(f.exists() for f in files)
        assert [mode(f) for f in files] == [0o600] * 3
        assert mode(db.parent) == 0o700
    finally:
        store.close()


def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "service.db"
    db.touch(mode=0o644)
    Store(f"sqlite:///{db}").close()
    assert mode(db) == 0o600


def test_the_blob_repository_is_private(tmp_path: Path) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    digest, _ = repo.put([b"data" * 1000], 1 << 20)
    assert mode(repo.path(digest)) == 0o600
    for d in (tmp_path / "blobs", tmp_path / "blobs" / "sha256", tmp_path / "blobs" / "tmp"):
        assert mode(d) == 0o700


def test_blobs_stored_world_readable_before_are_made_private(tmp_path: Path) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    digest, _ = repo.put([b"old" * 1000], 1 << 20)
    repo.path(digest).chmod(0o644)
    cache = BlobCache(tmp_path / "cache")
    cached = cache.ensure(digest, [Source("service", lambda d, offset: repo.read(d, offset))], 3000)
    cached.chmod(0o644)
    BlobRepository(tmp_path / "blobs")
    BlobCache(tmp_path / "cache")
    assert mode(repo.path(digest)) == mode(cached) == 0o600


def test_the_agents_cache_files_are_private_and_its_dirs_traverse_only(tmp_path: Path) -> None:
    data = b"base" * 4096
    digest = digests.of_bytes(data)
    cache = BlobCache(tmp_path / "cache")
    src = Source("service", lambda d, offset: iter([data[offset:]]))
    path = cache.ensure(digest, [src], len(data))
    assert mode(path) == 0o600
    assert mode(tmp_path / "cache" / "partial") == 0o700
    for d in (tmp_path / "cache", tmp_path / "cache" / "blobs", path.parent):
        assert mode(d) == 0o711


def cut_short(data: bytes) -> Source:
    """A source that fails after the first half: the partial download stays for a resume."""

    def fetch(digest: str, offset: int) -> Iterator[bytes]:
        yield data[offset : len(data) // 2]
        raise Unavailable("connection lost")

    return Source("service", fetch)


def test_partial_downloads_integrity_records_and_quarantine_are_private(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path / "cache")
    data = b"half" * 4096
    digest = digests.of_bytes(data)
    with pytest.raises(Unavailable):
        cache.ensure(digest, [cut_short(data)], len(data))
    (partial,) = cache.partial_dir.iterdir()
    assert partial.stat().st_size == len(data) // 2
    assert mode(partial) == 0o600

    path = cache.ensure(digest, [Source("service", lambda d, o: iter([data[o:]]))], len(data))
    (record,) = cache.stamps.dir.iterdir()
    assert (mode(record), mode(cache.stamps.dir)) == (0o600, 0o700)

    path.write_bytes(b"tampered")  # found at the next use, moved aside
    with pytest.raises(BlobCorrupted):
        cache.check(digest)
    (moved,) = cache.quarantine_dir.iterdir()
    assert (mode(moved), mode(cache.quarantine_dir)) == (0o600, 0o700)


def test_the_repositorys_bad_blobs_and_integrity_records_are_private(tmp_path: Path) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    digest, _ = repo.put([b"data" * 1000], 1 << 20)
    (record,) = repo.stamps.dir.iterdir()
    assert (mode(record), mode(repo.stamps.dir)) == (0o600, 0o700)
    repo.path(digest).write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition):
        repo.check(digest)
    (moved,) = repo.bad()
    assert (mode(moved), mode(repo.bad_dir)) == (0o600, 0o700)


def test_what_earlier_versions_left_open_is_made_private_at_start(tmp_path: Path) -> None:
    repo = BlobRepository(tmp_path / "blobs")
    repo.put([b"data" * 1000], 1 << 20)
    cache = BlobCache(tmp_path / "cache")
    data = b"half" * 4096
    with pytest.raises(Unavailable):
        cache.ensure(digests.of_bytes(data), [cut_short(data)], len(data))
    cache.ensure(digests.of_bytes(b"x"), [Source("service", lambda d, o: iter([b"x"[o:]]))])
    # As an earlier version left them: directories 0755, files 0644 (quarantined blobs
    # named as they are, by when they were moved aside: kept a week).
    moved_at = time.time_ns()
    opened = [
        repo.bad_dir / f"a.{moved_at}",
        *repo.stamps.dir.iterdir(),
        *cache.partial_dir.iterdir(),
        *cache.stamps.dir.iterdir(),
        cache.quarantine_dir / f"b.{moved_at}",
    ]
    for d in (repo.bad_dir, cache.quarantine_dir, cache.partial_dir, cache.stamps.dir):
        d.chmod(0o755)
    for f in opened:
        f.touch()
        f.chmod(0o644)

    repo = BlobRepository(tmp_path / "blobs")
    cache = BlobCache(tmp_path / "cache")
    dirs = (repo.bad_dir, repo.stamps.dir, cache.quarantine_dir, cache.partial_dir)
    assert [mode(d) for d in (*dirs, cache.stamps.dir)] == [0o700] * 5
    assert [mode(f) for f in opened] == [0o600] * len(opened)


def test_overlays_blank_disks_and_state_are_private(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 1024 * 1024)
    files = WorkspaceFiles(tmp_path / "workspaces")
    order = Order(
        workspace_id="w1",
        name="w1",
        hostname="w1",
        desired=Desired.RUNNING,
        cpus=1,
        memory_mib=64,
        image="img",
        disks=(
            Disk(Partition("root", Mode.COW, "sha256:" + "a" * 64, 1 << 20, "raw", 1 << 20)),
            Disk(Partition("scratch", Mode.BLANK, "", 1 << 20, "qcow2", 1 << 20)),
        ),
        nics=(),
    )
    disks = files.prepare(order, {"sha256:" + "a" * 64: base})
    files.save_state("w1", {"reboots": 1})
    made = [Path(d.path) for d in disks] + [files.dir("w1") / "agent.json"]
    made.append(files.make_console_log("w1"))  # what the guest prints is its owner's
    assert [mode(p) for p in made] == [0o600] * 4
    assert mode(files.root) == mode(files.dir("w1")) == 0o711


def test_the_fake_drivers_console_log_is_private(tmp_path: Path) -> None:
    driver = FakeDriver(FakeDriverConfig())
    log = tmp_path / "w1" / "console.log"
    spec = DomainSpec(workspace_id="w1", name="w1", cpus=1, memory_mib=64, console_log=str(log))
    driver.define(spec)
    driver.start("w1")
    assert log.read_text() and mode(log) == 0o600


def test_the_fake_drivers_state_is_private(tmp_path: Path) -> None:
    """fake-domains.json (every domain: its workspace, disks, addresses) was written as
    the umask said: 0644 here, 0666 under umask 000 (`ws-admin site up --driver fake`)."""
    driver = FakeDriver(FakeDriverConfig(persist=True), tmp_path)
    driver.define(DomainSpec(workspace_id="w1", name="w1", cpus=1, memory_mib=64))
    state = tmp_path / "fake-domains.json"
    assert "w1" in state.read_text() and mode(state) == 0o600
    again = FakeDriver(FakeDriverConfig(persist=True), tmp_path)  # an agent restarted
    assert again.list_domains() == driver.list_domains()


def test_a_private_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workspace import files

    path = tmp_path / "uplinks.json"
    files.write_private(path, "old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        files.write_private(path, "new", sync=True)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uplinks.json"]
    assert mode(path) == 0o600


def test_the_private_libvirtds_configuration_is_its_owners_to_write(tmp_path: Path) -> None:
    """A libvirt site's libvirtd.conf, virtlogd.conf and qemu.conf, which root's libvirtd
    reads, and their directories were made as the umask said: under umask 000 anyone
    could rewrite them (qemu.conf's `user = "root"`), or the daemons' socket directory.
    They are 0644 and 0755 now, also when an earlier start left them open."""
    env = HostEnv(tmp_path, "s39s-modes")
    old = os.umask(0)
    try:
        (tmp_path / "libvirt" / "etc").mkdir(parents=True, mode=0o777)  # an earlier start's
        env.write_config()
    finally:
        os.umask(old)
    made = [tmp_path / "libvirt", *(tmp_path / "libvirt").rglob("*")]
    assert {p.name for p in made} >= {"etc", "run", "log", "qemu.conf", "libvirtd.conf"}
    for p in made:
        assert mode(p) == (0o755 if p.is_dir() else 0o644), p
