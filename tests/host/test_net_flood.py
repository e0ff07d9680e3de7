"""What one VM can take from its node's other VMs through the node's network, with the
real nftables ruleset of ``BridgeNetworking`` and the real conntrack table of a "node"
network namespace: the table's room (``conntrack_per_nic``), the frames a departed
workspace's tap is still delivered, and the table's clean-ups of a pass.

Each "VM" is a namespace plugged into the node's bridge by a veth pair whose host end
has the workspace's tap name, so the filter rules apply to it as to a real VM's tap.
Every namespace is named ``wsfl-...`` (or ``$WS_TEST_NETNS_PREFIX-...``) and deleted in
teardown; processes started here are stopped by their pid.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agent.net import flows
from agent.net.node import BridgeNetworking
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import Connectivity, parse_rules
from workspace.domain.states import Desired

pytestmark = pytest.mark.host

SUBNET, GW, PREFIX = "10.217.0.0/24", "10.217.0.1", 24
BROADCAST = "10.217.0.255"
BRIDGE = "wsflbr0"
LIMIT = 12  # conntrack_per_nic of the node
_ids = itertools.count(1)

# The namespaces' prefix: another one (WS_TEST_NETNS_PREFIX) keeps runs beside each
# other apart by name.
NS_PREFIX = os.environ.get("WS_TEST_NETNS_PREFIX", "wsfl")
BR_NF = "net.bridge.bridge-nf-call-iptables"


def ns_name(role: str) -> str:
    return f"{NS_PREFIX}-{os.getpid() % 100000}-{next(_ids)}-{role}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=False)


def py_in(ns: str, code: str) -> str:
    proc = in_ns(ns, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@dataclass
class Vm:
    netns: str
    ip: str
    mac: str


@dataclass
class Node:
    netns: str
    net: BridgeNetworking
    orders: dict[str, Order] = field(default_factory=dict)
    vms: list[Vm] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def sync(self) -> None:
        assert self.net.sync(sorted(self.orders.values(), key=lambda o: o.workspace_id)) == {}

    def add_vm(
        self, wid: str, ip_addr: str, conn: Connectivity = Connectivity.OPEN, **kw: Any
    ) -> Vm:
        """A VM of a new workspace in the orders, plugged in, its address configured and
        every other VM's MAC known (no ARP: a VM's answer would teach the bridge its
        port, and the flooding tests need it unlearned)."""
        mac = f"52:54:00:d7:00:{int(ip_addr.rsplit('.', 1)[1]):02x}"
        nic = Nic("default", ip_addr, mac, PREFIX, GW, BRIDGE, SUBNET)
        self.orders[wid] = Order(
            wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,), connectivity=conn, **kw
        )
        self.sync()
        vm = Vm(ns_name("vm"), ip_addr, mac)
        sh("ip", "netns", "add", vm.netns)
        self.vms.append(vm)
        tap = tap_name(wid, 0)
        sh("ip", "-n", self.netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
           "netns", vm.netns)  # fmt: skip
        sh("ip", "-n", self.netns, "link", "set", tap, "master", BRIDGE, "up")
        sh("ip", "-n", vm.netns, "link", "set", "lo", "up")
        sh("ip", "-n", vm.netns, "link", "set", "eth0", "address", mac, "up")
        sh("ip", "-n", vm.netns, "addr", "add", f"{ip_addr}/{PREFIX}", "dev", "eth0")
        in_ns(vm.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")  # silent
        for other in self.vms[:-1]:
            for a, b in ((vm, other), (other, vm)):
                sh("ip", "-n", a.netns, "neigh", "replace", b.ip, "lladdr", b.mac,
                   "dev", "eth0", "nud", "permanent")  # fmt: skip
        return vm

    def serve(self, vm: Vm, code: str) -> None:
        argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", code]
        self.procs.append(subprocess.Popen(argv))
        time.sleep(0.4)  # bound before anyone sends

    def flows(self) -> list[tuple[str, str]]:
        """The node's conntrack table: (original source, destination) of each entry."""
        code = (
            "from pyroute2 import Conntrack\n"
            "ct = Conntrack()\n"
            "for e in ct.dump_entries():\n"
            "    print(e.tuple_orig.saddr, e.tuple_orig.daddr)\n"
        )
        out = py_in(self.netns, code)
        return [(a, b) for a, b in (line.split() for line in out.splitlines())]


