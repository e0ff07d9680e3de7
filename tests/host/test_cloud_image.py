"""The cloud appliance (images/cloud.py), built for real with mmdebstrap once and cached
in ``$WS_CLOUD_APPLIANCE_CACHE`` (default /var/tmp/ws-cloud-appliance): the image holds
what issue 11 needs, read from its ext4 filesystem with debugfs (no mount, no loop
device), and the push manifest points at the files that were written.
"""

from __future__ import annotations

import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from images import cloud, manifest, qemu_img

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def cloud_appliance() -> cloud.CloudAppliance:
    return cloud.build(cloud.default_out_dir())


@pytest.fixture(scope="module")
def root_raw(
    cloud_appliance: cloud.CloudAppliance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    raw = tmp_path_factory.mktemp("cloud-image") / "root.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(cloud_appliance.root), str(raw)],
        check=True,
    )
    yield raw
    raw.unlink(missing_ok=True)


def debugfs(raw: Path, request: str) -> str:
    """``debugfs -R REQUEST`` on the image, read-only; its output (errors included)."""
    proc = subprocess.run(
        ["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=True
    )
    return proc.stdout + proc.stderr.partition("\n")[2]  # stderr's first line is the banner


def exists(raw: Path, path: str) -> bool:
    out = debugfs(raw, f"stat {path}")
    return "Inode:" in out and "File not found" not in out


@pytest.mark.parametrize(
    "path",
    [
        "/usr/bin/cloud-init",
        "/usr/sbin/sshd",
        "/usr/sbin/qemu-ga",
        "/lib/udev/rules.d/60-qemu-guest-agent.rules",
        "/usr/bin/sudo",
        "/usr/bin/ping",
        "/usr/bin/iperf3",
        "/sbin/dhclient",
        "/sbin/ifup",
        "/lib/systemd/systemd",
        "/etc/initramfs-tools/conf.d/90-workspace",
    ],
)
def test_the_image_has(root_raw: Path, path: str) -> None:
    assert exists(root_raw, path), path


def test_no_ssh_host_keys_and_no_machine_id(root_raw: Path) -> None:
    listing = debugfs(root_raw, "ls -l /etc/ssh")
    assert "sshd_config" in listing and "ssh_host_" not in listing
    assert "Size: 0" in debugfs(root_raw, "stat /etc/machine-id")


def test_configuration_files(root_raw: Path) -> None:
    assert debugfs(root_raw, "cat /etc/cloud/cloud.cfg.d/90_workspace.cfg") == cloud.CLOUD_CFG
    assert debugfs(root_raw, "cat /etc/ssh/sshd_config.d/90-workspace.conf") == cloud.SSHD_CONFIG
    assert debugfs(root_raw, "cat /etc/fstab") == cloud.FSTAB
    assert "99mmdebstrap" not in debugfs(root_raw, "ls /etc/apt/apt.conf.d")
    for unit in cloud.UNITS_MASKED:
        assert 'Fast link dest: "/dev/null"' in debugfs(
            root_raw, f"stat /etc/systemd/system/{unit}"
        )


def test_the_resolver_is_resolvconfs_and_nothing_of_the_build_hosts(root_raw: Path) -> None:
    # ifupdown's dns-nameservers lines (cloud-init's rendering of a network's DNS
    # servers) reach /etc/resolv.conf only through resolvconf's link into /run.
    assert exists(root_raw, "/etc/network/if-up.d/000resolvconf")
    link = debugfs(root_raw, "stat /etc/resolv.conf")
    assert 'Fast link dest: "../run/resolvconf/resolv.conf"' in link
    kept = debugfs(root_raw, "ls /etc/resolvconf/resolv.conf.d")
    assert "head" in kept and "original" not in kept


def test_kernel_and_initrd_are_the_images_own(
    cloud_appliance: cloud.CloudAppliance, root_raw: Path, tmp_path: Path
) -> None:
    version = cloud_appliance.kernel_version
    assert version.endswith("-cloud-amd64")
    for name, copied in (
        ("vmlinuz", cloud_appliance.kernel),
        ("initrd.img", cloud_appliance.initrd),
    ):
        out = tmp_path / name
        debugfs(root_raw, f"dump /boot/{name}-{version} {out}")
        assert out.read_bytes() == copied.read_bytes()
    assert cloud_appliance.initrd.stat().st_size < 10 * 1024**2  # MODULES=list


def test_disk_and_manifest(cloud_appliance: cloud.CloudAppliance) -> None:
    info = qemu_img.info(cloud_appliance.root, "qcow2")
    assert info["virtual-size"] == cloud.DISK_SIZE_BYTES
    assert cloud_appliance.root.stat().st_size < 400 * 1024**2
    data = tomllib.loads(cloud_appliance.manifest.read_text())
    assert (data.pop("context"), data.pop("login_user")) == ("nocloud", "debian")
    parsed = manifest.parse(data, cloud_appliance.manifest.parent)
    assert parsed.kernel == cloud_appliance.kernel and parsed.initrd == cloud_appliance.initrd
    assert [p.file for p in parsed.partitions] == [cloud_appliance.root]
    assert all(f.is_file() for f in parsed.files())


def test_a_second_build_reuses_the_cache(cloud_appliance: cloud.CloudAppliance) -> None:
    mtime = cloud_appliance.root.stat().st_mtime_ns
    started = time.monotonic()
    again = cloud.build(cloud_appliance.root.parent)
    assert time.monotonic() - started < 10.0
    assert again == cloud_appliance and again.root.stat().st_mtime_ns == mtime
