"""The node's filter and uplinks for real, with real packets, and no VM: a "node" network
namespace holds the bridge (made by BridgeNetworking, as the agent does) and each "VM" is
a namespace of its own plugged in by a veth pair whose bridge-side end carries the tap
name the domain XML gives the VM's NIC (``tap_name``). Two nodes share L2 through a
"switch" namespace, each node's uplink being a veth into it.

Every namespace is named ``wsnf-...`` (or ``$WS_TEST_NETNS_PREFIX-...``) and deleted in
teardown; processes started here are stopped by their pid.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from agent.net.filter import BridgeSpec, apply_ruleset, render
from agent.net.node import BridgeNetworking
from agent.net.uplink import ensure_uplink, vlan_ifname
from agent.virt.base import tap_name
from workspace import errors
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import Connectivity, parse_rules
from workspace.domain.states import Desired

pytestmark = pytest.mark.host

SUBNET, GW, PREFIX = "10.214.0.0/24", "10.214.0.1", 24
BRIDGE = "wsnfbr0"
_ids = itertools.count(1)


# The namespaces' prefix: another one (WS_TEST_NETNS_PREFIX) keeps runs beside each
# other apart by name.
NS_PREFIX = os.environ.get("WS_TEST_NETNS_PREFIX", "wsnf")


def ns_name(role: str) -> str:
    return f"{NS_PREFIX}-{os.getpid() % 100000}-{next(_ids)}-{role}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def ip(*args: str) -> str:
    return sh("ip", *args).stdout


def in_ns(ns: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def py_in(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    return in_ns(ns, sys.executable, "-c", code)


@dataclass
class Vm:
    netns: str
    workspace_id: str
    ip: str
    mac: str

    def ping(self, dst: str, src: str = "") -> bool:
        opts = ["-I", src] if src else []
        # three tries: the first may go to a neighbour entry still being resolved
        argv = ["ping", "-c", "3", "-i", "0.2", "-W", "1", *opts, dst]
        return in_ns(self.netns, *argv).returncode == 0

    def connect(self, dst: str, port: int) -> bool:
        code = f"import socket; socket.create_connection(({dst!r}, {port}), timeout=2).close()"
        return py_in(self.netns, code).returncode == 0

    def udp_answered(self, dst: str, port: int) -> bool:
        code = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.settimeout(2); s.sendto(b'q', ({dst!r}, {port})); s.recvfrom(16)"
        )
        return py_in(self.netns, code).returncode == 0

    def neighbour(self, addr: str) -> str:
        out = json.loads(in_ns(self.netns, "ip", "-j", "neigh", "show", addr).stdout or "[]")
        return str(out[0].get("lladdr", "")) if out else ""


@dataclass
class Node:
    """A node namespace with its bridge, its VMs and the BridgeNetworking of its agent."""

    netns: str
    cfg: AgentConfig
    vms: dict[str, Vm] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    net: BridgeNetworking | None = None

    def agent(self) -> BridgeNetworking:
        """A fresh BridgeNetworking: what a (re)started agent has."""
        self.net = BridgeNetworking(self.cfg, netns=self.netns)
        return self.net

    def sync(self) -> Mapping[str, str]:
        """The agent's network pass; the networks it could not make ready (name → why)."""
        assert self.net is not None
        return self.net.sync(sorted(self.orders.values(), key=lambda o: o.workspace_id))

    def add_vm(
        self,
        wid: str,
        ip_addr: str,
        conn: Connectivity = Connectivity.OPEN,
        allow: tuple[str, ...] = (),
        peers: tuple[str, ...] = (),
        vlan: int = 0,
        dns: tuple[str, ...] = (),
    ) -> Vm:
        mac = f"52:54:00:d1:00:{int(ip_addr.rsplit('.', 1)[1]):02x}"
        nic = Nic("default", ip_addr, mac, PREFIX, GW, BRIDGE, SUBNET, dns, vlan=vlan)
        self.orders[wid] = Order(
            wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,),
            connectivity=conn, allow=parse_rules(allow), peers=peers,
        )  # fmt: skip
        self.sync()  # the bridge exists (and the rules) before the "VM" plugs in
        vm_ns = ns_name("vm")
        ip("netns", "add", vm_ns)
        self.namespaces.append(vm_ns)
        tap = tap_name(wid, 0)
        ip("-n", self.netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
           "netns", vm_ns)  # fmt: skip
        ip("-n", self.netns, "link", "set", tap, "master", BRIDGE, "up")
        ip("-n", vm_ns, "link", "set", "lo", "up")
        ip("-n", vm_ns, "link", "set", "eth0", "address", mac, "up")
        ip("-n", vm_ns, "addr", "add", f"{ip_addr}/{PREFIX}", "dev", "eth0")
        ip("-n", vm_ns, "route", "add", "default", "via", GW)
        vm = Vm(vm_ns, wid, ip_addr, mac)
        self.vms[wid] = vm
        return vm

    def listen(self, vm: Vm, port: int) -> None:
        code = (
            "import socket, time\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(64); time.sleep(300)\n"
        )
        self._serve(vm, code)

    def udp_echo(self, vm: Vm, port: int) -> None:
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            "while True:\n    data, peer = s.recvfrom(512); s.sendto(data, peer)\n"
        )
        self._serve(vm, code)

    def _serve(self, vm: Vm, code: str) -> None:
        """Python ``code`` running in the VM's namespace until ``close`` (by its pid)."""
        argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", code]
        self.procs.append(subprocess.Popen(argv))
        time.sleep(0.3)  # bound before the caller sends

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in [*self.namespaces, self.netns]:
            sh("ip", "netns", "del", ns, check=False)


