"""Linux bridges for the site networks, with pyroute2; only the named bridge (and the
ports named to ``attach_ports``) is touched.

``netns`` (optional) names a network namespace to work in instead of the caller's own;
it must exist (it is never created here).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from workspace import errors

_EEXIST = 17
_ENODEV = 19
_IFF_UP = 0x1
# An interface name Linux takes (dev_valid_name): "." and ".." it refuses.
_IFNAME = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")


def check_ifname(name: str, what: str = "bridge name") -> None:
    if not _IFNAME.match(name):
        raise errors.InvalidArgument(
            f"{what} {name!r}: 1 to 15 letters, digits, '_', '.', '-', not '.' or '..'"
        )


def open_iproute(netns: str | None) -> IPRoute:
    try:
        return IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except FileNotFoundError as exc:
        raise errors.FailedPrecondition(f"network namespace {netns!r} does not exist") from exc


def link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def lookup_link(ipr: IPRoute, name: str) -> Any | None:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    (link,) = ipr.get_links(indexes[0])
    return link


def ensure_bridge(name: str, address_cidr: str | None = None, *, netns: str | None = None) -> int:
    """Create bridge ``name`` if absent, bring it up, add ``address_cidr`` if absent.

    Idempotent; other addresses and other links are left alone. Returns the ifindex.
    Raises FailedPrecondition if ``name`` exists and is not a bridge.
    """
    check_ifname(name)
    iface = ipaddress.ip_interface(address_cidr) if address_cidr else None
    with open_iproute(netns) as ipr:
        link = lookup_link(ipr, name)
        if link is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != _EEXIST:  # created meanwhile by someone else: fine
                    raise
            link = lookup_link(ipr, name)
            if link is None:
                raise errors.Unavailable(f"bridge {name} vanished right after being created")
        if link_kind(link) != "bridge":
            raise errors.FailedPrecondition(
                f"{name} exists and is a {link_kind(link) or 'physical'} link, not a bridge;"
                " choose another bridge name for the network"
            )
        index = int(link["index"])
        if not link["flags"] & _IFF_UP:
            ipr.link("set", index=index, state="up")
        if iface is not None:
            have = {
                (a.get_attr("IFA_ADDRESS"), int(a["prefixlen"]))
                for a in ipr.get_addr(index=index, family=2 if iface.version == 4 else 10)
            }
            want = (str(iface.ip), iface.network.prefixlen)
            if want not in have:
                try:
                    ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
                except NetlinkError as exc:
                    if exc.code != _EEXIST:
                        raise
        return index


def bridge_exists(name: str, *, netns: str | None = None) -> bool:
    check_ifname(name)
    with open_iproute(netns) as ipr:
        link = lookup_link(ipr, name)
        return link is not None and link_kind(link) == "bridge"


def delete_bridge(name: str, *, netns: str | None = None) -> bool:
    """Delete bridge ``name``; False if it did not exist. Refuses to delete a non-bridge."""
    check_ifname(name)
    with open_iproute(netns) as ipr:
        link = lookup_link(ipr, name)
        if link is None:
            return False
        if link_kind(link) != "bridge":
            raise errors.FailedPrecondition(f"{name} is not a bridge; not deleting it")
        try:
            ipr.link("del", index=int(link["index"]))
        except NetlinkError as exc:
            if exc.code != _ENODEV:
                raise
            return False
        return True


def attach_ports(bridge: str, ports: Iterable[str], *, netns: str | None = None) -> list[str]:
    """Attach to ``bridge`` each of ``ports`` that exists and is attached to nothing (a
    VM's tap left behind when its bridge was deleted and made again: libvirt attaches a
    tap once, when the domain starts). A port absent or attached elsewhere is left alone.
    Returns the ports attached; raises FailedPrecondition if ``bridge`` is not a bridge."""
    check_ifname(bridge)
    wanted = set(ports)
    attached: list[str] = []
    if not wanted:
        return attached
    with open_iproute(netns) as ipr:
        br = lookup_link(ipr, bridge)
        if br is None or link_kind(br) != "bridge":
            raise errors.FailedPrecondition(f"bridge {bridge} does not exist")
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name not in wanted or link.get_attr("IFLA_MASTER"):
                continue
            try:
                ipr.link("set", index=int(link["index"]), master=int(br["index"]))
            except NetlinkError as exc:
                if exc.code == _ENODEV:  # the VM stopped meanwhile
                    continue
                raise
            attached.append(str(name))
    return sorted(attached)
