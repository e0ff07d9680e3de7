"""The node's networking after disturbances, with the real kernel, nft and dnsmasq in
network namespaces of their own (no VM): a "node" namespace holds the bridge made by
BridgeNetworking, a "VM" is a namespace plugged in by a veth named as the VM's tap.

Every namespace is named ``wsN...`` and deleted in teardown; every dnsmasq started here
is stopped by its pid file (``stop_leftover``) first.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.net.dhcp import stop_leftover
from agent.net.node import BridgeNetworking
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.domain.states import Desired
from workspace.hostproc import process_alive

pytestmark = pytest.mark.host

SUBNET, GW, PREFIX = "10.216.0.0/24", "10.216.0.1", 24
BRIDGE = "wsNbr0"
_ids = itertools.count(1)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=False)


class Site:
    """The test's namespaces, and the agent's state dir (its dnsmasqs stopped at the end)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.names: list[str] = []

    def add(self, role: str) -> str:
        name = f"wsN{os.getpid() % 100000}-{next(_ids)}{role}"[:15]
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def agent(self, node_ns: str) -> BridgeNetworking:
        """A BridgeNetworking as a (re)started agent has it: nothing in memory."""
        cfg = AgentConfig(node="n1", state_dir=str(self.state), networks=[NodeNetworkConfig()])
        return BridgeNetworking(cfg, netns=node_ns)

    def close(self) -> None:
        for d in sorted((self.state / "dhcp").glob("*")):
            stop_leftover(d)
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path / "state")
    try:
        yield s
    finally:
        s.close()


def order(wid: str, addr: str) -> Order:
    mac = f"52:54:00:d3:00:{int(addr.rsplit('.', 1)[1]):02x}"
    nic = Nic("default", addr, mac, PREFIX, GW, BRIDGE, SUBNET, ())
    return Order(wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,))


def plug_vm(site: Site, node: str, o: Order) -> str:
    """A namespace standing for ``o``'s VM, its tap on the bridge as libvirt puts it."""
    vm = site.add("vm")
    tap = tap_name(o.workspace_id, 0)
    sh("ip", "-n", node, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
       "netns", vm)  # fmt: skip
    sh("ip", "-n", node, "link", "set", tap, "master", BRIDGE, "up")
    sh("ip", "-n", vm, "link", "set", "eth0", "address", o.nics[0].mac, "up")
    sh("ip", "-n", vm, "addr", "add", f"{o.nics[0].ip}/{PREFIX}", "dev", "eth0")
    return vm


def master(node: str, dev: str) -> str | None:
    (info,) = json.loads(sh("ip", "-n", node, "-j", "link", "show", dev).stdout)
    return info.get("master")


def pings(vm: str, source: str) -> bool:
    return in_ns(vm, "ping", "-c", "1", "-W", "2", "-I", source, GW).returncode == 0


def test_a_bridge_deleted_under_running_vms_gets_their_taps_back_still_guarded(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """`ip link del` of the bridge (a host network reload): the next pass makes it
    again, and the running VMs' taps (which libvirt attached once, at start) go back
    on it; their filter rules hold (no address but their own gets through)."""
    caplog.set_level(logging.INFO)
    node = site.add("node")
    net = site.agent(node)
    o = order("w-a", "10.216.0.11")
    net.sync([o])
    vm = plug_vm(site, node, o)
    spoofed = "10.216.0.99"
    sh("ip", "-n", vm, "addr", "add", f"{spoofed}/{PREFIX}", "dev", "eth0")
    assert pings(vm, o.nics[0].ip)
    assert not pings(vm, spoofed)  # anti-spoofing, as applied

    sh("ip", "-n", node, "link", "del", BRIDGE)
    assert master(node, tap_name("w-a", 0)) is None  # the kernel let the tap go
    net.sync([o])  # the next pass: the bridge is made again
    net.reattach([o])  # its domain runs
    assert master(node, tap_name("w-a", 0)) == BRIDGE
    assert f"node n1: workspace w-a: its tap {tap_name('w-a', 0)} was on no bridge" in caplog.text
    assert pings(vm, o.nics[0].ip)
    assert not pings(vm, spoofed)


def test_after_a_restart_the_dnsmasq_of_a_bridge_no_workspace_uses_is_stopped(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent stopped; the last workspace on the bridge was deleted meanwhile. The
    dnsmasq it left went on serving the old hosts file (only bridges in use got a
    DhcpServer again); the restarted agent's first pass stops it, by its pid file."""
    caplog.set_level(logging.INFO)
    node = site.add("node")
    before = site.agent(node)
    before.sync([order("w-a", "10.216.0.11"), order("w-b", "10.216.0.12")])
    pid = before.servers[BRIDGE].pid
    assert pid is not None
    hosts = site.state / "dhcp" / BRIDGE / "hosts"
    assert "10.216.0.12" in hosts.read_text()

    # Restarted with one workspace still there: its dnsmasq adopted, its hosts now.
    after = site.agent(node)
    after.sync([order("w-a", "10.216.0.11")])
    assert after.servers[BRIDGE].running()
    assert "10.216.0.12" not in hosts.read_text()
    pid = after.servers[BRIDGE].pid
    assert pid is not None

    # Restarted again with none: stopped.
    again = site.agent(node)
    again.sync([])
    assert not process_alive(pid)
    assert f"dnsmasq (pid {pid}) left by an earlier agent stopped" in caplog.text