def make_node(tmp_path: Path, uplink: str = "", name: str = "n1") -> Node:
    netns = ns_name("node")
    ip("netns", "add", netns)
    ip("-n", netns, "link", "set", "lo", "up")
    net = NodeNetworkConfig(name="default", dhcp=False, uplink=uplink)
    cfg = AgentConfig(node=name, state_dir=str(tmp_path / name), networks=[net])
    node = Node(netns, cfg)
    node.agent()
    return node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path)
    try:
        yield n
    finally:
        n.close()


def links(netns: str) -> list[tuple[str, str, str, str]]:
    """Every link of a namespace: name, kind, master, flags."""
    out = json.loads(ip("-n", netns, "-j", "-d", "link"))
    return sorted(
        (
            str(x["ifname"]),
            str(x.get("linkinfo", {}).get("info_kind", "")),
            str(x.get("master", "")),
            ",".join(x["flags"]),
        )
        for x in out
    )


def tables(netns: str) -> str:
    return in_ns(netns, "nft", "list", "tables", check=True).stdout


def chains(netns: str) -> str:
    return in_ns(netns, "nft", "list", "ruleset", check=True).stdout


# -- syntax --------------------------------------------------------------------------------


def test_rendered_rules_pass_nft_check(node: Node) -> None:
    def nic(ip_addr: str, mac: str, bridge: str = BRIDGE) -> Nic:
        return Nic("default", ip_addr, mac, 24, GW, bridge, SUBNET)

    orders = [
        Order("w1", "w1", "w1", Desired.RUNNING, 1, 512, "img", (),
              (nic("10.214.0.5", "52:54:00:00:00:05"),)),
        Order("w2", "w2", "w2", Desired.RUNNING, 1, 512, "img", (),
              (nic("10.214.0.6", "52:54:00:00:00:06"), nic("10.9.0.6", "52:54:00:00:09:06",
                                                           "wsnfbr9")),
              connectivity=Connectivity.CLUSTER, peers=("10.214.0.7",),
              allow=parse_rules(["tcp/22", "icmp", "any:10.1.0.0/16", "udp/5000-5010"])),
        Order("w3", "w3", "w3", Desired.RUNNING, 1, 512, "img", (),
              (nic("10.214.0.7", "52:54:00:00:00:07"),), connectivity=Connectivity.OUTBOUND,
              allow=parse_rules(["tcp/8000-8100:10.0.0.0/8"])),
    ]  # fmt: skip
    script = render(orders, [BridgeSpec(BRIDGE, "up0.100", GW), BridgeSpec("wsnfbr9", "up0")])
    proc = subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "-c", "-f", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    apply_ruleset(script, node.netns)  # and loads, twice (replacing itself)
    apply_ruleset(script, node.netns)
    assert "ws_guard" in tables(node.netns) and "ws_policy" in tables(node.netns)


