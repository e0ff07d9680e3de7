"""The agent's side of `ws image save` (agent/save.py) on the fake driver with real
qemu-img: only a shut-off domain's disks are copied, a missing disk is named, what is
sent is the overlay flattened, and copies left by a dead agent are removed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.disks import WorkspaceFiles
from agent.save import COPY_SUFFIX, Saver, Send
from agent.virt.base import DomainSpec
from agent.virt.fake import FakeDriver
from images import qemu_img
from workspace.config import FakeDriverConfig
from workspace.domain.tasks import SaveTask
from workspace.errors import FailedPrecondition, NotFound

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

WID = "w" * 32


@pytest.fixture
def node(tmp_path: Path) -> tuple[WorkspaceFiles, FakeDriver, Path]:
    files = WorkspaceFiles(tmp_path / "workspaces")
    driver = FakeDriver(FakeDriverConfig(persist=False))
    base = tmp_path / "base.raw"
    base.write_bytes(b"B" * 65536 + b"\0" * 65536)
    files.dir(WID).mkdir()
    qemu_img.create_overlay(base, "raw", files.dir(WID) / "root.qcow2")
    driver.define(DomainSpec(WID, "box", 1, 256))
    return files, driver, tmp_path


def collect(into: list[bytes]) -> Send:
    def send(
        workspace_id: str, disk: str, size: int, chunks: Iterator[bytes], timeout_s: float
    ) -> tuple[str, int]:
        assert 0 < timeout_s <= 60
        data = b"".join(chunks)
        assert (disk, size) == ("root", len(data))  # the disk named, its size told first
        into.append(data)
        return "sha256:" + "0" * 64, len(data)

    return send


def test_a_shut_off_domains_overlay_is_sent_flattened(
    node: tuple[WorkspaceFiles, FakeDriver, Path],
) -> None:
    files, driver, tmp = node
    sent: list[bytes] = []
    told: list[tuple[str, float]] = []
    out = Saver(files, driver).save(
        WID, SaveTask(("root",), 60), collect(sent), lambda d, p: told.append((d, p))
    )
    assert [(p.name, p.size_bytes) for p in out.partitions] == [("root", len(sent[0]))]
    # How far the copy was: qemu-img's figures, the first and the last (100) at least.
    assert told[0] == ("root", 0.0) and told[-1] == ("root", 100.0), told
    copy = tmp / "sent.qcow2"
    copy.write_bytes(sent[0])
    info = qemu_img.info(copy, "qcow2")
    assert "backing-filename" not in info and info["virtual-size"] == 131072
    raw = tmp / "sent.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(copy), str(raw)], check=True
    )
    assert raw.read_bytes() == b"B" * 65536 + b"\0" * 65536
    assert not list(files.dir(WID).glob("*" + COPY_SUFFIX))


def test_a_running_domain_or_a_missing_disk_is_refused_and_nothing_is_sent(
    node: tuple[WorkspaceFiles, FakeDriver, Path],
) -> None:
    files, driver, _ = node
    sent: list[bytes] = []
    saver = Saver(files, driver)
    with pytest.raises(NotFound, match="no disk 'data'"):
        saver.save(WID, SaveTask(("data",), 60), collect(sent))
    with pytest.raises(NotFound, match="not defined on this node"):
        saver.save("x" * 32, SaveTask(("root",), 60), collect(sent))
    driver.start(WID)
    with pytest.raises(FailedPrecondition, match="only a shut-off workspace can be saved"):
        saver.save(WID, SaveTask(("root",), 60), collect(sent))
    assert sent == []


def test_copies_left_by_an_agent_that_died_mid_save_are_removed(
    node: tuple[WorkspaceFiles, FakeDriver, Path],
) -> None:
    files, driver, _ = node
    left = files.dir(WID) / ("root" + COPY_SUFFIX)
    left.write_bytes(b"half")
    assert Saver(files, driver).leftovers() == 1
    assert not left.exists() and (files.dir(WID) / "root.qcow2").exists()


def test_qemu_img_progress_figures_are_read_as_they_come(tmp_path: Path) -> None:
    """`qemu-img convert -p` output, parsed; a disk of many clusters tells its figures
    in order up to 100; a failing copy still says why."""
    assert qemu_img.progress_figures(b"    (0.00/100%)\r    (45.02/100%)\r") == [0.0, 45.02]
    src = tmp_path / "big.qcow2"
    qemu_img.create_blank(src, 64 * 2**20)
    subprocess.run(
        ["qemu-io", "-c", "write -P 7 0 48M", "-f", "qcow2", str(src)],
        check=True,
        capture_output=True,
    )
    seen: list[float] = []
    qemu_img.flatten(src, tmp_path / "flat.qcow2", 60, seen.append)
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 100.0, seen
    with pytest.raises(qemu_img.QemuImgError, match="Could not open"):
        qemu_img.flatten(tmp_path / "none.qcow2", tmp_path / "x.qcow2", 60, seen.append)


def test_the_copy_is_private_while_qemu_img_writes_it(
    node: tuple[WorkspaceFiles, FakeDriver, Path],
) -> None:
    """The flattened copy holds the whole disk of its owner: nobody else may open it at
    any time, not only once it is complete (qemu-img makes new files under the umask)."""
    files, driver, _ = node
    copy = files.dir(WID) / ("root" + COPY_SUFFIX)
    modes: list[int] = []

    def copying(disk: str, percent: float) -> None:
        if copy.exists():  # qemu-img may say 0 % before it opens the copy
            modes.append(copy.stat().st_mode & 0o777)

    Saver(files, driver).save(WID, SaveTask(("root",), 60), collect([]), copying)
    assert modes and set(modes) == {0o600}, [oct(m) for m in modes]
