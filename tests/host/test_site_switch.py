"""The switch namespace of a local site of several nodes (workspace.site.switch), on
real namespaces: two "nodes" (a namespace with a bridge holding the gateway address,
as a node of the site has) and a "VM" on each (a veth into a namespace of its own).

* ``up`` gives each node an ``uplink0`` that leads to the switch; attached to the
  node's bridge (by hand here, as the agent does through its config's uplink), the two
  VMs reach each other across the nodes;
* each VM resolves the gateway to its own node's bridge (ARP from the gateway address
  does not cross the switch), and DHCP does not cross it;
* ``up`` again changes nothing; a node namespace made anew is plugged in again;
* ``down`` removes the switch namespace and every ``uplink0``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.host.conftest import unique_name
from workspace.site import hostenv
from workspace.site.switch import BRIDGE, UPLINK, Switch

pytestmark = pytest.mark.host

GATEWAY = "10.213.0.1"


def ip(*args: str, check: bool = True) -> str:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], check=check, capture_output=True, text=True
    )


class Net:
    def __init__(self) -> None:
        self.prefix = unique_name("wsns-")
        self.nodes = [f"{self.prefix}-{i}" for i in (1, 2)]
        self.vms = [f"{self.prefix}-v{i}" for i in (1, 2)]
        self.switch = Switch(f"{self.prefix}-sw", self.nodes, GATEWAY)

    def make_node(self, i: int) -> None:
        node, vm = self.nodes[i], self.vms[i]
        hostenv.create_netns(node)
        ip("-n", node, "link", "add", "wsbr0", "type", "bridge")
        ip("-n", node, "addr", "add", f"{GATEWAY}/24", "dev", "wsbr0")
        ip("-n", node, "link", "set", "wsbr0", "up")
        hostenv.create_netns(vm)
        ip("-n", node, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0", "netns", vm)
        ip("-n", node, "link", "set", "tap0", "master", "wsbr0", "up")
        ip("-n", vm, "addr", "add", f"10.213.0.{11 + i}/24", "dev", "eth0")
        ip("-n", vm, "link", "set", "eth0", "up")

    def attach_uplinks(self) -> None:
        for node in self.nodes:
            ip("-n", node, "link", "set", UPLINK, "master", "wsbr0", "up")

    def close(self) -> None:
        self.switch.down()
        for ns in (*self.vms, *self.nodes):
            hostenv.delete_netns(ns)


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        n.make_node(0)
        n.make_node(1)
        yield n
    finally:
        n.close()


def ping(ns: str, target: str, tries: int = 5) -> bool:
    """One answer within ``tries`` seconds (a port just attached may take a moment)."""
    for _ in range(tries):
        if in_ns(ns, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0:
            return True
    return False


def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_switch_joins_the_nodes(net: Net) -> None:
    assert not ping(net.vms[0], "10.213.0.12", tries=1)  # separate hosts without a switch
    assert net.switch.up() == net.nodes  # both uplinks are new
    assert net.switch.running()
    net.attach_uplinks()
    assert ping(net.vms[0], "10.213.0.12") and ping(net.vms[1], "10.213.0.11")
    # Each VM's gateway is its own node's bridge.
    for vm, node in zip(net.vms, net.nodes, strict=True):
        assert ping(vm, GATEWAY)
        neigh = in_ns(vm, "ip", "neigh", "show", GATEWAY).stdout
        bridge_mac = ip("-n", node, "-o", "link", "show", "wsbr0").split("link/ether ")[1][:17]
        assert bridge_mac in neigh, (neigh, bridge_mac)
    rules = in_ns(net.switch.netns, "nft", "list", "table", "bridge", "ws_switch").stdout
    assert "udp dport { 67, 68 } drop" in rules
    assert BRIDGE in ip("-n", net.switch.netns, "-o", "link", "show", "p1")

    before = ip("-n", net.switch.netns, "-o", "link", "show")
    assert net.switch.up() == []  # idempotent: the same links, still connected
    assert ip("-n", net.switch.netns, "-o", "link", "show") == before
    assert ping(net.vms[0], "10.213.0.12")


def test_a_node_made_anew_is_plugged_in_again_and_down_cleans_up(net: Net) -> None:
    net.switch.up()
    # Node 2's namespace is deleted and made again (a node's `site up` after a crash).
    hostenv.delete_netns(net.vms[1])
    hostenv.delete_netns(net.nodes[1])
    # Its port goes with it (a namespace is cleaned up asynchronously).
    assert wait_until(lambda: not net.switch.running())
    net.make_node(1)
    assert net.switch.up() == [net.nodes[1]]  # its agent must attach the new uplink
    net.attach_uplinks()
    assert ping(net.vms[0], "10.213.0.12")

    net.switch.down()
    assert not hostenv.netns_exists(net.switch.netns)
    for node in net.nodes:
        assert UPLINK not in ip("-n", node, "-o", "link", "show")
    net.switch.down()  # again: nothing to do