def test_other_tables_are_left_alone(node: Node) -> None:
    in_ns(node.netns, "nft", "add", "table", "inet", "someone_else", check=True)
    node.add_vm("w-a", "10.214.0.11")
    assert "someone_else" in tables(node.netns)


# -- anti-spoofing -------------------------------------------------------------------------


def test_a_vm_cannot_use_another_vms_address(node: Node) -> None:
    a = node.add_vm("w-a", "10.214.0.11")
    node.add_vm("w-b", "10.214.0.12")
    c = node.add_vm("w-c", "10.214.0.13")
    assert a.ping(c.ip)
    assert a.ping(GW)  # the node's gateway answers, too
    ip("-n", a.netns, "addr", "add", "10.214.0.12/32", "dev", "eth0")
    assert not a.ping(c.ip, src="10.214.0.12")
    assert not a.ping(GW, src="10.214.0.12")  # nor towards the node itself
    assert a.ping(c.ip)  # its own address still works


FORGE_ARP = """
import socket, struct
def mac(t): return bytes.fromhex(t.replace(":", ""))
def ip(t): return socket.inet_aton(t)
sender_mac, sender_ip, target_mac, target_ip, src_mac = {args!r}
frame = (mac(target_mac) + mac(src_mac) + struct.pack("!H", 0x0806)
         + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
         + mac(sender_mac) + ip(sender_ip) + mac(target_mac) + ip(target_ip))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame)
"""


def forge_arp(vm: Vm, claim_ip: str, victim: Vm, src_mac: str = "") -> None:
    args = (vm.mac, claim_ip, victim.mac, victim.ip, src_mac or vm.mac)
    proc = py_in(vm.netns, FORGE_ARP.format(args=args))
    assert proc.returncode == 0, proc.stderr


def test_forged_arp_reply_is_dropped_and_the_rules_go_with_the_workspace(node: Node) -> None:
    a = node.add_vm("w-a", "10.214.0.11")
    b = node.add_vm("w-b", "10.214.0.12")
    c = node.add_vm("w-c", "10.214.0.13")
    assert c.ping(b.ip)
    assert c.neighbour(b.ip) == b.mac
    time.sleep(1.2)  # past the neighbour table's locktime: a reply could now update it
    forge_arp(a, b.ip, c)  # "10.214.0.12 is at a's MAC"
    forge_arp(a, b.ip, c, src_mac=b.mac)  # ... even from b's MAC as ethernet source
    time.sleep(0.3)
    assert c.neighbour(b.ip) == b.mac

    # a leaves the orders: its rules go on the next pass, and its tap, while its domain
    # is not yet removed, sends nothing at all
    del node.orders["w-a"]
    node.sync()
    assert f"from_{tap_name('w-a', 0)}" not in chains(node.netns)
    assert f"from_{tap_name('w-b', 0)}" in chains(node.netns)
    forge_arp(a, b.ip, c)
    time.sleep(0.3)
    assert c.neighbour(b.ip) == b.mac
    # without our guard table the same forgery passes
    in_ns(node.netns, "nft", "delete", "table", "bridge", "ws_guard", check=True)
    forge_arp(a, b.ip, c)
    time.sleep(0.3)
    assert c.neighbour(b.ip) == a.mac


DHCP_SERVER = """
import socket
import struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", {sport}))
for _ in range(3):
    s.sendto(b"offer", ("255.255.255.255", {dport}))
"""

DHCP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port})); s.settimeout({timeout})
try:
    data, src = s.recvfrom(100)
    print(src[1])
except TimeoutError:
    print("none")
