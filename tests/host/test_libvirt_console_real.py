"""The libvirt driver's way into a real guest (QEMU/TCG, no NIC): the interactive console
both ways while the console log keeps being written, and exec's clear error for a guest
without a guest agent channel.

The guest: Debian's kernel with a busybox initramfs whose /init runs a shell on the
serial console. libvirtd comes from ``test_libvirt_driver_real.libvirtd`` (started and
stopped by pid only if none answers).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed")

from agent.virt.base import ConsoleSession, DomainSpec
from agent.virt.libvirt_driver import LibvirtDriver
from tests.host.test_libvirt_driver_real import URI, Daemons
from tests.host.test_libvirt_driver_real import libvirtd as libvirtd
from workspace.config import LibvirtConfig
from workspace.errors import FailedPrecondition

pytestmark = pytest.mark.host

READY = "CONSOLE-SHELL-READY"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
echo {READY}
exec /bin/sh
"""


@pytest.fixture
def shell_guest() -> Iterator[Path]:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels or not os.path.exists("/bin/busybox") or shutil.which("cpio") is None:
        pytest.skip("needs a kernel in /boot, /bin/busybox and cpio")
    work = Path(tempfile.mkdtemp(prefix="ws-console-real-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        for d in ("bin", "proc", "dev", "sys"):
            (root / d).mkdir(parents=True)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        shutil.copyfile(kernels[-1], work / "vmlinuz")
        names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names,
            check=True,
            capture_output=True,
        ).stdout
        (work / "initrd.gz").write_bytes(gzip.compress(archive))
        for f in ("vmlinuz", "initrd.gz"):
            (work / f).chmod(0o644)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_until(console: ConsoleSession, text: str, timeout_s: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = console.read(0.5)
        if data == b"":
            break
        if data:
            seen += data.decode(errors="replace")
            if text in seen:
                return seen
    pytest.fail(f"{text!r} not on the console within {timeout_s} s; saw:\n{seen[-2000:]}")


def ended(console: ConsoleSession, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if console.read(0.5) == b"":
            return True
    return False


def test_console_both_ways_and_exec_without_an_agent(libvirtd: Daemons, shell_guest: Path) -> None:
    cfg = LibvirtConfig(uri=URI, virt_type="qemu")
    wid = f"hosttest-{uuid.uuid4().hex[:8]}"
    log = shell_guest / "console.log"
    spec = DomainSpec(
        workspace_id=wid,
        name="console-test",
        cpus=1,
        memory_mib=256,
        kernel=str(shell_guest / "vmlinuz"),
        initrd=str(shell_guest / "initrd.gz"),
        cmdline="console=ttyS0 panic=-1",
        console_log=str(log),
        hostname="console-test",
    )
    driver = LibvirtDriver(cfg, str(shell_guest / "state"))
    try:
        driver.define(spec)
        with pytest.raises(FailedPrecondition, match="console-test is not running"):
            driver.open_console(wid)
        driver.start(wid)
        console = driver.open_console(wid)
        try:
            read_until(console, READY, 120)
            console.write(b"echo SUM=$((40+2))\n")
            read_until(console, "SUM=42", 30)
            # A second session takes the console over; the first one ends.
            second = driver.open_console(wid)
            assert ended(console, 10), "the first session did not end when taken over"
            second.write(b"echo AGAIN=$((1+1))\n")
            read_until(second, "AGAIN=2", 30)
            second.close()
        finally:
            console.close()
        # The log (virtlogd) kept everything, sessions or not; virtlogd writes it on its
        # own time, so the last line may land a moment after the session saw it.
        text = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "AGAIN=2" in text:
                break
            time.sleep(0.2)
        assert READY in text and "SUM=42" in text and "AGAIN=2" in text
        with pytest.raises(FailedPrecondition, match="no QEMU guest agent answers"):
            driver.exec(wid, ["true"], b"", 5)
        driver.destroy(wid)
        with pytest.raises(FailedPrecondition, match="not running"):
            driver.exec(wid, ["true"], b"", 5)
    finally:
        with contextlib.suppress(Exception):
            driver.undefine(wid)
        driver.close()
