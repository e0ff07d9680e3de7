"""A node's per-workspace disks (agent/disks.py), built from the order's partitions, and
the NoCloud seed ISO attached after them."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from agent.disks import WorkspaceFiles, disk_target
from agent.seed import SEED_MAX_BYTES, read_seed_iso
from images.model import Mode, Partition
from tests.unit.test_formats import qcow2_header
from workspace.domain.model import Disk, Order, Seed
from workspace.domain.states import Desired
from workspace.errors import DriverError


def _order(*partitions: Partition) -> Order:
    return Order(
        workspace_id="w1",
        name="w1",
        hostname="w1",
        desired=Desired.RUNNING,
        cpus=1,
        memory_mib=512,
        image="img",
        disks=tuple(Disk(p) for p in partitions),
        nics=(),
    )


def test_the_agent_checks_cached_bases_too(tmp_path: Path) -> None:
    """Defence in depth: a hostile base in a node's cache never reaches qemu-img."""
    evil = tmp_path / "evil"
    evil.write_bytes(qcow2_header(backing_offset=512, backing_len=9))
    digest = "sha256:" + "e" * 64
    files = WorkspaceFiles(tmp_path / "workspaces")
    for fmt, mode, reason in (
        ("qcow2", Mode.COW, "backing file"),
        ("raw", Mode.COW, "content is qcow2"),
        ("raw", Mode.READONLY, "content is qcow2"),
    ):
        order = _order(Partition(name="root", mode=mode, digest=digest, format=fmt))
        with pytest.raises(DriverError, match=f"disk root: cached blob: .*{reason}"):
            files.prepare(order, {digest: evil})
        assert list(files.dir("w1").iterdir()) == []


SEED = Seed(
    meta_data=b"instance-id: w1\nlocal-hostname: w1\n",
    user_data=b"#cloud-config\n{}\n",
    network_config=b"version: 2\n",
)


def _with_base(tmp_path: Path) -> tuple[Partition, Partition, dict[str, Path]]:
    """A blank partition and a read-only one over a raw base of 1 MiB."""
    base = tmp_path / "base.raw"
    base.write_bytes(b"RO\n" + b"\0" * ((1 << 20) - 3))
    digest = "sha256:" + "b" * 64
    blank = Partition("scratch", Mode.BLANK, "", 1 << 20, "qcow2", 1 << 20)
    ro = Partition("data", Mode.READONLY, digest, 1 << 20, "raw")
    return blank, ro, {digest: base}


def test_the_seed_is_the_last_disk_raw_and_read_only(tmp_path: Path) -> None:
    blank, ro, paths = _with_base(tmp_path)
    files = WorkspaceFiles(tmp_path / "workspaces")
    order = replace(_order(blank, ro), seed=SEED)
    disks = files.prepare(order, paths)
    seed_path = files.seed_iso("w1")
    assert seed_path == files.dir("w1") / "seed.iso"
    assert [(d.target, d.format, d.readonly, d.shareable) for d in disks] == [
        ("vda", "qcow2", False, False),
        ("vdb", "raw", True, True),
        ("vdc", "raw", True, False),  # per workspace: read-only, never shared
    ]
    assert disks[-1].path == str(seed_path)
    assert read_seed_iso(seed_path) == SEED
    assert stat.S_IMODE(seed_path.stat().st_mode) == 0o600

    # A CREATE again (the domain vanished, the agent restarted) writes the same seed
    # (the image's bytes carry the second it was built in: agent/seed.py).
    seed_path.write_bytes(b"left by a crash")
    assert files.prepare(order, paths) == disks
    assert read_seed_iso(seed_path) == SEED
    assert stat.S_IMODE(seed_path.stat().st_mode) == 0o600

    # A restarted agent finds the workspace's files (the seed with them) where they were;
    # removing them (REMOVE after undefine) takes the seed too.
    again = WorkspaceFiles(tmp_path / "workspaces")
    assert "w1" in again.existing() and again.seed_iso("w1") == seed_path
    again.remove("w1")
    assert not seed_path.exists() and "w1" not in again.existing()


def test_without_a_seed_no_iso_is_attached_and_a_stale_one_goes(tmp_path: Path) -> None:
    blank, ro, paths = _with_base(tmp_path)
    files = WorkspaceFiles(tmp_path / "workspaces")
    files.prepare(replace(_order(blank, ro), seed=SEED), paths)
    disks = files.prepare(_order(blank, ro), paths)
    assert [d.target for d in disks] == ["vda", "vdb"]
    assert not files.seed_iso("w1").exists()


def test_a_seed_over_the_limit_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    blank, ro, paths = _with_base(tmp_path)
    files = WorkspaceFiles(tmp_path / "workspaces")
    big = Seed(meta_data=b"", user_data=b"#" * (SEED_MAX_BYTES + 1), network_config=b"")
    refused = r"workspace w1: NoCloud seed is \d+ bytes, over the node's limit"
    with pytest.raises(DriverError, match=refused):
        files.prepare(replace(_order(blank, ro), seed=big), paths)
    assert "w1" not in files.existing()


def test_the_seed_follows_26_partitions(tmp_path: Path) -> None:
    """A workspace may have 26 partitions (vda..vdz); the seed is then vdaa."""
    files = WorkspaceFiles(tmp_path / "workspaces")
    parts = [Partition(f"p{i}", Mode.BLANK, "", 65536, "raw", 65536) for i in range(26)]
    disks = files.prepare(replace(_order(*parts), seed=SEED), {})
    assert [d.target for d in disks][-3:] == ["vdy", "vdz", "vdaa"]
    assert disks[-1].path == str(files.seed_iso("w1"))


@pytest.mark.parametrize(
    ("index", "target"),
    [
        (0, "vda"),
        (1, "vdb"),
        (25, "vdz"),
        (26, "vdaa"),
        (27, "vdab"),
        (701, "vdzz"),
        (702, "vdaaa"),
    ],
)
def test_disk_targets_are_named_as_linux_names_virtio_disks(index: int, target: str) -> None:
    assert disk_target(index) == target
