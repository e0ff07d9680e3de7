"""Domain XML generation against golden files, and the ownership metadata round trip.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_domain_xml.py`` and review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from agent.virt.base import DiskSpec, DomainSpec, NicSpec
from agent.virt.domain_xml import (
    GUEST_AGENT_CHANNEL,
    METADATA_NS,
    Ownership,
    build_domain_xml,
    domain_uuid,
    ownership_xml,
    parse_ownership,
)
from agent.virt.limits import block_params, scheduler_params
from agent.virt.netshape import ruleset
from workspace.config import LibvirtConfig
from workspace.domain.netpolicy import Limits
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


# -- limits (agent/virt/limits.py) ------------------------------------------------------

LIMITED = replace(
    WITH_SEED,
    disks=(
        *WITH_SEED.disks,
        DiskSpec("/var/lib/workspace/agent/cache/blobs/sha256/cd34", "raw", "vdc", True, True),
        DiskSpec("/var/lib/workspace/agent/disks/w-0003/scratch.qcow2", "qcow2", "vdd"),
    ),
    nics=(*WITH_SEED.nics, NicSpec(mac="52:54:00:00:01:03", bridge="wsbr-storage")),
    limits=Limits(cpu_percent=25, cpu_weight=200, disk_mbps=10, disk_iops=500, net_mbps=20),
)


def test_golden_limits() -> None:
    check_golden("limits_qemu.xml", build_domain_xml(LIMITED, QEMU))


def test_cpu_limits_map_to_cputune() -> None:
    root = ET.fromstring(build_domain_xml(LIMITED, QEMU))
    assert root.findtext("cputune/period") == "100000"
    assert root.findtext("cputune/quota") == "25000"  # per vCPU: 25 % of a host CPU
    assert root.findtext("cputune/shares") == "2048"  # cgroup v1: weight 200 = 2x 1024
    v2 = ET.fromstring(build_domain_xml(LIMITED, QEMU, cgroup_v2=True))
    assert v2.findtext("cputune/shares") == "200"  # cgroup v2: cpu.weight as is
    only_weight = replace(LIMITED, limits=Limits(cpu_weight=50))
    tune = ET.fromstring(build_domain_xml(only_weight, QEMU)).find("cputune")
    assert tune is not None and [c.tag for c in tune] == ["shares"]


def test_iotune_on_every_writable_disk_only() -> None:
    root = ET.fromstring(build_domain_xml(LIMITED, QEMU))
    tuned = {
        d.find("target").get("dev"): d.find("iotune")  # type: ignore[union-attr]
        for d in root.findall("devices/disk")
    }
    assert tuned["vdb"] is None and tuned["vdc"] is None  # the seed, a shared partition
    for dev in ("vda", "vdd"):
        tune = tuned[dev]
        assert tune is not None
        assert tune.findtext("total_bytes_sec") == "10000000"
        assert tune.findtext("total_iops_sec") == "500"


def test_no_bandwidth_element_nics_are_policed_by_nftables() -> None:
    # libvirt's <bandwidth> needs tc's sfq and police, which some kernels lack (a
    # domain with it then does not start): agent/virt/netshape.py polices the taps.
    root = ET.fromstring(build_domain_xml(LIMITED, QEMU))
    assert len(root.findall("devices/interface")) == 2
    assert root.find(".//bandwidth") is None


def test_tap_policers() -> None:
    HEAD = "table bridge ws_shape\ndelete table bridge ws_shape\n"
    text = ruleset({"wst0123456789a0": 20, "wstffff0": 0, "vnet3": 1})
    assert text.startswith(HEAD)
    assert "wstffff0" not in text  # 0 = not limited
    # 20 Mbit/s = 2 500 000 bytes/s, a burst of 100 ms of it; 1 Mbit/s: at least 64 KiB.
    assert "limit wst0123456789a0_in { rate over 2500000 bytes/second burst 250000 bytes }" in text
    assert "limit vnet3_out { rate over 125000 bytes/second burst 65536 bytes }" in text
    assert 'iifname "vnet3" limit name "vnet3_out" drop' in text
    assert 'oifname "vnet3" limit name "vnet3_in" drop' in text
    for chain in ("forward", "input", "output"):
        assert f"type filter hook {chain} priority 0; policy accept;" in text
    assert ruleset({}) == HEAD


def test_no_limits_no_elements() -> None:
    root = ET.fromstring(build_domain_xml(WITH_SEED, QEMU))
    assert root.find("cputune") is None
    assert root.find(".//iotune") is None and root.find(".//bandwidth") is None
    assert root.find(f"metadata/{{{METADATA_NS}}}workspace/{{{METADATA_NS}}}limits") is None


def test_limits_recorded_in_ownership() -> None:
    own = parse_ownership(build_domain_xml(LIMITED, QEMU))
    assert own is not None and own.limits == LIMITED.limits
    assert parse_ownership(build_domain_xml(WITH_SEED, QEMU)) == Ownership(
        "w-0003", "cloud-box", "cloud-box"
    )
    # What a live change writes back with virDomainSetMetadata reads the same.
    changed = Ownership("w-0003", "cloud-box", "cloud-box", Limits(net_mbps=5))
    assert parse_ownership(ownership_xml(changed)) == changed
    assert parse_ownership(ownership_xml(Ownership("w-1"))) == Ownership("w-1")


def test_live_parameters_clear_what_is_unset() -> None:
    v1 = scheduler_params(Limits(cpu_percent=30), v2=False)
    assert v1 == {"cpu_shares": 1024, "vcpu_period": 100000, "vcpu_quota": 30000}
    assert scheduler_params(Limits(), v2=True) == {
        "cpu_shares": 100,
        "vcpu_period": 100000,
        "vcpu_quota": -1,
    }
    assert block_params(Limits(disk_mbps=3)) == {"total_bytes_sec": 3000000, "total_iops_sec": 0}
