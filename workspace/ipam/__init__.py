"""IP pools: pure address arithmetic with netaddr (the store enforces uniqueness)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import netaddr

from workspace.errors import InvalidArgument

_MAX_RANGE = 1 << 20
# Addresses no guest can be given: a node holds its network's gateway on a bridge, so a
# subnet among them would shadow its own loopback, link-local or multicast routes.
_NOT_GUESTS = (
    ("reserved", netaddr.IPNetwork("0.0.0.0/8")),
    ("loopback", netaddr.IPNetwork("127.0.0.0/8")),
    ("link-local", netaddr.IPNetwork("169.254.0.0/16")),
    ("multicast", netaddr.IPNetwork("224.0.0.0/4")),
    ("reserved", netaddr.IPNetwork("240.0.0.0/4")),
)


@dataclass(frozen=True)
class Pool:
    subnet: str
    gateway: str
    range_start: str
    range_end: str
    mac_prefix: str

    @property
    def prefix_len(self) -> int:
        return prefix_len(self.subnet)


def validate_network(
    name: str,
    subnet: str,
    gateway: str = "",
    range_start: str = "",
    range_end: str = "",
    mac_prefix: str = "",
) -> Pool:
    """Check a network definition and fill in defaults; raises InvalidArgument."""
    try:
        net = netaddr.IPNetwork(subnet)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"network {name}: subnet {subnet!r} is not a CIDR") from exc
    if net.version != 4:
        raise InvalidArgument(f"network {name}: only IPv4 subnets are supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"network {name}: subnet {subnet} is too small (use /30 or wider)")
    if net.ip != net.network:
        raise InvalidArgument(f"network {name}: {subnet} has host bits set; use {net.cidr}")

    def addr(value: str, what: str) -> netaddr.IPAddress:
        try:
            ip = netaddr.IPAddress(value)
        except (netaddr.AddrFormatError, ValueError) as exc:
            raise InvalidArgument(f"network {name}: {what} {value!r} is not an address") from exc
        if ip.version != 4:
            raise InvalidArgument(
                f"network {name}: {what} {ip} is not an IPv4 address (pools are IPv4 only)"
            )
        if ip not in net or ip in (net.network, net.broadcast):
            raise InvalidArgument(f"network {name}: {what} {ip} is not a host of {net.cidr}")
        return ip

    gw = addr(gateway, "gateway") if gateway else net.network + 1
    # Default range: every host address; the gateway is skipped when allocating.
    first = addr(range_start, "range start") if range_start else net.network + 1
    last = addr(range_end, "range end") if range_end else net.broadcast - 1
    if first == gw and not range_start and first < last:
        first = gw + 1  # the usual layout: gateway first, pool after it
    if first > last:
        raise InvalidArgument(f"network {name}: range {first}-{last} is empty")
    if int(last) - int(first) >= _MAX_RANGE:
        raise InvalidArgument(
            f"network {name}: range {first}-{last} is larger than {_MAX_RANGE} addresses; "
            "give a smaller one (--range START-END)"
        )
    prefix = (mac_prefix or "52:54:00").lower()
    parts = prefix.split(":")
    if len(parts) != 3 or not all(
        len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts
    ):
        raise InvalidArgument(f"network {name}: MAC prefix {mac_prefix!r} must be 3 hex octets")
    if int(parts[0], 16) & 1:
        raise InvalidArgument(f"network {name}: MAC prefix {mac_prefix} is a multicast prefix")
    return Pool(str(net.cidr), str(gw), str(first), str(last), prefix)


def check_usable(name: str, pool: Pool) -> None:
    """Refuse (InvalidArgument) a valid pool that cannot serve guests: a subnet of
    addresses no guest can have (the node holds the gateway on its bridge, which would
    shadow its own loopback, link-local or multicast routes), or a range of the gateway
    alone."""
    net = netaddr.IPNetwork(pool.subnet)
    for what, block in _NOT_GUESTS:
        if net.first <= block.last and block.first <= net.last:
            raise InvalidArgument(
                f"network {name}: subnet {net.cidr} is {what} (it overlaps {block}); give "
                "a unicast one, e.g. of 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
            )
    if pool_size(pool) < 1:
        raise InvalidArgument(
            f"network {name}: range {pool.range_start}-{pool.range_end} holds no address "
            "but the gateway's"
        )


def pick_address(pool: Pool, used: set[str]) -> str | None:
    """The lowest free address of the range, skipping the gateway; None if exhausted."""
    return pick_address_int(pool, sorted(int(netaddr.IPAddress(u)) for u in used))


def pick_address_int(pool: Pool, used_sorted: list[int]) -> str | None:
    """The lowest free address of the range, skipping the gateway; None if exhausted.

    ``used_sorted``: the allocated addresses as ascending integers (the store keeps them so:
    nothing is parsed on the hot path)."""
    first = int(netaddr.IPAddress(pool.range_start))
    last = int(netaddr.IPAddress(pool.range_end))
    gw = int(netaddr.IPAddress(pool.gateway))
    candidate = first
    for value in used_sorted:
        if candidate == gw:
            candidate += 1
        if value > candidate:
            break
        if value == candidate:
            candidate += 1
    if candidate == gw:
        candidate += 1
    if candidate > last:
        return None
    return str(netaddr.IPAddress(candidate))


def make_mac(prefix: str, rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return prefix + "".join(f":{r.randrange(256):02x}" for _ in range(3))


# A MAC prefix is 3 octets: 24 bits of suffix per prefix.
MAC_SUFFIXES = 1 << 24


def mac_of(prefix: str, n: int) -> str:
    """The MAC of ``prefix`` (3 octets) whose suffix is ``n`` modulo 2**24 (a counter
    past its last suffix starts again from the first)."""
    n %= MAC_SUFFIXES
    return f"{prefix}:{n >> 16:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"


def mac_suffix(mac: str) -> int:
    """The 24-bit suffix of ``mac`` (its last 3 octets)."""
    return int(mac[-8:].replace(":", ""), 16)


def pool_size(pool: Pool) -> int:
    first = int(netaddr.IPAddress(pool.range_start))
    last = int(netaddr.IPAddress(pool.range_end))
    gw = int(netaddr.IPAddress(pool.gateway))
    return last - first + 1 - (1 if first <= gw <= last else 0)


def prefix_len(subnet: str) -> int:
    """The prefix length of ``subnet`` (e.g. 24 for 10.0.0.0/24)."""
    return int(netaddr.IPNetwork(subnet).prefixlen)
