"""The node's nftables tables kept as the agent applied them, and the distributed
gateway's address not usable from the uplink, with real nft and real packets in network
namespaces of their own (no VM): a "node" namespace holds the bridge made by
BridgeNetworking, a "VM" is a namespace plugged in by a veth named as the VM's tap, and
a "switch" namespace is the site's L2 beyond the node's uplink.

Every namespace is named ``wsnft-...`` and deleted in teardown; processes started here
are stopped by their pid.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.net.node import BridgeNetworking
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import Connectivity, parse_rules
from workspace.domain.states import Desired

pytestmark = pytest.mark.host

SUBNET, GW, PREFIX = "10.215.0.0/24", "10.215.0.1", 24
BRIDGE = "wsnftbr0"
ROOT = str(Path(__file__).resolve().parents[2])
_ids = itertools.count(1)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


class Namespaces:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def add(self, role: str) -> str:
        name = f"wsnft-{os.getpid() % 100000}-{next(_ids)}-{role}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def nss() -> Iterator[Namespaces]:
    n = Namespaces()
    try:
        yield n
    finally:
        n.close()


def order(wid: str, addr: str, conn: Connectivity, allow: tuple[str, ...] = ()) -> Order:
    mac = f"52:54:00:d2:00:{int(addr.rsplit('.', 1)[1]):02x}"
    nic = Nic("default", addr, mac, PREFIX, GW, BRIDGE, SUBNET, ())
    return Order(
        wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,),
        connectivity=conn, allow=parse_rules(allow),
    )  # fmt: skip


def agent(node_ns: str, tmp: Path, uplink: str = "") -> BridgeNetworking:
    net = NodeNetworkConfig(name="default", dhcp=False, uplink=uplink)
    cfg = AgentConfig(node="n1", state_dir=str(tmp), networks=[net])
    return BridgeNetworking(cfg, netns=node_ns)


def tables(ns: str) -> str:
    return in_ns(ns, "nft", "list", "tables", check=True).stdout


def test_deleted_or_flushed_tables_are_back_after_one_pass(
    nss: Namespaces, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = nss.add("node")
    net = agent(node, tmp_path)
    orders = [order("w-o", "10.215.0.11", Connectivity.OUTBOUND, ("tcp/22",))]
    net.sync(orders)
    net.sync(orders)  # the kernel's listing is stable: nothing seen as changed
    assert "behind the agent's back" not in caplog.text
    applied = in_ns(node, "nft", "list", "ruleset", check=True).stdout
    in_ns(node, "nft", "delete", "table", "inet", "ws_policy", check=True)
    net.sync(orders)  # the next resync pass, same agent, same orders
    assert in_ns(node, "nft", "list", "ruleset", check=True).stdout == applied
    assert "table(s) inet ws_policy missing or changed behind the agent's back" in caplog.text
    in_ns(node, "nft", "flush", "ruleset", check=True)  # an nftables.service restart
    net.sync(orders)
    assert in_ns(node, "nft", "list", "ruleset", check=True).stdout == applied
    in_ns(node, "nft", "flush", "chain", "bridge", "ws_guard", "guard_forward", check=True)
    net.sync(orders)
    assert in_ns(node, "nft", "list", "ruleset", check=True).stdout == applied


SHAPER = """
import subprocess, sys
from agent.virt import netshape
written = []
netshape.apply = lambda taps, real=netshape.apply: (written.append(taps), real(taps))
shaper = netshape.Shaper()
shaper.apply({"wsta": 20})
shaper.apply({"wsta": 20})  # the kernel's listing is stable: not written again
assert len(written) == 1, written
if sys.argv[1] == "delete":
    subprocess.run(["nft", "delete", "table", "bridge", "ws_shape"], check=True)
    shaper.apply({"wsta": 20})  # the next reconcile pass
    assert len(written) == 2, written
