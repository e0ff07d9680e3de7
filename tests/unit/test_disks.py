"""A node's per-workspace disks (agent/disks.py), built from the order's partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.disks import WorkspaceFiles
from images.model import Mode, Partition
from tests.unit.test_formats import qcow2_header
from workspace.domain.model import Disk, Order
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