"""


def test_dhcp_server_replies_from_a_vm_are_dropped(node: Node) -> None:
    """From port 67, or to port 68 from any port (a client may take a reply by its
    destination port alone); 1067 -> 1068: the path itself works."""
    rogue = node.add_vm("w-a", "10.214.0.11")
    victim = node.add_vm("w-b", "10.214.0.12")
    for sport, dport, expect in ((67, 68, "none"), (1067, 68, "none"), (1067, 1068, "1067")):
        argv = ["ip", "netns", "exec", victim.netns, sys.executable, "-c",
                DHCP_CLIENT.format(port=dport, timeout=2)]  # fmt: skip
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.4)
            code = DHCP_SERVER.format(sport=sport, dport=dport)
            assert py_in(rogue.netns, code).returncode == 0
            out, _ = client.communicate(timeout=10)
        finally:
            client.kill()
            client.wait()
        assert out.strip() == expect


RAW_FRAME = """
import socket, struct, sys
dst, src, ethertype, payload = {args!r}
frame = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
frame += struct.pack("!H", ethertype) + payload
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(frame)
"""

SNIFF = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0)); s.settimeout(2)
try:
    while True:
        data = s.recv(2000)
        if {marker!r} in data:
            print("seen"); break
except TimeoutError:
    print("none")
"""


def ipv4_packet(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 253, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    checksum = struct.pack("!H", ~words & 0xFFFF)
    return header[:10] + checksum + header[12:] + payload


def frame_arrives(src: Vm, dst: Vm, ethertype: int, payload: bytes) -> bool:
    argv = ["ip", "netns", "exec", dst.netns, sys.executable, "-c",
            SNIFF.format(marker=payload[-8:])]  # fmt: skip
    sniffer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.4)
        args = (dst.mac, src.mac, ethertype, payload)
        assert py_in(src.netns, RAW_FRAME.format(args=args)).returncode == 0
        out, _ = sniffer.communicate(timeout=10)
    finally:
        sniffer.kill()
        sniffer.wait()
    return out.strip() == "seen"


def test_ipv6_and_vlan_tagged_frames_from_a_vm_are_dropped(node: Node) -> None:
    a = node.add_vm("w-a", "10.214.0.11")
    b = node.add_vm("w-b", "10.214.0.12")
    marker = b"wsnf-marker-1234"
    # an IPv4 packet from a's own address (protocol 253, "for experiments"); a valid
    # header, or br_netfilter drops it before any rule of ours
    ipv4 = ipv4_packet(a.ip, b.ip, marker * 2)
    # the sniffer sees what the filter lets through: that packet, untagged
    assert frame_arrives(a, b, 0x0800, ipv4)
    # the same inside an 802.1Q tag (VLAN 7); an unknown ethertype
    assert not frame_arrives(a, b, 0x8100, bytes.fromhex("00070800") + ipv4)
    assert not frame_arrives(a, b, 0x88B5, ipv4)
    # without our guard table the tagged frame would have passed
    in_ns(node.netns, "nft", "delete", "table", "bridge", "ws_guard", check=True)
    assert frame_arrives(a, b, 0x8100, bytes.fromhex("00070800") + ipv4)
    node.sync()  # the table is restored (missing behind the agent's back)
    assert not frame_arrives(a, b, 0x8100, bytes.fromhex("00070800") + ipv4)
    ip("-n", a.netns, "addr", "add", "fd00:214::11/64", "dev", "eth0", "nodad")
    ip("-n", b.netns, "addr", "add", "fd00:214::12/64", "dev", "eth0", "nodad")
    assert in_ns(a.netns, "ping", "-6", "-c", "1", "-W", "1", "fd00:214::12").returncode != 0
    assert a.ping(b.ip)


# -- connectivity --------------------------------------------------------------------------


def test_cluster_reaches_its_members_only(node: Node) -> None:
    members = ("10.214.0.21", "10.214.0.22")
    x = node.add_vm("w-x", members[0], Connectivity.CLUSTER, peers=members)
    y = node.add_vm("w-y", members[1], Connectivity.CLUSTER, peers=members)
    z = node.add_vm("w-z", "10.214.0.23")  # not a member
    assert x.ping(y.ip) and y.ping(x.ip)
    assert x.ping(GW)
    assert not x.ping(z.ip)
    assert not z.ping(x.ip)
    node.listen(x, 5000)
    assert y.connect(x.ip, 5000)
    assert not z.connect(x.ip, 5000)