@pytest.fixture
def node() -> Iterator[Node]:
    state = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-", dir="/var/tmp"))
    netns = ns_name("node")
    sh("ip", "netns", "add", netns)
    cfg = AgentConfig(
        node="n1",
        state_dir=str(state / "agent"),
        networks=[NodeNetworkConfig(name="default", dhcp=False)],
        conntrack_per_nic=LIMIT,
    )
    n = Node(netns, BridgeNetworking(cfg, netns=netns))
    try:
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        if in_ns(netns, "sysctl", "-qw", f"{BR_NF}=1").returncode != 0:
            pytest.skip("no per-namespace net.bridge.bridge-nf-call-iptables (br_netfilter)")
        yield n
    finally:
        for proc in n.procs:
            proc.kill()
            proc.wait()
        for ns in [vm.netns for vm in n.vms] + [netns]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(state, ignore_errors=True)


ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5000))
while True:
    data, peer = s.recvfrom(100); s.sendto(data, peer)
"""

# ``count`` new flows to DST:5000 at once (a socket each, a source port each); how many
# were answered.
FLOWS = """
import select, socket, time
socks = []
for i in range({count}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"q", ({dst!r}, 5000))
    socks.append(s)
answered, end = set(), time.monotonic() + 3
while len(answered) < len(socks) and time.monotonic() < end:
    ready, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.2)
    for s in ready:
        s.recv(100)
        answered.add(s)
print(len(answered))
"""


def opened(vm: Vm, dst: str, count: int) -> int:
    return int(py_in(vm.netns, FLOWS.format(count=count, dst=dst)))


def test_one_vm_cannot_take_the_nodes_conntrack_table(node: Node) -> None:
    """A VM opening connections as fast as it can gets ``conntrack_per_nic`` of them
    tracked and no more (bridged ones to its neighbours as those to the node itself),
    whatever its connectivity, while another VM of the node still opens its own."""
    server = node.add_vm("w-server", "10.217.0.10")
    greedy = node.add_vm("w-greedy", "10.217.0.11")
    other = node.add_vm("w-other", "10.217.0.12", Connectivity.OUTBOUND)
    node.serve(server, ECHO)
    assert opened(greedy, server.ip, 3 * LIMIT) == LIMIT
    assert opened(greedy, server.ip, 1) == 0  # still full
    from_greedy = [f for f in node.flows() if f[0] == greedy.ip]
    assert len(from_greedy) == LIMIT  # the node's table holds no more of its flows
    assert opened(other, server.ip, 3) == 3  # another VM still can
    # the node's own addresses are behind the same bound
    sh("ip", "-n", node.netns, "addr", "replace", f"{GW}/{PREFIX}", "dev", BRIDGE)
    assert in_ns(greedy.netns, "ping", "-c", "1", "-W", "1", GW).returncode != 0
    assert in_ns(other.netns, "ping", "-c", "1", "-W", "1", GW).returncode == 0
    # conntrack_per_nic = 0: no bound, from the next pass on
    node.net.cfg = replace(node.net.cfg, conntrack_per_nic=0)
    node.sync()
    assert opened(greedy, server.ip, 3) == 3


def refused(node: Node, wid: str) -> int:
    """The new connections the bound of ``wid``'s NIC refused, as an admin reads them."""
    chain = f"flows_{tap_name(wid, 0)}"
    out = sh("ip", "netns", "exec", node.netns, "nft", "list", "chain", "inet", "ws_policy", chain)
    found = re.findall(r"ct count over \d+ counter packets (\d+) ", out.stdout)
    assert len(found) == 1, f"no counter on the bound of {wid}: {out.stdout}{out.stderr}"
    return int(found[0])


def test_what_the_bound_refuses_is_counted_and_a_pass_keeps_the_count(node: Node) -> None:
    """An admin sees which NIC hit ``conntrack_per_nic`` (its chain's counter), and the
    agent's next pass, with nothing changed, does not take that counter for a ruleset
    edited behind its back: it does not apply the ruleset again, which would start the
    bound's count again at zero and let the VM open ``conntrack_per_nic`` more."""
    server = node.add_vm("w-server", "10.217.0.20")
    greedy = node.add_vm("w-greedy", "10.217.0.21")
    other = node.add_vm("w-other", "10.217.0.22")
    node.serve(server, ECHO)
    assert opened(greedy, server.ip, 2 * LIMIT) == LIMIT
    assert opened(other, server.ip, 2) == 2
    assert refused(node, "w-greedy") >= LIMIT
    assert refused(node, "w-other") == 0
    node.sync()  # a pass: same orders
    assert opened(greedy, server.ip, 1) == 0  # still held at the bound
    assert refused(node, "w-greedy") > LIMIT


