"""The NoCloud seed on a real node: the agent's seed ISO attached to a real libvirt domain.

Both guests boot (QEMU/TCG, no NIC) under a private libvirtd in a network namespace of
this module's own (``wsseed...``), from disks the agent's own code made
(``WorkspaceFiles.prepare`` → ``disks.domain_spec`` → ``LibvirtDriver``):

* the busybox test appliance, whose console line ``WORKSPACE-DISKS`` lists what the
  guest sees: the seed is one more read-only disk, the size of the ISO; the live domain
  has the guest-agent channel (socket path and virtio-serial controller added by
  libvirt); after undefine and ``files.remove`` no seed.iso is left;
* a guest whose initramfs holds the Debian kernel's isofs module and mounts the seed the
  way cloud-init does (read-only, by the kernel's iso9660 driver): the file names it
  lists (Rock Ridge, and Joliet with ``norock``), each file's SHA-256 and the volume
  label must be the seed's.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.disks import WorkspaceFiles, domain_spec
from agent.seed import VOLUME_ID
from agent.virt.base import DomainState
from agent.virt.domain_xml import GUEST_AGENT_CHANNEL
from images.appliance import (
    Appliance,
    CpioEntry,
    module_load_order,
    read_module,
    write_cpio,
)
from images.model import Mode, Partition
from tests.host.conftest import unique_name
from tests.host.test_appliance_boot import wait_for_line
from workspace.config import LibvirtConfig
from workspace.domain.model import Disk, Order, Seed
from workspace.domain.states import Desired
from workspace.site.hostenv import HostEnv

libvirt = pytest.importorskip("libvirt")

from agent.virt.libvirt_driver import LibvirtDriver  # noqa: E402

pytestmark = pytest.mark.host

BOOT_TIMEOUT_S = 180.0  # TCG on a loaded 2-core machine; a few seconds when idle
DISK = "sha256:" + "d" * 64
KERNEL = "sha256:" + "e" * 64
INITRD = "sha256:" + "f" * 64
SEED = Seed(
    meta_data=b"instance-id: wsseed-1\nlocal-hostname: seeded\n",
    user_data=b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo seeded > /run/seeded']\n",
    network_config=b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
)
FILES = {
    "meta-data": SEED.meta_data,
    "user-data": SEED.user_data,
    "network-config": SEED.network_config,
}

# /init of the isofs guest: the appliance disk is vda, the seed vdb (the last disk).
_ISOFS_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /seed /seedj
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
say() { printf '\n%s\n' "$*" > /dev/console; }
for m in $(cat /etc/modules.order); do
    insmod "/lib/modules/$m.ko" || say "SEED-WARN insmod $m failed"
done
n=0
while [ ! -e /dev/vdb ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
say "SEED-LABEL $(dd if=/dev/vdb bs=1 skip=32808 count=32 2>/dev/null | tr -cd 'A-Za-z0-9_-')"
if mount -t iso9660 -o ro /dev/vdb /seed; then
    say "SEED-FILES $(ls /seed | tr '\n' ' ')"
    for f in meta-data user-data network-config; do
        say "SEED-SHA256 $f $(sha256sum /seed/$f | cut -d ' ' -f 1)"
    done
else
    say "SEED-FILES mount-failed"
fi
if mount -t iso9660 -o ro,norock /dev/vdb /seedj; then
    say "SEED-JOLIET $(ls /seedj | tr '\n' ' ')"
else
    say "SEED-JOLIET mount-failed"
fi
say "SEED-DONE"
while :; do sleep 3600; done
"""


