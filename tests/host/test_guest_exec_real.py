"""The libvirt driver's exec against a real qemu-guest-agent: the cloud appliance
(``python -m images.appliance --cloud``, looked for in $WS_CLOUD_APPLIANCE or
/var/tmp/ws-cloud-appliance) booted under QEMU/TCG with no NIC and no seed.

The guest-agent channel (``org.qemu.guest_agent.0``) is added to the domain XML here if
``agent/virt/domain_xml.py`` does not add it itself yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed")

from agent.virt.base import DiskSpec, DomainSpec
from agent.virt.libvirt_driver import LibvirtDriver
from tests.host.test_libvirt_driver_real import URI, Daemons
from tests.host.test_libvirt_driver_real import libvirtd as libvirtd
from workspace.config import LibvirtConfig
from workspace.errors import FailedPrecondition

pytestmark = pytest.mark.host

APPLIANCE = Path(os.environ.get("WS_CLOUD_APPLIANCE", "/var/tmp/ws-cloud-appliance"))
AGENT_WAIT_S = 240.0


@pytest.fixture
def cloud_guest() -> Iterator[tuple[Path, dict[str, str]]]:
    record = APPLIANCE / "cloud-appliance.json"
    if not record.exists():
        pytest.skip(f"no cloud appliance at {APPLIANCE} (python -m images.appliance --cloud)")
    meta = json.loads(record.read_text())
    work = Path(tempfile.mkdtemp(prefix="ws-exec-real-", dir="/tmp"))
    try:
        work.chmod(0o755)
        # Copies: libvirt relabels the files it gives QEMU, and the guest writes its disk.
        for src, name in ((meta["root"], "root.qcow2"), (meta["kernel"], "vmlinuz")):
            shutil.copyfile(src, work / name)
        shutil.copyfile(meta["initrd"], work / "initrd.img")
        for f in work.iterdir():
            f.chmod(0o644)
        yield work, meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_exec_through_a_real_guest_agent(
    libvirtd: Daemons,
    cloud_guest: tuple[Path, dict[str, str]],
) -> None:
    work, meta = cloud_guest
    wid = f"hosttest-{uuid.uuid4().hex[:8]}"
    spec = DomainSpec(
        workspace_id=wid,
        name="exec-test",
        cpus=1,
        memory_mib=768,
        disks=(DiskSpec(str(work / "root.qcow2"), "qcow2", "vda"),),
        kernel=str(work / "vmlinuz"),
        initrd=str(work / "initrd.img"),
        cmdline=str(meta["cmdline"]),
        console_log=str(work / "console.log"),
        hostname="exec-test",
    )
    driver = LibvirtDriver(LibvirtConfig(uri=URI, virt_type="qemu"), str(work / "state"))
    try:
        driver.define(spec)
        driver.start(wid)
        started = time.monotonic()
        # Until qemu-ga runs in the guest, libvirt says the agent is not connected.
        first = None
        while first is None:
            try:
                first = driver.exec(wid, ["cat", "/etc/hostname"], b"", 30)
            except FailedPrecondition as exc:
                assert "no QEMU guest agent answers in workspace exec-test" in exc.message
                if time.monotonic() - started > AGENT_WAIT_S:
                    raise
                time.sleep(2)
        print(f"\nguest agent answered {time.monotonic() - started:.1f} s after start")
        assert first.exit_code == 0 and first.stdout.strip()

        got = driver.exec(wid, ["sh", "-c", "echo out; echo err >&2; exit 3"], b"", 30)
        assert (got.exit_code, got.stdout, got.stderr) == (3, b"out\n", b"err\n")
        assert driver.exec(wid, ["cat"], b"from stdin", 30).stdout == b"from stdin"
        missing = driver.exec(wid, ["no-such-command"], b"", 30)
        assert missing.exit_code == 127 and b"no-such-command" in missing.stderr
        t = time.monotonic()
        slow = driver.exec(wid, ["sleep", "60"], b"", 2)
        assert slow.timed_out and time.monotonic() - t < 20
        killed = driver.exec(wid, ["sh", "-c", "kill -9 $$"], b"", 30)
        assert killed.exit_code == 137
        big = LibvirtDriver(
            LibvirtConfig(uri=URI, virt_type="qemu"), str(work / "state"), max_output_bytes=100
        )
        try:
            cut = big.exec(wid, ["sh", "-c", "head -c 5000 /dev/zero"], b"", 30)
            assert len(cut.stdout) == 100 and cut.truncated
        finally:
            big.close()
    finally:
        with contextlib.suppress(Exception):
            driver.undefine(wid)
        driver.close()