def test_cluster_reaches_its_networks_dns_server_on_port_53_only(node: Node) -> None:
    resolver = node.add_vm("w-dns", "10.214.0.53")  # not a member, not the gateway
    member = node.add_vm(
        "w-m", "10.214.0.24", Connectivity.CLUSTER, peers=("10.214.0.24",), dns=(resolver.ip,)
    )
    other = node.add_vm("w-o", "10.214.0.25", Connectivity.CLUSTER, peers=("10.214.0.25",))
    node.udp_echo(resolver, 53)
    node.listen(resolver, 53)
    node.listen(resolver, 80)
    assert member.udp_answered(resolver.ip, 53)
    assert member.connect(resolver.ip, 53)  # DNS over TCP (large answers)
    assert not member.connect(resolver.ip, 80)
    assert not member.ping(resolver.ip)
    # a member whose network names no DNS server reaches none
    assert not other.udp_answered(resolver.ip, 53)


def test_outbound_opens_connections_out_and_accepts_none_but_its_allow_rules(
    node: Node,
) -> None:
    o = node.add_vm("w-o", "10.214.0.31", Connectivity.OUTBOUND, allow=("tcp/22",))
    z = node.add_vm("w-z", "10.214.0.32")
    node.listen(z, 8080)
    assert o.ping(z.ip)
    assert o.connect(z.ip, 8080)
    assert not z.ping(o.ip)
    node.listen(o, 80)
    node.listen(o, 22)
    assert not z.connect(o.ip, 80)
    assert z.connect(o.ip, 22)  # the allow rule opens exactly that
    assert o.ping(GW)

    # a policy change of a running VM is a new ruleset on the next pass
    node.orders["w-o"] = replace(node.orders["w-o"], connectivity=Connectivity.OPEN)
    node.sync()
    assert z.ping(o.ip) and z.connect(o.ip, 80)


def test_rules_rebuilt_by_a_new_agent(node: Node) -> None:
    a = node.add_vm("w-a", "10.214.0.11")
    c = node.add_vm("w-c", "10.214.0.13")
    ip("-n", a.netns, "addr", "add", "10.214.0.12/32", "dev", "eth0")
    assert not a.ping(c.ip, src="10.214.0.12")
    in_ns(node.netns, "nft", "delete", "table", "bridge", "ws_guard", check=True)
    assert a.ping(c.ip, src="10.214.0.12")  # (gone: the spoof passes)
    node.sync()  # the same agent's next pass finds it missing and applies it again
    assert "ws_guard" in tables(node.netns)
    assert not a.ping(c.ip, src="10.214.0.12")
    in_ns(node.netns, "nft", "delete", "table", "bridge", "ws_guard", check=True)
    node.agent()  # a restarted agent applies its ruleset once, whatever it finds
    node.sync()
    assert "ws_guard" in tables(node.netns)
    assert not a.ping(c.ip, src="10.214.0.12")


# -- uplinks and VLANs ---------------------------------------------------------------------


@pytest.fixture
def switch() -> Iterator[str]:
    ns = ns_name("sw")
    ip("netns", "add", ns)
    ip("-n", ns, "link", "add", "sw", "type", "bridge")
    ip("-n", ns, "link", "set", "sw", "up")
    try:
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def plug_uplink(node: Node, switch: str, port: str) -> None:
    ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "up0", "netns",
       node.netns)  # fmt: skip
    ip("-n", switch, "link", "set", port, "master", "sw", "up")


def vlan_supported() -> bool:
    """Whether this kernel makes 802.1Q sub-interfaces (some test kernels do not)."""
    ns = ns_name("probe")
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        return sh("ip", "-n", ns, "link", "add", "link", "v0", "name", "v0.7", "type", "vlan",
                  "id", "7", check=False).returncode == 0  # fmt: skip
    finally:
        sh("ip", "netns", "del", ns, check=False)


needs_vlan = pytest.mark.skipif(not vlan_supported(), reason="kernel without 802.1Q VLANs")


