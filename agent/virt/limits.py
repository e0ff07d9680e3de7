"""A workspace's Limits in libvirt's terms: the domain XML elements and the live-API
parameters, one mapping for both (docs/design/limits.md).

* ``cpu_percent`` -> ``<cputune><period>`` 100 ms and ``<quota>`` pct % of it: a CFS
  bandwidth limit on *each vCPU thread* (each vCPU gets pct % of one host CPU).
* ``cpu_weight`` -> ``<cputune><shares>``: libvirt writes it to ``cpu.weight`` on a
  cgroup v2 host (1..10000, 100 = normal) and to ``cpu.shares`` on a v1 host
  (2..262144, 1024 = normal), so on v1 the weight is scaled by 1024/100.
* ``disk_mbps``/``disk_iops`` -> ``<iotune><total_bytes_sec>``/``<total_iops_sec>`` on
  every writable disk (QEMU's block throttling; read + write together).
* ``net_mbps`` is not in the domain XML: libvirt's ``<bandwidth>`` needs tc modules
  (sfq, the police action) that not every kernel has, and a domain with it then does not
  start at all; the driver polices each tap with nftables instead (agent/virt/netshape.py).

Pure: no libvirt calls.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from workspace.domain.netpolicy import Limits

CPU_PERIOD_US = 100_000
# No CFS quota (cgroup "max"): what a removed cpu_percent is set back to.
NO_QUOTA = -1
# The default shares of a cgroup: v2 cpu.weight, v1 cpu.shares.
DEFAULT_SHARES = {True: 100, False: 1024}


def cgroup_v2() -> bool:
    """True when this host's cgroups are the unified (v2) hierarchy."""
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def cpu_quota_us(percent: int) -> int:
    """The per-vCPU CFS quota (µs per ``CPU_PERIOD_US``) of ``percent`` % of a CPU."""
    return CPU_PERIOD_US * percent // 100


def cpu_shares(weight: int, v2: bool) -> int:
    """libvirt's ``shares`` for a cpu_weight (100 = normal) on a v1 or v2 host."""
    if v2:
        return weight
    return max(2, weight * DEFAULT_SHARES[False] // DEFAULT_SHARES[True])


def bytes_per_s(mbps: int) -> int:
    """MB/s (10^6 bytes, as dd and fio print them) in bytes/s."""
    return mbps * 1_000_000


# -- the domain XML ---------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def cputune_xml(dom: ET.Element, limits: Limits, v2: bool) -> None:
    """``<cputune>`` under ``dom`` for the CPU limits (nothing when there are none)."""
    if not (limits.cpu_percent or limits.cpu_weight):
        return
    tune = _sub(dom, "cputune")
    if limits.cpu_weight:
        _sub(tune, "shares", str(cpu_shares(limits.cpu_weight, v2)))
    if limits.cpu_percent:
        _sub(tune, "period", str(CPU_PERIOD_US))
        _sub(tune, "quota", str(cpu_quota_us(limits.cpu_percent)))


def iotune_xml(disk: ET.Element, limits: Limits) -> None:
    """``<iotune>`` in a (writable) ``<disk>`` for the disk limits."""
    if not (limits.disk_mbps or limits.disk_iops):
        return
    tune = _sub(disk, "iotune")
    if limits.disk_mbps:
        _sub(tune, "total_bytes_sec", str(bytes_per_s(limits.disk_mbps)))
    if limits.disk_iops:
        _sub(tune, "total_iops_sec", str(limits.disk_iops))


# -- the live API (virDomainSetSchedulerParametersFlags and friends) ---------------------


def scheduler_params(limits: Limits, v2: bool) -> dict[str, Any]:
    """``setSchedulerParametersFlags`` parameters; an unset limit is set back to none."""
    return {
        "cpu_shares": cpu_shares(limits.cpu_weight, v2)
        if limits.cpu_weight
        else DEFAULT_SHARES[v2],
        "vcpu_period": CPU_PERIOD_US,
        "vcpu_quota": cpu_quota_us(limits.cpu_percent) if limits.cpu_percent else NO_QUOTA,
    }


def block_params(limits: Limits) -> dict[str, Any]:
    """``setBlockIoTune`` parameters (0 = no limit)."""
    return {
        "total_bytes_sec": bytes_per_s(limits.disk_mbps),
        "total_iops_sec": limits.disk_iops,
    }


# -- recorded in our metadata ----------------------------------------------------------


def limits_attrs(limits: Limits) -> dict[str, str]:
    """The limits as XML attributes (only the set ones)."""
    return {k: str(v) for k, v in limits.as_dict().items() if v}


def limits_from_attrs(attrs: dict[str, str]) -> Limits:
    """The inverse of ``limits_attrs`` (unknown or malformed attributes are ignored)."""
    values: dict[str, int] = {}
    for k, v in attrs.items():
        try:
            values[k] = int(v)
        except ValueError:
            continue
    return Limits.from_dict(values)
