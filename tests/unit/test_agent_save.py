"""The agent's side of `ws image save` (agent/save.py) on the fake driver with real
qemu-img: only a shut-off domain's disks are copied, a missing disk is named, what is
sent is the overlay flattened, and copies left by a dead agent are removed."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
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
from workspace.errors import FailedPrecondition, NotFound, Unavailable

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


def _big_qcow2(tmp_path: Path) -> Path:
    """A qcow2 of 64 MiB with 48 MiB written: a copy of many clusters, long enough to be
    seen in progress."""
    src = tmp_path / "big.qcow2"
    qemu_img.create_blank(src, 64 * 2**20)
    subprocess.run(
        ["qemu-io", "-c", "write -P 7 0 48M", "-f", "qcow2", str(src)],
        check=True,
        capture_output=True,
    )
    return src


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
    src = _big_qcow2(tmp_path)
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


def _qemu_img_children() -> list[int]:
    """This process's children still running qemu-img (prlimit execs it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, _, rest = stat.partition(") ")
        fields = rest.split()
        if fields and fields[0] != "Z" and int(fields[1]) == os.getpid() and "qemu-img" in comm:
            found.append(int(entry.name))
    return found


def test_a_cancelled_save_stops_its_copy_and_sends_nothing(
    node: tuple[WorkspaceFiles, FakeDriver, Path],
) -> None:
    """The service gave up on the save (the task stream it came on broke): the save
    stops at its next step: qemu-img is killed, nothing is sent, no copy is left."""
    files, driver, _ = node
    sent: list[bytes] = []
    cancel = threading.Event()
    with pytest.raises(Unavailable, match="cancelled"):
        Saver(files, driver).save(
            WID, SaveTask(("root",), 60), collect(sent), lambda d, p: cancel.set(), cancel
        )
    assert sent == [] and _qemu_img_children() == []
    assert not list(files.dir(WID).glob("*" + COPY_SUFFIX))
    # Cancelled before it began: it does not begin.
    with pytest.raises(Unavailable, match="cancelled"):
        Saver(files, driver).save(WID, SaveTask(("root",), 60), collect(sent), None, cancel)
    assert sent == []


def test_qemu_img_is_killed_when_its_progress_reader_stops_the_copy(tmp_path: Path) -> None:
    src = _big_qcow2(tmp_path)

    def stop(percent: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qemu_img.flatten(src, tmp_path / "flat.qcow2", 60, stop)
    assert _qemu_img_children() == []


def test_a_second_save_of_a_workspace_waits_for_the_first_to_end(
    node: tuple[WorkspaceFiles, FakeDriver, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Both would copy into the same file: the second copies once the first has ended
    (the first's end removed the second's copy), and each sends a whole copy."""
    caplog.set_level(logging.INFO, logger="agent.save")
    files, driver, _ = node
    saver = Saver(files, driver)
    first_sent: list[bytes] = []
    second_sent: list[bytes] = []
    copying, go_on = threading.Event(), threading.Event()

    def held(disk: str, percent: float) -> None:
        copying.set()
        assert go_on.wait(20)

    first = threading.Thread(
        target=saver.save, args=(WID, SaveTask(("root",), 60), collect(first_sent), held)
    )
    first.start()
    second = threading.Thread(
        target=saver.save, args=(WID, SaveTask(("root",), 60), collect(second_sent))
    )
    try:
        assert copying.wait(20)
        second.start()
        deadline = time.monotonic() + 20
        while "waiting for an earlier save" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "waiting for an earlier save" in caplog.text
        assert second_sent == []
    finally:
        go_on.set()
        first.join(20)
        if second.ident is not None:
            second.join(20)
    assert len(first_sent) == 1 and first_sent == second_sent
    assert not list(files.dir(WID).glob("*" + COPY_SUFFIX))