@pytest.mark.parametrize(
    ("vlan_a", "vlan_b", "reach"),
    [(0, 0, True), pytest.param(100, 100, True, marks=needs_vlan),
     pytest.param(100, 200, False, marks=needs_vlan)],
)  # fmt: skip
def test_two_nodes_share_l2_through_their_uplinks(
    tmp_path: Path, switch: str, vlan_a: int, vlan_b: int, reach: bool
) -> None:
    na = make_node(tmp_path, uplink="up0", name="na")
    nb = make_node(tmp_path, uplink="up0", name="nb")
    try:
        plug_uplink(na, switch, "pa")
        plug_uplink(nb, switch, "pb")
        a = na.add_vm("w-a", "10.214.0.41", vlan=vlan_a)
        b = nb.add_vm("w-b", "10.214.0.42", vlan=vlan_b)
        port_a = vlan_ifname("up0", vlan_a) if vlan_a else "up0"
        link = json.loads(ip("-n", na.netns, "-j", "-d", "link", "show", port_a))[0]
        assert link["master"] == BRIDGE
        assert a.ping(b.ip) is reach
        # the gateway stays node-local: each VM's gateway is its own node's bridge
        assert a.ping(GW) and b.ping(GW)
        mac_a = json.loads(ip("-n", na.netns, "-j", "link", "show", BRIDGE))[0]["address"]
        assert a.neighbour(GW) == mac_a
        # idempotent: a second pass (and a new agent) changes nothing
        before = links(na.netns)
        na.sync()
        na.agent()
        na.sync()
        assert links(na.netns) == before
    finally:
        na.close()
        nb.close()


