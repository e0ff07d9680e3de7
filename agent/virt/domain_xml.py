"""Libvirt domain XML for a DomainSpec, and our ownership metadata read back from it.

Everything here is pure: no libvirt calls, no file access. The XML is built with
ElementTree in a fixed element order, so the same spec always gives the same text
(the golden files in tests/unit/golden/ pin it).

Ownership: every domain we define carries, under ``<metadata>``, an element in our
own namespace (``urn:workspace-service:domain:1``, prefix ``ws``) with the
workspace id, name and hostname (and the limits the domain was defined with, or last
set live: ``<ws:limits cpu_percent=".." .../>``, which the agent compares with the
order's). A restarted agent lists only the domains that
carry it, so it never touches a domain someone else defined on the same host.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import agent.virt.limits as lim
from agent.virt.base import DiskSpec, DomainSpec, NicSpec
from workspace.config import LibvirtConfig
from workspace.domain.netpolicy import Limits
from workspace.errors import DriverError

METADATA_NS = "urn:workspace-service:domain:1"
METADATA_PREFIX = "ws"
# The element under <metadata> that marks a domain as ours.
METADATA_ROOT = "workspace"

# Domain UUIDs derive from the workspace id, so redefining a workspace's domain
# (same name, same UUID) is idempotent without asking libvirt first.
_UUID_NAMESPACE = uuid.UUID("5b0f0f3e-7c1e-4c0a-9d57-2f1b7f6c9a11")

_DISK_FORMATS = frozenset({"raw", "qcow2"})

# The virtio-serial port qemu-ga opens in the guest (/dev/virtio-ports/<name>); libvirt
# talks to it for qemu-agent-command (ws exec) when the name is this one.
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

# The element of our metadata that records the domain's limits.
LIMITS_TAG = "limits"

ET.register_namespace(METADATA_PREFIX, METADATA_NS)


@dataclass(frozen=True)
class Ownership:
    """What our metadata records about a domain."""

    workspace_id: str
    name: str = ""
    hostname: str = ""
    # The limits the domain has (as defined or last set live; none if not recorded).
    limits: Limits = field(default_factory=Limits)


def domain_uuid(workspace_id: str) -> str:
    """The stable libvirt UUID of a workspace's domain."""
    return str(uuid.uuid5(_UUID_NAMESPACE, workspace_id))


def _q(tag: str) -> str:
    return f"{{{METADATA_NS}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _metadata(parent: ET.Element, spec: DomainSpec) -> None:
    md = _sub(parent, "metadata")
    ws = _sub(md, _q(METADATA_ROOT))
    _sub(ws, _q("id"), spec.workspace_id)
    _sub(ws, _q("name"), spec.name)
    _sub(ws, _q("hostname"), spec.hostname)
    if spec.limits:
        _sub(ws, _q(LIMITS_TAG), **lim.limits_attrs(spec.limits))


def _os(parent: ET.Element, spec: DomainSpec, cfg: LibvirtConfig) -> None:
    os_el = _sub(parent, "os")
    type_attrs = {"machine": cfg.machine} if cfg.machine else {}
    _sub(os_el, "type", "hvm", **type_attrs)
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")


def _disk(parent: ET.Element, disk: DiskSpec, limits: Limits) -> None:
    if disk.format not in _DISK_FORMATS:
        # Never let QEMU probe a format: an unknown one is a bug upstream of us.
        raise DriverError(
            f"disk {disk.target}: format {disk.format!r} is not one of {sorted(_DISK_FORMATS)}"
        )
    el = _sub(parent, "disk", type="file", device="disk")
    _sub(el, "driver", name="qemu", type=disk.format)
    _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=disk.target, bus="virtio")
    if disk.readonly:
        _sub(el, "readonly")
    else:
        # Throttle what the guest writes (and reads) of its own disks; the read-only
        # seed and partitions shared read-only are left alone.
        lim.iotune_xml(el, limits)
    if disk.shareable:
        _sub(el, "shareable")


def _nic(parent: ET.Element, nic: NicSpec) -> None:
    el = _sub(parent, "interface", type="bridge")
    _sub(el, "mac", address=nic.mac)
    _sub(el, "source", bridge=nic.bridge)
    if nic.tap:  # the host tap's name: the node's filter rules (agent/net/filter.py) use it
        _sub(el, "target", dev=nic.tap)
    _sub(el, "model", type="virtio")