SNIFF = """
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0)); s.settimeout(0.2)
seen, end = set(), time.monotonic() + 3
while time.monotonic() < end:
    try:
        frame = s.recv(2000)
    except TimeoutError:
        continue
    for word in (b"broadcast", b"unicast"):
        if word + b"-secret" in frame:
            seen.add(word.decode())
print(",".join(sorted(seen)) or "none")
"""

SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(b"broadcast-secret", ({broadcast!r}, 5000))
s.sendto(b"unicast-secret", ({dst!r}, 5000))
"""


def test_a_departed_workspaces_tap_is_delivered_nothing(node: Node) -> None:
    """Destroyed: its order is gone, its domain (here: its tap) not yet removed, as
    while the node's removal waits behind other operations or fails. From the pass that
    drops its order on, its tap is delivered neither its neighbours' broadcasts nor
    what the bridge floods to every port (unicast to a MAC it has not learned)."""
    victim = node.add_vm("w-victim", "10.217.0.31")
    sender = node.add_vm("w-sender", "10.217.0.32")
    rogue = node.add_vm("w-rogue", "10.217.0.33")

    def sniffed(vm: Vm) -> str:
        argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", SNIFF]
        sniffer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.4)  # bound before the sender sends
            sh("bridge", "-n", node.netns, "fdb", "del", victim.mac, "dev",
               tap_name("w-victim", 0), "master", check=False)  # fmt: skip
            py_in(sender.netns, SEND.format(broadcast=BROADCAST, dst=victim.ip))
            out, _ = sniffer.communicate(timeout=10)
        finally:
            sniffer.kill()
            sniffer.wait()
        return out.strip()

    assert sniffed(victim) == "broadcast,unicast"  # the path works: flooded to it
    assert sniffed(rogue) == "broadcast"  # its own workspace: broadcasts only
    del node.orders["w-rogue"]
    node.sync()
    assert sniffed(rogue) == "none"
    assert sniffed(victim) == "broadcast,unicast"  # the others are unaffected


ALLOWED = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
    " s.sendto(b'q', ({dst!r}, 5000))"
)


def test_a_pass_forgets_moved_and_former_peers_flows_in_one_dump(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass in which an address goes to another workspace and a cluster member
    loses a peer: both kinds of stale flow are deleted from the node's table, from one
    dump of it (a busy node's table holds hundreds of thousands of entries), and the
    other flows stay."""
    member_nic_ip, former_ip, moved_ip = "10.217.0.41", "10.217.0.42", "10.217.0.43"
    peer = node.add_vm("w-peer", "10.217.0.44")
    former = node.add_vm("w-former", former_ip)
    member_vm = node.add_vm(
        "w-member", member_nic_ip, Connectivity.CLUSTER, peers=(member_nic_ip, former_ip)
    )
    node.add_vm("w-old", moved_ip, Connectivity.OUTBOUND, allow=parse_rules(["udp/5000"]))
    py_in(peer.netns, ALLOWED.format(dst=moved_ip))  # a flow of the old workspace
    py_in(former.netns, ALLOWED.format(dst=member_nic_ip))  # a peer's flow
    py_in(peer.netns, ALLOWED.format(dst=former_ip))  # neither: stays
    table = node.flows()
    assert (peer.ip, moved_ip) in table and (former_ip, member_nic_ip) in table
    dumps: list[str | None] = []
    real = flows.Conntrack

    def counted(netns: str | None = None) -> object:
        ct = real(netns=netns) if netns else real()
        dump = ct.dump_entries
        ct.dump_entries = lambda *a, **kw: dumps.append(netns) or dump(*a, **kw)
        return ct

    monkeypatch.setattr(flows, "Conntrack", counted)
    old = node.orders.pop("w-old")
    new_nic = replace(old.nics[0], mac="52:54:00:d7:01:43")
    node.orders["w-new"] = replace(old, workspace_id="w-new", nics=(new_nic,), allow=())
    node.orders["w-member"] = replace(node.orders["w-member"], peers=(member_nic_ip,))
    node.sync()
    assert dumps == [node.netns]
    table = node.flows()
    assert (peer.ip, moved_ip) not in table
    assert (former_ip, member_nic_ip) not in table
    assert (peer.ip, former_ip) in table
    assert member_vm.ip == member_nic_ip
