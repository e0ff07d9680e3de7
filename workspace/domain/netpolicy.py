"""What a workspace may reach and what it was promised: connectivity, allow rules, limits.

Pure values with their parsing and validation; the service stores them per workspace,
sends them to the node in the order, and the agent enforces them (nftables for the
policy, libvirt ``cputune``/``iotune``/``bandwidth`` for the limits).

* ``Connectivity.OPEN``: as a plain bridge (anti-spoofing still applies).
* ``Connectivity.CLUSTER``: only the members of the same cluster, the gateway and DHCP,
  both ways, and port 53 of its network's DNS servers, out (plus what allow rules open,
  and the replies to it).
* ``Connectivity.OUTBOUND``: may open connections out; nothing new comes in (replies
  to its own connections do), except what allow rules open.

Allow rules are written ``PROTO[/PORTS][:CIDR]``: ``tcp/22``, ``udp/5000-5010``,
``tcp/8000-8100:10.0.0.0/8``, ``icmp``, ``any:10.1.0.0/16``. They open *incoming*
connections to the workspace; outgoing traffic is governed by the connectivity alone.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import netaddr

from workspace.errors import InvalidArgument

__all__ = ["LIMIT_RANGES", "AllowRule", "Connectivity", "Limits", "parse_rules"]


class Connectivity(enum.Enum):
    OPEN = "open"
    CLUSTER = "cluster"
    OUTBOUND = "outbound"

    @classmethod
    def parse(cls, text: str, *, default: Connectivity | None = None) -> Connectivity:
        """``text`` as a connectivity; "" gives ``default`` (OPEN if none)."""
        if not text:
            return default or cls.OPEN
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InvalidArgument(
                f"connectivity {text!r}: use one of {', '.join(c.value for c in cls)}"
            ) from None


_PROTOCOLS = ("tcp", "udp", "icmp", "any")
_RULE = re.compile(r"^(?P<proto>[a-z]+)(?:/(?P<ports>[0-9]+(?:-[0-9]+)?))?(?::(?P<cidr>.+))?\Z")
MAX_RULES = 64


@dataclass(frozen=True, order=True)
class AllowRule:
    """Incoming traffic opened: a protocol, a port range (tcp/udp; 0-0 = every port)
    and the sources it may come from."""

    protocol: str  # tcp | udp | icmp | any
    port_min: int = 0
    port_max: int = 0
    source: str = "0.0.0.0/0"  # a normalized IPv4 CIDR

    def __str__(self) -> str:
        text = self.protocol
        if self.port_min:
            text += f"/{self.port_min}"
            if self.port_max != self.port_min:
                text += f"-{self.port_max}"
        if self.source != "0.0.0.0/0":
            text += f":{self.source}"
        return text

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """Parse ``PROTO[/PORT[-PORT]][:CIDR]``; InvalidArgument naming the rule if bad."""
        raw = text.strip()
        m = _RULE.match(raw.lower())
        where = f"allow rule {text!r}"
        if not m:
            raise InvalidArgument(
                f"{where}: write PROTO[/PORT[-PORT]][:CIDR], e.g. tcp/22 or "
                "tcp/8000-8100:10.0.0.0/8"
            )
        proto = m["proto"]
        if proto not in _PROTOCOLS:
            raise InvalidArgument(f"{where}: protocol {proto!r} is not one of {_PROTOCOLS}")
        lo = hi = 0
        if m["ports"]:
            if proto not in ("tcp", "udp"):
                raise InvalidArgument(f"{where}: only tcp and udp rules take ports")
            lo_s, _, hi_s = m["ports"].partition("-")
            lo = int(lo_s)
            hi = int(hi_s) if hi_s else lo
            if not 1 <= lo <= hi <= 65535:
                raise InvalidArgument(f"{where}: ports must be 1-65535, low before high")
        source = "0.0.0.0/0"
        if m["cidr"]:
            try:
                net = netaddr.IPNetwork(m["cidr"])
            except (netaddr.AddrFormatError, ValueError):
                raise InvalidArgument(f"{where}: {m['cidr']!r} is not an IPv4 CIDR") from None
            if net.version != 4 or "/" not in m["cidr"]:
                raise InvalidArgument(f"{where}: {m['cidr']!r} is not an IPv4 CIDR")
            if net.ip != net.network:  # as a network's subnet: not silently widened
                raise InvalidArgument(f"{where}: {m['cidr']} has host bits set; use {net.cidr}")
            source = str(net.cidr)
        return cls(proto, lo, hi, source)


def parse_rules(texts: Iterable[str]) -> tuple[AllowRule, ...]:
    """Parse, de-duplicate and sort allow rules (a canonical form for storing/comparing)."""
    rules = sorted({AllowRule.parse(t) for t in texts if t.strip()})
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"{len(rules)} allow rules: at most {MAX_RULES}")
    return tuple(rules)


# name -> (minimum, maximum) when set; 0 always means "not limited" / "the default".
LIMIT_RANGES: Mapping[str, tuple[int, int]] = {
    "cpu_percent": (1, 100),  # CFS quota: % of each vCPU's time
    "cpu_weight": (1, 10000),  # relative CPU shares (cgroup v2 cpu.weight; 100 = normal)
    "disk_mbps": (1, 100_000),  # MB/s per disk, read + write (libvirt iotune)
    "disk_iops": (1, 10_000_000),  # I/O operations per second per disk
    "net_mbps": (1, 400_000),  # Mbit/s per NIC, each direction (libvirt bandwidth)
}


@dataclass(frozen=True)
class Limits:
    """Resource limits of a workspace; 0 = none (or, in a request, the default)."""

    cpu_percent: int = 0
    cpu_weight: int = 0
    disk_mbps: int = 0
    disk_iops: int = 0
    net_mbps: int = 0

    def validate(self, where: str = "limits", flag: str = "--") -> Limits:
        """Self if every set limit is in range; InvalidArgument naming the limit if not
        (as the option ``flag`` + its name sets it: --cpu-percent, --default-cpu-percent)."""
        for name in _LIMIT_NAMES:
            value = getattr(self, name)
            lo, hi = LIMIT_RANGES[name]
            if value != 0 and not lo <= value <= hi:
                option = flag + name.replace("_", "-")
                raise InvalidArgument(f"{where}: {option} {value} is out of range {lo}..{hi}")
        return self

    def over(self, defaults: Limits) -> Limits:
        """These limits, each unset one taken from ``defaults``."""
        if not defaults:
            return self
        return Limits(*(getattr(self, n) or getattr(defaults, n) for n in _LIMIT_NAMES))

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in _LIMIT_NAMES}

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> Limits:
        return cls(**{k: int(v) for k, v in d.items() if k in _LIMIT_NAMES})

    def __bool__(self) -> bool:
        return any(getattr(self, n) for n in _LIMIT_NAMES)


# Limits' fields, in order (looked up on every create: ``fields`` costs each time).
_LIMIT_NAMES = tuple(f.name for f in fields(Limits))


@dataclass(frozen=True)
class PolicyUpdate:
    """`ws update`: what changes on a live workspace. ``connectivity`` None and
    ``allow`` None leave them as they are (``allow`` () removes every rule); each
    non-zero limit replaces the workspace's; a non-zero ``cpus`` or ``memory_mib``
    resizes a stopped one."""

    ref: str
    connectivity: Connectivity | None = None
    allow: tuple[AllowRule, ...] | None = None
    limits: Limits = Limits()
    # Limits put back to their default (the project's, else the site's).
    reset: tuple[str, ...] = ()
    # A new size (0: unchanged); only while STOPPED (ops/resize.py).
    cpus: int = 0
    memory_mib: int = 0

    def __post_init__(self) -> None:
        for name in self.reset:
            if name not in LIMIT_RANGES:
                raise InvalidArgument(
                    f"reset {name!r}: not a limit; use one of {', '.join(LIMIT_RANGES)}"
                )
            if getattr(self.limits, name):
                raise InvalidArgument(f"{name}: give a new value or reset it, not both")
