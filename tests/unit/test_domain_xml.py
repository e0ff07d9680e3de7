"""Domain XML generation against golden files, and the ownership metadata round trip.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_domain_xml.py`` and review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.virt.base import DiskSpec, DomainSpec, NicSpec
from agent.virt.domain_xml import (
    GUEST_AGENT_CHANNEL,
    METADATA_NS,
    Ownership,
    build_domain_xml,
    domain_uuid,
    parse_ownership,
)
from workspace.config import LibvirtConfig
from workspace.errors import DriverError

GOLDEN = Path(__file__).parent / "golden"

DIRECT_BOOT = DomainSpec(
    workspace_id="w-0001",
    name="analysis-node",
    cpus=2,
    memory_mib=1024,
    disks=(DiskSpec("/var/lib/workspace/agent/disks/w-0001/vda.qcow2", "qcow2", "vda"),),
    nics=(
        NicSpec(
            mac="52:54:00:00:00:01", bridge="wsbr-default", ip="10.10.0.11", tap="wst0123456789a0"
        ),
        NicSpec(
            mac="52:54:00:00:01:01", bridge="wsbr-storage", ip="10.20.0.11", tap="wst0123456789a1"
        ),
    ),
    kernel="/var/lib/workspace/agent/boot/vmlinuz",
    initrd="/var/lib/workspace/agent/boot/initrd.gz",
    cmdline="console=ttyS0 quiet",
    console_log="/var/lib/workspace/agent/console/w-0001.log",
    hostname="analysis-node.site",
)

DISK_BOOT = DomainSpec(
    workspace_id="w-0002",
    name="batch-worker",
    cpus=1,
    memory_mib=512,
    disks=(
        DiskSpec("/var/lib/workspace/agent/disks/w-0002/vda.qcow2", "qcow2", "vda"),
        DiskSpec(
            "/var/lib/workspace/agent/cache/blobs/sha256/ab12",
            "raw",
            "vdb",
            readonly=True,
            shareable=True,
        ),
    ),
    console_log="/var/lib/workspace/agent/console/w-0002.log",
    hostname="batch-worker",
)

WITH_SEED = DomainSpec(
    workspace_id="w-0003",
    name="cloud-box",
    cpus=1,
    memory_mib=1024,
    disks=(
        DiskSpec("/var/lib/workspace/agent/disks/w-0003/root.qcow2", "qcow2", "vda"),
        DiskSpec("/var/lib/workspace/agent/disks/w-0003/seed.iso", "raw", "vdb", readonly=True),
    ),
    nics=(NicSpec(mac="52:54:00:00:00:03", bridge="wsbr-default", ip="10.10.0.13"),),
    console_log="/var/lib/workspace/agent/disks/w-0003/console.log",
    hostname="cloud-box",
)

QEMU = LibvirtConfig(virt_type="qemu")
KVM = LibvirtConfig(virt_type="kvm", emulator="/usr/bin/qemu-system-x86_64")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; UPDATE_GOLDEN=1 regenerates it"


@pytest.mark.parametrize(
    ("golden", "spec", "cfg"),
    [
        ("direct_boot_2nics_qemu.xml", DIRECT_BOOT, QEMU),
        ("direct_boot_2nics_kvm.xml", DIRECT_BOOT, KVM),
        ("disk_boot_cow_readonly_kvm.xml", DISK_BOOT, KVM),
        ("disk_boot_seed_qemu.xml", WITH_SEED, QEMU),
    ],
)
def test_golden(golden: str, spec: DomainSpec, cfg: LibvirtConfig) -> None:
    check_golden(golden, build_domain_xml(spec, cfg))


def test_kvm_and_qemu_differ_only_in_type_and_emulator() -> None:
    qemu = ET.fromstring(build_domain_xml(DIRECT_BOOT, QEMU))
    kvm = ET.fromstring(build_domain_xml(DIRECT_BOOT, LibvirtConfig(virt_type="kvm")))
    assert qemu.get("type") == "qemu"
    assert kvm.get("type") == "kvm"
    kvm.set("type", "qemu")
    assert ET.tostring(kvm) == ET.tostring(qemu)
    with_emulator = ET.fromstring(build_domain_xml(DIRECT_BOOT, KVM))
    assert with_emulator.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert qemu.find("devices/emulator") is None


def test_direct_boot_and_disk_boot() -> None:
    direct = ET.fromstring(build_domain_xml(DIRECT_BOOT, QEMU))
    assert direct.findtext("os/kernel") == DIRECT_BOOT.kernel
    assert direct.findtext("os/initrd") == DIRECT_BOOT.initrd
    assert direct.findtext("os/cmdline") == DIRECT_BOOT.cmdline
    assert direct.find("os/boot") is None
    disk = ET.fromstring(build_domain_xml(DISK_BOOT, QEMU))
    assert disk.find("os/kernel") is None
    boot = disk.find("os/boot")
    assert boot is not None and boot.get("dev") == "hd"


def test_disks_always_name_their_format() -> None:
    root = ET.fromstring(build_domain_xml(DISK_BOOT, QEMU))
    disks = root.findall("devices/disk")
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "raw"]  # type: ignore[union-attr]
    assert disks[0].find("readonly") is None and disks[0].find("shareable") is None
    assert disks[1].find("readonly") is not None and disks[1].find("shareable") is not None
    bad = DomainSpec("w-3", "bad", 1, 64, disks=(DiskSpec("/x", "", "vda"),))
    with pytest.raises(DriverError, match="format"):
        build_domain_xml(bad, QEMU)


def test_the_seed_is_a_read_only_raw_virtio_disk_not_shared() -> None:
    root = ET.fromstring(build_domain_xml(WITH_SEED, QEMU))
    seed = root.findall("devices/disk")[-1]
    assert seed.get("device") == "disk"
    assert seed.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert seed.find("target").attrib == {"dev": "vdb", "bus": "virtio"}  # type: ignore[union-attr]
    assert seed.find("readonly") is not None and seed.find("shareable") is None


@pytest.mark.parametrize("spec", [DIRECT_BOOT, DISK_BOOT, WITH_SEED])
def test_every_domain_has_the_guest_agent_channel(spec: DomainSpec) -> None:
    root = ET.fromstring(build_domain_xml(spec, QEMU))
    channels = root.findall("devices/channel")
    assert len(channels) == 1
    channel = channels[0]
    assert channel.get("type") == "unix"
    target = channel.find("target")
    assert target is not None
    assert target.attrib == {"type": "virtio", "name": GUEST_AGENT_CHANNEL}
    assert GUEST_AGENT_CHANNEL == "org.qemu.guest_agent.0"
    # libvirt picks the socket path and adds the virtio-serial controller itself.
    assert channel.find("source") is None
    assert root.find("devices/controller") is None


def test_invalid_size_and_virt_type_rejected() -> None:
    with pytest.raises(DriverError, match="cpus"):
        build_domain_xml(DomainSpec("w-3", "x", 0, 64), QEMU)
    with pytest.raises(DriverError, match="virt_type"):
        build_domain_xml(DISK_BOOT, LibvirtConfig(virt_type="lxc"))


def test_lifecycle_console_and_no_graphics() -> None:
    root = ET.fromstring(build_domain_xml(DIRECT_BOOT, QEMU))
    assert root.findtext("name") == "ws-w-0001"
    assert root.find("features/acpi") is not None
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.findtext("on_crash") == "destroy"
    assert root.find("devices/graphics") is None
    log = root.find("devices/serial/log")
    assert log is not None
    assert log.get("file") == DIRECT_BOOT.console_log and log.get("append") == "on"
    nics = root.findall("devices/interface")
    assert [n.find("mac").get("address") for n in nics] == [  # type: ignore[union-attr]
        "52:54:00:00:00:01",
        "52:54:00:00:01:01",
    ]


def test_uuid_is_stable_and_overridable() -> None:
    root = ET.fromstring(build_domain_xml(DIRECT_BOOT, QEMU))
    assert root.findtext("uuid") == domain_uuid("w-0001") == domain_uuid("w-0001")
    assert domain_uuid("w-0001") != domain_uuid("w-0002")
    other = "00000000-0000-4000-8000-000000000001"
    assert ET.fromstring(build_domain_xml(DIRECT_BOOT, QEMU, other)).findtext("uuid") == other


def test_ownership_round_trip() -> None:
    xml = build_domain_xml(DIRECT_BOOT, QEMU)
    assert parse_ownership(xml) == Ownership("w-0001", "analysis-node", "analysis-node.site")


def test_ownership_from_libvirt_forms() -> None:
    # libvirt's XMLDesc keeps the namespace, possibly with its own prefix...
    dumped = (
        "<domain type='kvm'><name>ws-w-9</name><metadata>"
        f"<other:workspace xmlns:other='{METADATA_NS}'><other:id>w-9</other:id>"
        "<other:name>n</other:name><other:hostname>h</other:hostname></other:workspace>"
        "</metadata></domain>"
    )
    assert parse_ownership(dumped) == Ownership("w-9", "n", "h")
    # ...while virDomainGetMetadata returns the element without it.
    bare = "<workspace>\n  <id>w-9</id>\n  <name>n</name>\n  <hostname/>\n</workspace>"
    assert parse_ownership(bare) == Ownership("w-9", "n", "")


@pytest.mark.parametrize(
    "xml",
    [
        "<domain type='kvm'><name>ws-x</name></domain>",
        "<domain type='kvm'><metadata><workspace><id>x</id></workspace></metadata></domain>",
        f"<domain><metadata><ws:workspace xmlns:ws='{METADATA_NS}'/></metadata></domain>",
        "<nonsense/>",
        "not xml at all",
    ],
)
def test_foreign_domains_are_not_ours(xml: str) -> None:
    assert parse_ownership(xml) is None