@needs_vlan
def test_two_networks_two_vlans_on_one_uplink(node: Node) -> None:
    ip("-n", node.netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    for br in ("wsnfbr1", "wsnfbr2"):
        ip("-n", node.netns, "link", "add", br, "type", "bridge")
    assert ensure_uplink("wsnfbr1", "up0", 101, netns=node.netns) == "up0.101"
    assert ensure_uplink("wsnfbr2", "up0", 102, netns=node.netns) == "up0.102"
    assert ensure_uplink("wsnfbr1", "up0", 101, netns=node.netns) == "up0.101"
    for port, br in (("up0.101", "wsnfbr1"), ("up0.102", "wsnfbr2")):
        link = json.loads(ip("-n", node.netns, "-j", "-d", "link", "show", port))[0]
        assert link["master"] == br and link["linkinfo"]["info_data"]["id"] == int(port[4:])
    # a port of another bridge is never stolen
    with pytest.raises(errors.FailedPrecondition, match="already attached to wsnfbr1"):
        ensure_uplink("wsnfbr2", "up0", 101, netns=node.netns)
    # a long uplink name gets a short stable sub-interface name
    ip("-n", node.netns, "link", "add", "uplinklongname", "type", "veth", "peer", "name", "ulp")
    port = ensure_uplink("wsnfbr2", "uplinklongname", 300, netns=node.netns)
    assert port == vlan_ifname("uplinklongname", 300) and len(port) <= 15


def test_an_uplink_that_does_not_exist(node: Node) -> None:
    ip("-n", node.netns, "link", "add", BRIDGE, "type", "bridge")
    before = links(node.netns)
    with pytest.raises(errors.FailedPrecondition, match="uplink eth9 does not exist on node n1"):
        ensure_uplink(BRIDGE, "eth9", 100, netns=node.netns, node="n1")
    with pytest.raises(errors.FailedPrecondition, match="uplink eth9 does not exist"):
        ensure_uplink(BRIDGE, "eth9", 0, netns=node.netns, node="n1")
    assert links(node.netns) == before

    # through the agent's pass: the network is reported not ready with a clear reason
    # (only its workspaces wait), and the VMs are guarded all the same
    bad = NodeNetworkConfig(name="default", dhcp=False, uplink="eth9")
    node.cfg = AgentConfig(node="n1", state_dir=node.cfg.state_dir, networks=[bad])
    node.agent()
    node.add_vm("w-a", "10.214.0.11")
    broken = node.sync()
    assert list(broken) == ["default"]
    assert "uplink eth9 does not exist on node n1" in broken["default"]
    assert f"from_{tap_name('w-a', 0)}" in chains(node.netns)


def test_cluster_members_on_two_nodes(tmp_path: Path, switch: str) -> None:
    na = make_node(tmp_path, uplink="up0", name="na")
    nb = make_node(tmp_path, uplink="up0", name="nb")
    try:
        plug_uplink(na, switch, "pa")
        plug_uplink(nb, switch, "pb")
        members = ("10.214.0.51", "10.214.0.52")
        x = na.add_vm("w-x", members[0], Connectivity.CLUSTER, peers=members)
        y = nb.add_vm("w-y", members[1], Connectivity.CLUSTER, peers=members)
        z = nb.add_vm("w-z", "10.214.0.53")  # beside y, not a member
        assert x.ping(y.ip) and y.ping(x.ip)
        assert not z.ping(x.ip) and not x.ping(z.ip)
        assert not z.ping(y.ip)
    finally:
        na.close()
        nb.close()


LEASE_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "BOUND ip=$ip router=$router"
exit 0
"""


def test_dhcp_and_the_gateway_work_in_every_mode() -> None:
    state = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-", dir="/var/tmp"))
    state.chmod(0o755)  # dnsmasq (as nobody) reads its hosts file below it
    script = state / "lease.sh"
    script.write_text(LEASE_SCRIPT)
    script.chmod(0o755)
    n = make_node(state, name="n1")
    net = NodeNetworkConfig(name="default", dhcp=True)
    n.cfg = AgentConfig(node="n1", state_dir=str(state / "agent"), networks=[net])
    agent = n.agent()
    try:
        modes = {
            "w-open": Connectivity.OPEN,
            "w-clu": Connectivity.CLUSTER,
            "w-out": Connectivity.OUTBOUND,
        }
        vms = [
            n.add_vm(wid, f"10.214.0.{61 + i}", conn) for i, (wid, conn) in enumerate(modes.items())
        ]
        for vm in vms:
            ip("-n", vm.netns, "addr", "flush", "dev", "eth0")  # no address: ask DHCP
            udhcpc = f"udhcpc -i eth0 -s {script} -q -n -t 5 -T 1"
            out = in_ns(vm.netns, "busybox", *udhcpc.split()).stdout
            assert f"BOUND ip={vm.ip} router={GW}" in out, (vm.workspace_id, out)
            ip("-n", vm.netns, "addr", "add", f"{vm.ip}/{PREFIX}", "dev", "eth0")
            ip("-n", vm.netns, "route", "replace", "default", "via", GW)
            assert vm.ping(GW), vm.workspace_id  # the gateway answers in every mode
    finally:
        for server in agent.servers.values():
            server.stop()
        n.close()
        shutil.rmtree(state, ignore_errors=True)


def test_an_uplink_is_never_stolen(node: Node) -> None:
    for br in (BRIDGE, "wsnfother"):
        ip("-n", node.netns, "link", "add", br, "type", "bridge")
    ip("-n", node.netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ip("-n", node.netns, "link", "set", "up0", "master", "wsnfother")
    before = links(node.netns)
    with pytest.raises(errors.FailedPrecondition, match="already attached to wsnfother"):
        ensure_uplink(BRIDGE, "up0", 0, netns=node.netns, node="n1")
    with pytest.raises(errors.FailedPrecondition, match="is a bridge"):
        ensure_uplink(BRIDGE, "wsnfother", 0, netns=node.netns, node="n1")
    assert links(node.netns) == before
    ip("-n", node.netns, "link", "set", "up0", "nomaster")
    assert ensure_uplink(BRIDGE, "up0", 0, netns=node.netns, node="n1") == "up0"
    assert ensure_uplink(BRIDGE, "up0", 0, netns=node.netns, node="n1") == "up0"
    link = json.loads(ip("-n", node.netns, "-j", "link", "show", "up0"))[0]
    assert link["master"] == BRIDGE and "UP" in link["flags"]