def _console(parent: ET.Element, spec: DomainSpec) -> None:
    # A pty serial port whose output virtlogd also appends to the log file: the
    # file keeps every boot (reboots and restarts alike) and `virsh console`
    # still works for a person debugging the guest.
    serial = _sub(parent, "serial", type="pty")
    if spec.console_log:
        _sub(serial, "log", file=spec.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(parent, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def _guest_agent(parent: ET.Element) -> None:
    # No <source>: libvirt (since 1.0.6) picks the host side's UNIX socket path itself
    # and connects to it, and adds the virtio-serial controller the port needs.
    # Every domain has it; a guest without qemu-ga simply never answers on it.
    channel = _sub(parent, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)


def build_domain_xml(
    spec: DomainSpec, cfg: LibvirtConfig, uuid_str: str = "", *, cgroup_v2: bool = False
) -> str:
    """The domain XML for ``spec``; ``uuid_str`` overrides the derived UUID;
    ``cgroup_v2``: the host's cgroups are v2 (scales ``<shares>``, agent.virt.limits)."""
    if cfg.virt_type not in {"kvm", "qemu"}:
        raise DriverError(f"libvirt virt_type {cfg.virt_type!r}: use 'kvm' or 'qemu'")
    if spec.cpus < 1 or spec.memory_mib < 1:
        raise DriverError(
            f"workspace {spec.workspace_id}: cpus ({spec.cpus}) and memory_mib "
            f"({spec.memory_mib}) must be at least 1"
        )
    dom = ET.Element("domain", type=cfg.virt_type)
    _sub(dom, "name", spec.domain_name)
    _sub(dom, "uuid", uuid_str or domain_uuid(spec.workspace_id))
    _sub(dom, "title", " ".join((spec.name or spec.workspace_id).split()))
    _metadata(dom, spec)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))
    lim.cputune_xml(dom, spec.limits, cgroup_v2)
    _os(dom, spec, cfg)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    if cfg.emulator:
        _sub(devices, "emulator", cfg.emulator)
    for disk in spec.disks:
        _disk(devices, disk, spec.limits)
    for nic in spec.nics:
        _nic(devices, nic)
    _console(devices, spec)
    _guest_agent(devices)
    _sub(devices, "memballoon", model="none")
    ET.indent(dom, space="  ")
    return ET.tostring(dom, encoding="unicode") + "\n"


def _text(el: ET.Element, tag: str) -> str:
    child = el.find(tag)
    return (child.text or "") if child is not None else ""


def parse_ownership(xml: str) -> Ownership | None:
    """Our ownership record from a domain XML, or None if the domain is not ours.

    Also accepts the bare metadata element as ``virDomainGetMetadata`` returns it
    (libvirt drops the namespace there: the lookup by namespace already matched).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    if root.tag == "domain":
        el = root.find(f"metadata/{_q(METADATA_ROOT)}")
        prefix = f"{{{METADATA_NS}}}"
    elif root.tag in (METADATA_ROOT, _q(METADATA_ROOT)):
        el = root
        prefix = f"{{{METADATA_NS}}}" if root.tag.startswith("{") else ""
    else:
        return None
    if el is None:
        return None
    workspace_id = _text(el, f"{prefix}id").strip()
    if not workspace_id:
        return None
    limits_el = el.find(f"{prefix}{LIMITS_TAG}")
    return Ownership(
        workspace_id=workspace_id,
        name=_text(el, f"{prefix}name"),
        hostname=_text(el, f"{prefix}hostname"),
        limits=lim.limits_from_attrs(dict(limits_el.attrib)) if limits_el is not None else Limits(),
    )


def ownership_xml(own: Ownership) -> str:
    """Our metadata element for ``virDomainSetMetadata`` (libvirt puts it in our
    namespace itself): how a live limit change updates what the domain records."""
    el = ET.Element(METADATA_ROOT)
    _sub(el, "id", own.workspace_id)
    _sub(el, "name", own.name)
    _sub(el, "hostname", own.hostname)
    if own.limits:
        _sub(el, LIMITS_TAG, **lim.limits_attrs(own.limits))
    return ET.tostring(el, encoding="unicode")