@pytest.fixture(scope="module")
def seed_env() -> Iterator[HostEnv]:
    site_dir = Path(tempfile.mkdtemp(prefix="ws-seed-", dir="/var/tmp"))
    site_dir.chmod(0o755)
    env = HostEnv(site_dir, unique_name("wsseed"))
    try:
        env.up()
        yield env
    finally:
        env.down()
        if os.environ.get("WS_KEEP_SITE"):
            print(f"\nkept site directory {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)


@pytest.fixture
def driver(seed_env: HostEnv) -> Iterator[LibvirtDriver]:
    d = LibvirtDriver(LibvirtConfig(uri=seed_env.libvirt_uri, virt_type="qemu"), "")
    try:
        yield d
    finally:
        d.close()


def _order(wid: str, appliance: Appliance) -> Order:
    return Order(
        workspace_id=wid,
        name=wid,
        hostname="seeded",
        desired=Desired.RUNNING,
        cpus=1,
        memory_mib=256,
        image="appliance",
        disks=(Disk(Partition("root", Mode.READONLY, DISK, appliance.disk.stat().st_size, "raw")),),
        nics=(),
        kernel_digest=KERNEL,
        initrd_digest=INITRD,
        cmdline=appliance.cmdline,
        seed=SEED,
    )


def _boot(
    driver: LibvirtDriver, files: WorkspaceFiles, order: Order, paths: dict[str, Path]
) -> Path:
    """Prepare the disks, define and start the domain; the console log's path."""
    disks = files.prepare(order, paths)
    console = files.console_log(order.workspace_id)
    driver.define(domain_spec(order, disks, paths, console))
    driver.start(order.workspace_id)
    return console


def _remove(driver: LibvirtDriver, files: WorkspaceFiles, wid: str) -> None:
    with contextlib.suppress(Exception):
        driver.undefine(wid)
    files.remove(wid)


def test_the_seed_is_one_more_read_only_disk_and_goes_with_the_workspace(
    seed_env: HostEnv, appliance: Appliance, driver: LibvirtDriver
) -> None:
    files = WorkspaceFiles(seed_env.site_dir / "workspaces")
    wid = unique_name("wsseed")
    paths = {DISK: appliance.disk, KERNEL: appliance.kernel, INITRD: appliance.initrd}
    try:
        started = time.monotonic()
        console = _boot(driver, files, _order(wid, appliance), paths)
        wait_for_line(console, "WORKSPACE-READY", BOOT_TIMEOUT_S)
        print(f"\nseeded appliance: start->READY {time.monotonic() - started:.1f} s")
        seed_iso = files.seed_iso(wid)
        iso_bytes = seed_iso.stat().st_size
        disks = wait_for_line(console, "WORKSPACE-DISKS", 1.0).split()[1:]
        assert disks == [f"vda:{appliance.disk.stat().st_size}:1", f"vdb:{iso_bytes}:1"]

        # The live domain: the seed as the agent asked; the guest-agent channel with the
        # socket path and the virtio-serial controller libvirt added itself.
        conn = libvirt.open(seed_env.libvirt_uri)
        try:
            live = ET.fromstring(conn.lookupByName(f"ws-{wid}").XMLDesc(0))
        finally:
            conn.close()
        last = live.findall("devices/disk")[-1]
        assert last.find("source").get("file") == str(seed_iso)  # type: ignore[union-attr]
        assert last.find("readonly") is not None and last.find("shareable") is None
        channel = live.find(f"devices/channel/target[@name='{GUEST_AGENT_CHANNEL}']/..")
        assert channel is not None and channel.get("type") == "unix"
        source = channel.find("source")
        assert source is not None and source.get("mode") == "bind" and source.get("path")
        assert live.find("devices/controller[@type='virtio-serial']") is not None
        assert stat.S_ISSOCK(seed_env.host_path(source.get("path", "")).stat().st_mode)

        info = driver.get(wid)
        assert info is not None and info.state is DomainState.RUNNING
        driver.undefine(wid)
        files.remove(wid)
        assert not seed_iso.exists()
        assert not files.dir(wid).exists() and wid not in files.existing()
    finally:
        _remove(driver, files, wid)


def _isofs_initrd(appliance: Appliance, out: Path) -> Path:
    """An initramfs of busybox, virtio-blk and isofs, whose /init reads the seed."""
    version = appliance.kernel_version
    modules = module_load_order(version, ("virtio_pci", "virtio_blk", "isofs"))
    entries = [
        CpioEntry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "etc", "lib", "lib/modules")
    ]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
        CpioEntry("init", stat.S_IFREG | 0o755, _ISOFS_INIT.encode()),
        CpioEntry(
            "etc/modules.order",
            stat.S_IFREG | 0o644,
            "".join(f"{name}\n" for name, _ in modules).encode(),
        ),
    ]
    entries += [
        CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, read_module(path))
        for name, path in modules
    ]
    initrd = out / "isofs-initrd.gz"
    initrd.write_bytes(gzip.compress(write_cpio(entries), mtime=0))
    initrd.chmod(0o644)
    return initrd


def test_linux_isofs_reads_the_seed_by_the_names_cloud_init_opens(
    seed_env: HostEnv, appliance: Appliance, driver: LibvirtDriver
) -> None:
    if not appliance.kernel_version:
        pytest.skip("the appliance does not record its kernel version")
    files = WorkspaceFiles(seed_env.site_dir / "workspaces")
    wid = unique_name("wsseed")
    boot = seed_env.site_dir / "isofs-guest"
    boot.mkdir(mode=0o755, exist_ok=True)
    boot.chmod(0o755)
    kernel = boot / "vmlinuz"
    shutil.copyfile(appliance.kernel, kernel)  # libvirt relabels what it gives QEMU
    kernel.chmod(0o644)
    initrd = _isofs_initrd(appliance, boot)
    paths = {DISK: appliance.disk, KERNEL: kernel, INITRD: initrd}
    try:
        console = _boot(driver, files, _order(wid, appliance), paths)
        wait_for_line(console, "SEED-DONE", BOOT_TIMEOUT_S)
        text = console.read_text(errors="replace")

        def line(prefix: str) -> str:
            return wait_for_line(console, prefix, 1.0).removeprefix(prefix).strip()

        assert line("SEED-LABEL") == VOLUME_ID, text[-3000:]
        want = sorted(FILES)
        assert sorted(line("SEED-FILES").split()) == want, text[-3000:]
        assert sorted(line("SEED-JOLIET").split()) == want, text[-3000:]
        sums = {
            f.split()[1]: f.split()[2]
            for f in text.splitlines()
            if f.strip("\r\n\0 ").startswith("SEED-SHA256 ") and len(f.split()) == 3
        }
        assert sums == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    finally:
        _remove(driver, files, wid)
