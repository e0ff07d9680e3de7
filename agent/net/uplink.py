"""Uplinks: the host interface (or its VLAN sub-interface) that joins a bridge to the
site's L2, with pyroute2. Only the named uplink and its sub-interface are touched.

``ensure_uplink(bridge, "eth1", 0)`` attaches eth1 itself to the bridge;
``ensure_uplink(bridge, "eth1", 100)`` creates ``eth1.100`` (802.1Q id 100 on eth1) if
absent and attaches that, so two networks with different VLANs share one trunk port.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from agent.net.bridge import check_ifname, link_kind, lookup_link, open_iproute
from workspace import errors

_EEXIST = 17
_EOPNOTSUPP = 95
_IFF_UP = 0x1
MAX_IFNAME = 15


def vlan_ifname(uplink: str, vlan: int) -> str:
    """The name of ``uplink``'s sub-interface for ``vlan``: ``<uplink>.<vlan>``, or a
    short stable name (``wsu`` + 6 hex of the uplink + ``.<vlan>``) if that is too long
    for Linux (15 characters)."""
    name = f"{uplink}.{vlan}"
    if len(name) <= MAX_IFNAME:
        return name
    digest = hashlib.sha256(uplink.encode()).hexdigest()[:6]
    return f"wsu{digest}.{vlan}"


def _vlan_of(link: Any) -> tuple[int, int] | None:
    """(parent ifindex, vlan id) of a vlan link, None for any other kind."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    vid = data.get_attr("IFLA_VLAN_ID") if data is not None else None
    return int(link.get_attr("IFLA_LINK") or 0), int(vid or 0)


def _where(node: str) -> str:
    return f" on node {node}" if node else ""


def ensure_uplink(
    bridge: str, uplink: str, vlan: int = 0, *, netns: str | None = None, node: str = ""
) -> str:
    """Attach ``uplink`` (vlan 0) or its sub-interface for ``vlan`` to ``bridge`` and
    bring it up. Idempotent. Returns the name of the port attached to the bridge.

    FailedPrecondition (and nothing changed) when the uplink or the bridge does not
    exist, when the port is already attached to another bridge (never stolen), or when
    the sub-interface's name is taken by something else.
    """
    check_ifname(bridge)
    check_ifname(uplink, "uplink")
    if not 0 <= vlan <= 4094:
        raise errors.InvalidArgument(f"VLAN id {vlan}: use 1-4094 (0 = untagged)")
    with open_iproute(netns) as ipr:
        parent = lookup_link(ipr, uplink)
        if parent is None:
            raise errors.FailedPrecondition(f"uplink {uplink} does not exist{_where(node)}")
        br = lookup_link(ipr, bridge)
        if br is None or link_kind(br) != "bridge":
            raise errors.FailedPrecondition(f"bridge {bridge} does not exist{_where(node)}")
        br_index = int(br["index"])
        parent_index = int(parent["index"])
        if link_kind(parent) == "bridge":
            raise errors.FailedPrecondition(
                f"uplink {uplink}{_where(node)} is a bridge; name a physical, bond or veth"
                " interface"
            )
        if vlan == 0:
            port = parent
        else:
            name = vlan_ifname(uplink, vlan)
            port = lookup_link(ipr, name)
            if port is None:
                try:
                    ipr.link("add", ifname=name, kind="vlan", link=parent_index, vlan_id=vlan)
                except NetlinkError as exc:
                    if exc.code == _EOPNOTSUPP:
                        raise errors.FailedPrecondition(
                            f"cannot create VLAN {vlan} on uplink {uplink}{_where(node)}: the"
                            " kernel has no 802.1Q VLAN support (modprobe 8021q;"
                            " CONFIG_VLAN_8021Q)"
                        ) from exc
                    if exc.code != _EEXIST:
                        raise errors.FailedPrecondition(
                            f"cannot create VLAN {vlan} on uplink {uplink}{_where(node)}: {exc}"
                        ) from exc
                port = lookup_link(ipr, name)
                if port is None:
                    raise errors.Unavailable(f"{name} vanished right after being created")
            if _vlan_of(port) != (parent_index, vlan):
                raise errors.FailedPrecondition(
                    f"{name} exists{_where(node)} and is not VLAN {vlan} of {uplink};"
                    " not touching it"
                )
        port_name = str(port.get_attr("IFLA_IFNAME"))
        port_index = int(port["index"])
        master = port.get_attr("IFLA_MASTER")
        if master and int(master) != br_index:
            other = ipr.get_links(int(master))[0].get_attr("IFLA_IFNAME")
            raise errors.FailedPrecondition(
                f"uplink {port_name}{_where(node)} is already attached to {other};"
                f" not moving it to {bridge}"
            )
        if vlan and not parent["flags"] & _IFF_UP:
            ipr.link("set", index=parent_index, state="up")
        _detach_stale(ipr, br_index, parent_index, port_index)
        if not master:
            try:
                ipr.link("set", index=port_index, master=br_index)
            except NetlinkError as exc:
                raise errors.FailedPrecondition(
                    f"cannot attach {port_name} to {bridge}{_where(node)}: {exc}"
                ) from exc
        if not port["flags"] & _IFF_UP:
            ipr.link("set", index=port_index, state="up")
        return port_name


def _detach_stale(ipr: Any, br_index: int, parent_index: int, port_index: int) -> None:
    """Detach from the bridge what an earlier VLAN id of the same uplink attached there
    (the uplink itself, or another of its VLAN sub-interfaces): the network's VLAN
    changed, and the old one must not stay bridged into it. Only detached, never
    deleted; nothing else is looked at."""
    for link in ipr.get_links():
        index = int(link["index"])
        if index == port_index or int(link.get_attr("IFLA_MASTER") or 0) != br_index:
            continue
        vlan_of = _vlan_of(link)
        if index == parent_index or (vlan_of is not None and vlan_of[0] == parent_index):
            ipr.link("set", index=index, master=0)


def uplink_port(uplink: str, vlan: int) -> str:
    """The port name ``ensure_uplink`` attaches for (uplink, vlan)."""
    return uplink if vlan == 0 else vlan_ifname(uplink, vlan)
