"""The switch of a local site of several libvirt nodes: one L2 segment between them.

Each node of such a site lives in a network namespace of its own (``hostenv``), like a
separate host. The switch is what the machine room's switch is to real hosts: a network
namespace ``<site netns>-sw`` holding one bridge (``wssw0``), and per node a veth pair,
one end a port of that bridge (``p<i>``), the other end in the node's namespace, named
``uplink0``. The agents' configs name ``uplink0`` as the uplink of the site network
(``workspace.site.configs``), so each agent attaches it to the network's bridge itself,
by the code a real site uses.

Two rules in the switch (an nftables ``bridge`` table ``ws_switch``) keep the nodes'
own services apart, as every node of the local site runs the network's DHCP server and
holds its gateway address on its bridge:

* DHCP (UDP ports 67/68) does not cross: each node's dnsmasq answers its own VMs only;
* ARP from the gateway address does not cross: a VM resolves the gateway to its own
  node's bridge.

``up`` is idempotent and repairs a half-made switch (a node's namespace made anew loses
its ``uplink0``: the pair is made again); ``down`` deletes the namespace, which takes
its veth ends and therefore their peers in the nodes with it, and then any
``uplink0`` left in a node. Everything here is named per site (the namespace) or lives
inside the site's namespaces, so nothing else on the host is touched.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from workspace import errors
from workspace.site import hostenv

BRIDGE = "wssw0"
UPLINK = "uplink0"
TABLE = "ws_switch"


def switch_netns(site_netns: str) -> str:
    """The switch namespace of the site whose namespace prefix is ``site_netns``."""
    return f"{site_netns}-sw"


def port_name(index: int) -> str:
    """The switch's port for node number ``index`` (1-based)."""
    return f"p{index}"


def rules(gateway: str) -> str:
    """The switch's nftables table (made anew on every ``up``)."""
    return (
        f"table bridge {TABLE}\n"
        f"delete table bridge {TABLE}\n"
        f"table bridge {TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    udp dport { 67, 68 } drop\n"
        f"    arp saddr ip {gateway} drop\n"
        "  }\n"
        "}\n"
    )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise errors.Unavailable(f"ip {shlex.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _has_link(netns: str, name: str) -> bool:
    return _ip("-n", netns, "link", "show", name, check=False).returncode == 0


class Switch:
    """The switch namespace of one site and its links to ``nodes`` (node namespaces,
    in node order)."""

    def __init__(self, netns: str, nodes: Sequence[str], gateway: str) -> None:
        self.netns = netns
        self.nodes = list(nodes)
        self.gateway = gateway

    def up(self) -> list[str]:
        """Make what is missing; the node namespaces that got a new ``uplink0`` (an agent
        already running there attached the old one, if any, and must attach this one)."""
        hostenv.create_netns(self.netns)
        if not _has_link(self.netns, BRIDGE):
            _ip("-n", self.netns, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.netns, "link", "set", BRIDGE, "up")
        self._rules()
        return [node for i, node in enumerate(self.nodes, 1) if self._plug(port_name(i), node)]

    def _plug(self, port: str, node: str) -> bool:
        """Connect ``node`` to ``port``; True if the pair was made now."""
        if not hostenv.netns_exists(node):
            raise errors.FailedPrecondition(
                f"switch {self.netns}: node namespace {node} does not exist"
            )
        here, there = _has_link(self.netns, port), _has_link(node, UPLINK)
        if here != there or (here and not self._paired(port, node)):
            # Half a pair (one namespace made anew): start over with this node.
            if here:
                _ip("-n", self.netns, "link", "del", port)
            if _has_link(node, UPLINK):
                _ip("-n", node, "link", "del", UPLINK)
            here = False
        if not here:
            _ip(
                *("-n", self.netns, "link", "add", port, "type", "veth"),
                *("peer", "name", UPLINK, "netns", node),
            )
        _ip("-n", self.netns, "link", "set", port, "master", BRIDGE, "up")
        _ip("-n", node, "link", "set", UPLINK, "up")
        return not here

    def _paired(self, port: str, node: str) -> bool:
        """True if ``port`` and the node's ``uplink0`` are the two ends of one pair."""
        mine = _ip("-n", self.netns, "-o", "link", "show", port, check=False).stdout
        theirs = _ip("-n", node, "-o", "link", "show", UPLINK, check=False).stdout
        # "7: p1@if6: ..." / "6: uplink0@if7: ...": each names the other's index.
        try:
            my_index, my_peer = _indices(mine)
            their_index, their_peer = _indices(theirs)
        except ValueError:
            return False
        return my_peer == their_index and their_peer == my_index

    def _rules(self) -> None:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
            input=rules(self.gateway),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise errors.Unavailable(
                f"switch {self.netns}: nft rules failed: {proc.stderr.strip()}"
            )

    def running(self) -> bool:
        return hostenv.netns_exists(self.netns) and all(
            _has_link(self.netns, port_name(i)) for i in range(1, len(self.nodes) + 1)
        )

    def down(self) -> None:
        hostenv.delete_netns(self.netns)
        for node in self.nodes:
            if hostenv.netns_exists(node) and _has_link(node, UPLINK):
                _ip("-n", node, "link", "del", UPLINK, check=False)


def _indices(line: str) -> tuple[int, int]:
    """(own ifindex, peer ifindex) from ``ip -o link show`` of a veth end."""
    index, rest = line.split(":", 1)
    name = rest.split(":", 1)[0].strip()
    _, _, peer = name.partition("@if")
    return int(index), int(peer)