"""


def test_the_policers_table_is_back_after_a_pass_and_after_a_restart(nss: Namespaces) -> None:
    node = nss.add("node")

    def run(mode: str) -> None:
        argv = [sys.executable, "-c", textwrap.dedent(SHAPER), mode]
        proc = subprocess.run(
            ["ip", "netns", "exec", node, *argv], env={**os.environ, "PYTHONPATH": ROOT},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def limits() -> str:
        return in_ns(node, "nft", "list", "table", "bridge", "ws_shape").stdout

    run("delete")
    assert "limit wsta_out" in limits()
    in_ns(node, "nft", "delete", "table", "bridge", "ws_shape", check=True)
    run("restart")  # a new agent process: its first pass writes the table
    assert "limit wsta_out" in limits()


def plug_vm(nss: Namespaces, node: str, wid: str, addr: str, mac: str) -> str:
    vm = nss.add("vm")
    tap = tap_name(wid, 0)
    sh("ip", "-n", node, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
       "netns", vm)  # fmt: skip
    sh("ip", "-n", node, "link", "set", tap, "master", BRIDGE, "up")
    sh("ip", "-n", vm, "link", "set", "eth0", "address", mac, "up")
    sh("ip", "-n", vm, "addr", "add", f"{addr}/{PREFIX}", "dev", "eth0")
    return vm


RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(64)
    print(peer[0], data.decode(), flush=True)
"""


def test_ipv4_from_the_gateway_address_through_the_uplink_is_dropped(
    nss: Namespaces, tmp_path: Path
) -> None:
    """The tester's attack: a host of the uplink's L2 takes the gateway address (every
    node's bridge holds it) and sends to an OUTBOUND VM, whose in_ chain trusts it."""
    node, switch = nss.add("node"), nss.add("sw")
    sh("ip", "-n", switch, "link", "add", "sw", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "sw", "up")
    sh("ip", "-n", switch, "link", "add", "pa", "type", "veth", "peer", "name", "up0",
       "netns", node)  # fmt: skip
    sh("ip", "-n", switch, "link", "set", "pa", "master", "sw", "up")
    net = agent(node, tmp_path, uplink="up0")
    vm_ip = "10.215.0.21"
    o = order("w-o", vm_ip, Connectivity.OUTBOUND, ("udp/5000",))
    net.sync([o])
    vm = plug_vm(nss, node, "w-o", vm_ip, o.nics[0].mac)
    argv = ["ip", "netns", "exec", vm, sys.executable, "-c", RECEIVER, "5000"]
    out = tmp_path / "received"
    with out.open("w") as f:
        nss.procs.append(subprocess.Popen(argv, stdout=f, text=True))
    time.sleep(0.3)
    # the forger: the gateway address and another one on the switch, the VM's MAC static
    for addr in (f"{GW}/32", f"10.215.0.200/{PREFIX}"):
        sh("ip", "-n", switch, "addr", "add", addr, "dev", "sw")
    sh("ip", "-n", switch, "neigh", "replace", vm_ip, "lladdr", o.nics[0].mac, "dev", "sw",
       "nud", "permanent")  # fmt: skip
    send = (
        "import socket, sys\n"
        "for src in sys.argv[1:]:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))\n"
        f"    for _ in range(3): s.sendto(src.encode(), ({vm_ip!r}, 5000))\n"
    )
    in_ns(switch, sys.executable, "-c", send, "10.215.0.200", GW, check=True)
    time.sleep(0.5)
    got = out.read_text()
    assert "10.215.0.200" in got  # the path works (the allow rule opens udp/5000)
    assert GW not in got  # the forged gateway address does not get through
    rules = in_ns(node, "nft", "list", "table", "bridge", "ws_guard", check=True).stdout
    assert f'iifname "up0" ip saddr {GW} drop' in rules


def test_without_br_netfilter_only_the_restricted_workspaces_are_held(
    nss: Namespaces, tmp_path: Path
) -> None:
    node = nss.add("node")
    knob = "net.bridge.bridge-nf-call-iptables"
    if in_ns(node, "sysctl", "-w", f"{knob}=0").returncode != 0:
        pytest.skip("this kernel has no per-namespace bridge-nf-call-iptables")
    net = agent(node, tmp_path)
    orders = [
        order("w-iso", "10.215.0.31", Connectivity.OUTBOUND),
        order("w-op", "10.215.0.32", Connectivity.OPEN),
    ]
    assert net.sync(orders) == {}
    assert list(net.holds()) == ["w-iso"]
    assert "br_netfilter" in net.holds()["w-iso"]
    assert "ws_guard" in tables(node)  # anti-spoofing holds all the same
    in_ns(node, "sysctl", "-w", f"{knob}=1", check=True)
    net.sync(orders)
    assert net.holds() == {}
