"""What a VM can forge, with the real dnsmasq and the real nftables ruleset of
``BridgeNetworking`` in network namespaces: DHCP messages in another VM's name or as a
server, frames flooded to it for another VM, flows with a cluster it has left, and
anything at all once its workspace has left the orders while its domain still runs.

Each "VM" is a namespace plugged into the node's bridge by a veth pair whose host end
has the workspace's tap name, so the filter rules apply to it as to a real VM's tap.
Frames are forged with raw sockets (AF_PACKET) inside the VM's namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from agent.net.node import BridgeNetworking
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import Connectivity, parse_rules
from workspace.domain.states import Desired

pytestmark = pytest.mark.host

SUBNET, GW, PREFIX = "10.216.0.0/24", "10.216.0.1", 24
BRIDGE = "wsn8br0"
_ids = itertools.count(1)


# The namespaces' prefix: another one (WS_TEST_NETNS_PREFIX) keeps runs beside each
# other apart by name.
NS_PREFIX = os.environ.get("WS_TEST_NETNS_PREFIX", "wsn8")


def ns_name(role: str) -> str:
    return f"{NS_PREFIX}-{os.getpid() % 100000}-{next(_ids)}-{role}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=False)


@dataclass
class Vm:
    netns: str
    ip: str
    mac: str


@dataclass
class Node:
    netns: str
    state: Path
    net: BridgeNetworking
    orders: dict[str, Order] = field(default_factory=dict)
    vms: list[Vm] = field(default_factory=list)

    def sync(self) -> None:
        assert self.net.sync(sorted(self.orders.values(), key=lambda o: o.workspace_id)) == {}

    def add_vm(self, wid: str, ip_addr: str) -> Vm:
        mac = f"52:54:00:d5:00:{int(ip_addr.rsplit('.', 1)[1]):02x}"
        nic = Nic("default", ip_addr, mac, PREFIX, GW, BRIDGE, SUBNET)
        self.orders[wid] = Order(wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,))
        self.sync()
        vm_ns = ns_name("vm")
        sh("ip", "netns", "add", vm_ns)
        vm = Vm(vm_ns, ip_addr, mac)
        self.vms.append(vm)
        tap = tap_name(wid, 0)
        sh("ip", "-n", self.netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
           "netns", vm_ns)  # fmt: skip
        sh("ip", "-n", self.netns, "link", "set", tap, "master", BRIDGE, "up")
        sh("ip", "-n", vm_ns, "link", "set", "lo", "up")
        sh("ip", "-n", vm_ns, "link", "set", "eth0", "address", mac, "up")
        return vm

    def lease(self, vm: Vm) -> str:
        """What the VM's DHCP client is given (busybox udhcpc): "ip=... " or ""."""
        script = self.state / "lease.sh"
        udhcpc = f"busybox udhcpc -i eth0 -s {script} -q -n -t 3 -T 1"
        out = in_ns(vm.netns, *udhcpc.split()).stdout
        return next((line[6:] for line in out.splitlines() if line.startswith("BOUND ")), "")


LEASE_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "BOUND ip=$ip"
exit 0
"""


@pytest.fixture
def node() -> Iterator[Node]:
    state = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-", dir="/var/tmp"))
    state.chmod(0o755)  # dnsmasq (as nobody) reads its hosts file below it
    (state / "lease.sh").write_text(LEASE_SCRIPT)
    (state / "lease.sh").chmod(0o755)
    netns = ns_name("node")
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    cfg = AgentConfig(
        node="n1",
        state_dir=str(state / "agent"),
        networks=[NodeNetworkConfig(name="default", dhcp=True)],
    )
    n = Node(netns, state, BridgeNetworking(cfg, netns=netns))
    try:
        yield n
    finally:
        for server in n.net.servers.values():
            server.stop()
        for ns in [vm.netns for vm in n.vms] + [netns]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(state, ignore_errors=True)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def dhcp_message(kind: int, chaddr: str, options: bytes = b"") -> bytes:
    """A BOOTP request (UDP payload) of DHCP message type ``kind`` for ``chaddr``."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, 0x5753D5, 0, 0x8000, *[bytes(4)] * 4)
    bootp += _mac(chaddr).ljust(16, b"\0") + bytes(64 + 128) + bytes.fromhex("63825363")
    bootp += bytes((53, 1, kind)) + options + b"\xff"
    return bootp.ljust(300, b"\0")


def frames(vm: Vm, payload: bytes, fragment: bool) -> list[bytes]:
    """Ethernet frames of a UDP datagram 0.0.0.0:68 -> 255.255.255.255:67 (as a DHCP
    client sends before it has an address); ``fragment``: from the VM's own address to
    the server's, in two IPv4 fragments, the first holding the UDP header and 16 bytes
    of the payload, chaddr in the second."""
    src, dst = (vm.ip, GW) if fragment else ("0.0.0.0", "255.255.255.255")
    return udp_frames(vm.mac, src, dst, (68, 67), payload, fragment)


def udp_frames(
    mac: str, src: str, dst: str, ports: tuple[int, int], payload: bytes, fragment: bool = False
) -> list[bytes]:
    """Broadcast Ethernet frames from ``mac`` of one UDP datagram ``src`` -> ``dst``."""
    udp = struct.pack("!HHHH", *ports, 8 + len(payload), 0) + payload
    parts = [(0, udp[:24], True), (3, udp[24:], False)] if fragment else [(0, udp, False)]
    out = []
    for offset, data, more in parts:
        flags = (0x2000 if more else 0) | offset
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), 0x77, flags, 64, 17, 0,
                          socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
        hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        out.append(b"\xff" * 6 + _mac(mac) + b"\x08\x00" + hdr + data)
    return out


SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for frame in {frames!r}:
    s.send(frame)
"""


def send(vm: Vm, raw: list[bytes]) -> None:
    code = SEND.format(frames=raw)
    assert in_ns(vm.netns, sys.executable, "-c", code).returncode == 0


@pytest.mark.parametrize("fragment", [False, True], ids=["whole", "fragmented"])
def test_a_vm_cannot_decline_another_vms_address(node: Node, fragment: bool) -> None:
    victim = node.add_vm("w-victim", "10.216.0.11")
    rogue = node.add_vm("w-rogue", "10.216.0.12")
    assert node.lease(victim) == f"ip={victim.ip}"  # the path works
    # A DHCPDECLINE in the victim's name (its MAC as chaddr): dnsmasq would refuse the
    # victim's configured address for ten minutes ("previously declined").
    opts = bytes((50, 4)) + socket.inet_aton(victim.ip) + bytes((54, 4)) + socket.inet_aton(GW)
    send(rogue, frames(rogue, dhcp_message(4, victim.mac, opts), fragment))
    assert node.lease(victim) == f"ip={victim.ip}"
    assert node.lease(rogue) == f"ip={rogue.ip}"  # its own still works


LISTEN = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({gw!r}, 5353)); s.settimeout(3)
try:
    print(s.recvfrom(100)[1][0])
except TimeoutError:
    print("none")
"""


def forged_source_arrives(node: Node, rogue: Vm, claim: str) -> str:
    """What the node sees as the source of a datagram ``rogue`` sends from ``claim``."""
    argv = ["ip", "netns", "exec", node.netns, sys.executable, "-c", LISTEN.format(gw=GW)]
    listener = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.4)  # bound before the rogue sends
        send(rogue, udp_frames(rogue.mac, claim, GW, (5353, 5353), b"forged"))
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
        listener.wait()
    return out.strip()


def test_a_vm_whose_workspace_left_the_orders_sends_nothing(node: Node) -> None:
    victim = node.add_vm("w-victim", "10.216.0.21")
    rogue = node.add_vm("w-rogue", "10.216.0.22")
    assert forged_source_arrives(node, rogue, rogue.ip) == rogue.ip  # the path works
    assert forged_source_arrives(node, rogue, victim.ip) == "none"
    # Destroyed: its order is gone, its domain (here: its tap) not yet removed, as while
    # the node's removal waits behind other operations or fails.
    del node.orders["w-rogue"]
    node.sync()
    assert forged_source_arrives(node, rogue, victim.ip) == "none"
    assert forged_source_arrives(node, rogue, rogue.ip) == "none"
    assert node.lease(victim) == f"ip={victim.ip}"  # the others are unaffected


RENEW = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 68)); s.settimeout(3)
s.sendto({message!r}, ({server!r}, 67))
data = s.recvfrom(1500)[0]
print({{5: "ACK", 6: "NAK"}}.get(data[data.index(bytes((53, 1)), 240) + 2], "other"))
"""


def renew(vm: Vm, client_id: bytes) -> str:
    """The server's answer to the VM renewing its lease (a DHCPREQUEST from its address,
    ciaddr set, no broadcast flag, as a client in RENEWING state sends): ACK or NAK."""
    msg = bytearray(dhcp_message(3, vm.mac, client_id))
    msg[10:12] = bytes(2)  # flags
    msg[12:16] = socket.inet_aton(vm.ip)  # ciaddr
    sh("ip", "-n", vm.netns, "addr", "replace", f"{vm.ip}/{PREFIX}", "dev", "eth0")
    code = RENEW.format(message=bytes(msg), server=GW)
    return in_ns(vm.netns, sys.executable, "-c", code).stdout.strip()


def test_a_vm_cannot_take_another_vms_lease_by_its_client_id(node: Node) -> None:
    victim = node.add_vm("w-victim", "10.216.0.41")
    rogue = node.add_vm("w-rogue", "10.216.0.42")
    assert node.lease(victim) == f"ip={victim.ip}"  # busybox sends client-id 01:<MAC>
    client_id = bytes((61, 7, 1)) + _mac(victim.mac)
    assert renew(victim, client_id) == "ACK"
    # The rogue asks for its own address, with its own MAC (as the filter demands), but
    # the victim's client-id: dnsmasq found the victim's lease by that id and moved it.
    opts = bytes((50, 4)) + socket.inet_aton(rogue.ip) + bytes((54, 4)) + socket.inet_aton(GW)
    send(rogue, frames(rogue, dhcp_message(3, rogue.mac, opts + client_id), False))
    assert renew(victim, client_id) == "ACK"  # it was NAK: "lease not found"
    assert node.lease(rogue) == f"ip={rogue.ip}"


ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {port}))
while True:
    data, peer = s.recvfrom(100); s.sendto({answer!r}, peer)
"""

ASK = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {sport})); s.settimeout(2)
s.sendto(b"q", ({dst!r}, {dport}))
try:
    print(s.recvfrom(100)[0].decode())
except TimeoutError:
    print("none")
"""


def plug(node: Node, wid: str, order: Order) -> Vm:
    """A VM for ``order`` (already in the node's orders), its address configured."""
    nic = order.nics[0]
    vm = Vm(ns_name("vm"), nic.ip, nic.mac)
    sh("ip", "netns", "add", vm.netns)
    node.vms.append(vm)
    tap = tap_name(wid, 0)
    sh("ip", "-n", node.netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
       "netns", vm.netns)  # fmt: skip
    sh("ip", "-n", node.netns, "link", "set", tap, "master", BRIDGE, "up")
    sh("ip", "-n", vm.netns, "link", "set", "eth0", "address", vm.mac, "up")
    sh("ip", "-n", vm.netns, "addr", "add", f"{vm.ip}/{PREFIX}", "dev", "eth0")
    return vm


def outbound(wid: str, nic: Nic, *allow: str) -> Order:
    return Order(wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,),
                 connectivity=Connectivity.OUTBOUND, allow=parse_rules(allow))  # fmt: skip


def test_a_reused_address_does_not_inherit_the_old_workspaces_flows(node: Node) -> None:
    peer = node.add_vm("w-peer", "10.216.0.52")
    sh("ip", "-n", peer.netns, "addr", "add", f"{peer.ip}/{PREFIX}", "dev", "eth0")
    nic = Nic("default", "10.216.0.51", "52:54:00:d5:00:33", PREFIX, GW, BRIDGE, SUBNET)
    node.orders["w-old"] = outbound("w-old", nic, "udp/5000")
    node.sync()
    old = plug(node, "w-old", node.orders["w-old"])
    procs = []

    def serve(vm: Vm, answer: str) -> None:
        code = ECHO.format(port=5000, answer=answer.encode())
        argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", code]
        procs.append(subprocess.Popen(argv))
        time.sleep(0.4)  # bound before the peer asks

    def ask(sport: int) -> str:
        code = ASK.format(sport=sport, dst=nic.ip, dport=5000)
        return in_ns(peer.netns, sys.executable, "-c", code).stdout.strip()

    try:
        serve(old, "old")
        assert ask(40000) == "old"  # its allow rule opens udp/5000
        # w-old ends (its VM gone), and its address goes to w-new of another owner, on the
        # same node, with no allow rule: nothing may come in unasked.
        del node.orders["w-old"]
        node.sync()
        sh("ip", "netns", "del", old.netns)
        new_nic = replace(nic, mac="52:54:00:d5:01:33")
        node.orders["w-new"] = outbound("w-new", new_nic)
        node.sync()
        new = plug(node, "w-new", node.orders["w-new"])
        sh("ip", "-n", peer.netns, "neigh", "flush", "all")  # the new VM's MAC, as after its ARP
        serve(new, "new")
        assert ask(40001) == "none"  # a new flow: refused
        assert ask(40000) == "none"  # the old workspace's flow: refused too (it came in)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


RECEIVE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {port})); s.settimeout(3)
try:
    print(s.recvfrom(100)[0].decode())
except TimeoutError:
    print("none")
"""

SEND_FROM = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {sport}))
s.sendto(b"from {sport}", ({dst!r}, {dport}))
"""


def received(receiver: Vm, port: int, sender: Vm, sport: int) -> str:
    """What ``receiver`` gets on ``port`` when ``sender`` sends to it from ``sport``."""
    argv = ["ip", "netns", "exec", receiver.netns, sys.executable, "-c", RECEIVE.format(port=port)]
    listener = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.4)  # bound before the sender sends
        code = SEND_FROM.format(sport=sport, dst=receiver.ip, dport=port)
        assert in_ns(sender.netns, sys.executable, "-c", code).returncode == 0
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
        listener.wait()
    return out.strip()


def test_a_cluster_vm_sends_dhcp_to_its_server_only(node: Node) -> None:
    """A CLUSTER workspace reaches its peers, its gateway, DHCP and DNS only: "DHCP"
    (udp 68 -> 67) is its node's server or a broadcast, not any host's port 67."""
    other = node.add_vm("w-other", "10.216.0.62")
    sh("ip", "-n", other.netns, "addr", "add", f"{other.ip}/{PREFIX}", "dev", "eth0")
    nic = Nic("default", "10.216.0.61", "52:54:00:d5:00:3d", PREFIX, GW, BRIDGE, SUBNET)
    node.orders["w-clu"] = replace(outbound("w-clu", nic), connectivity=Connectivity.CLUSTER)
    node.sync()
    member = plug(node, "w-clu", node.orders["w-clu"])
    assert node.lease(member) == f"ip={member.ip}"  # its DHCP works (broadcast, then GW)
    assert received(member, 5000, other, 40000) == "none"  # not a peer (the path: below)
    assert received(other, 67, member, 68) == "none"
    node.orders["w-clu"] = replace(node.orders["w-clu"], connectivity=Connectivity.OPEN)
    node.sync()
    assert received(other, 67, member, 68) == "from 68"


def test_a_vm_sends_no_dhcp_server_replies_from_another_port(node: Node) -> None:
    """A DHCP client (busybox udhcpc) takes a reply by its destination port 68 alone,
    whatever its source port: a VM answering from port 6767 was its neighbours' DHCP
    server (their router and DNS servers, or a NAK at each of their requests). Nothing
    a VM sends reaches a port 68."""
    victim = node.add_vm("w-victim", "10.216.0.71")
    sh("ip", "-n", victim.netns, "addr", "add", f"{victim.ip}/{PREFIX}", "dev", "eth0")
    rogue = node.add_vm("w-rogue", "10.216.0.72")
    sh("ip", "-n", rogue.netns, "addr", "add", f"{rogue.ip}/{PREFIX}", "dev", "eth0")
    assert received(victim, 6868, rogue, 6767) == "from 6767"  # the path works
    assert received(victim, 68, rogue, 6767) == "none"
    assert received(victim, 68, rogue, 67) == "none"
    assert node.lease(victim) == f"ip={victim.ip}"  # the node's own server still answers


SNIFF = """
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0)); s.settimeout(0.2)
seen, end = "none", time.monotonic() + 3
while time.monotonic() < end:
    try:
        frame = s.recv(2000)
    except TimeoutError:
        continue
    if frame[:6] == {mac!r} and b"secret" in frame:
        seen = "seen"
print(seen)
"""

SEND_SECRET = """
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"secret", ({dst!r}, 5000))
"""


def test_a_vm_does_not_see_frames_flooded_to_another(node: Node) -> None:
    """A bridge floods a frame for a MAC it has not learned (a VM silent for the 5 min of
    its FDB's ageing, or just plugged) to every port: a VM's tap delivers it frames for
    its own MAC, broadcasts and multicasts only, so a neighbour's traffic is not its to
    read, whatever either's connectivity."""
    victim = node.add_vm("w-victim", "10.216.0.81")
    in_ns(victim.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")  # silent
    sender = node.add_vm("w-sender", "10.216.0.82")
    sh("ip", "-n", sender.netns, "addr", "add", f"{sender.ip}/{PREFIX}", "dev", "eth0")
    # No ARP (the victim's answer would teach the bridge its port)
    sh("ip", "-n", sender.netns, "neigh", "replace", victim.ip, "lladdr", victim.mac,
       "dev", "eth0", "nud", "permanent")  # fmt: skip
    rogue = node.add_vm("w-rogue", "10.216.0.83")

    def sniffed(vm: Vm) -> str:
        argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c",
                SNIFF.format(mac=_mac(victim.mac))]  # fmt: skip
        sniffer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.4)  # bound before the sender sends
            sh("bridge", "-n", node.netns, "fdb", "del", victim.mac, "dev",
               tap_name("w-victim", 0), "master", check=False)  # fmt: skip
            code = SEND_SECRET.format(dst=victim.ip)
            assert in_ns(sender.netns, sys.executable, "-c", code).returncode == 0
            out, _ = sniffer.communicate(timeout=10)
        finally:
            sniffer.kill()
            sniffer.wait()
        return out.strip()

    assert sniffed(victim) == "seen"  # the path works: flooded, as nothing taught the bridge
    assert sniffed(rogue) == "none"


def test_a_peer_that_left_the_cluster_keeps_no_flow_with_its_members(node: Node) -> None:
    """A member that left the cluster (destroyed: its address is soon another
    workspace's, on this node or another) is no peer in the new ruleset, and the flows
    it had with the members left are forgotten: nobody who holds its address next goes
    on in them."""
    former = node.add_vm("w-former", "10.216.0.92")
    sh("ip", "-n", former.netns, "addr", "add", f"{former.ip}/{PREFIX}", "dev", "eth0")
    nic = Nic("default", "10.216.0.91", "52:54:00:d5:00:5b", PREFIX, GW, BRIDGE, SUBNET)
    member = replace(
        outbound("w-member", nic), connectivity=Connectivity.CLUSTER, peers=(nic.ip, former.ip)
    )
    node.orders["w-member"] = member
    node.sync()
    vm = plug(node, "w-member", member)
    code = ECHO.format(port=5000, answer=b"member")
    argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", code]
    server = subprocess.Popen(argv)

    def ask(sport: int) -> str:
        code = ASK.format(sport=sport, dst=nic.ip, dport=5000)
        return in_ns(former.netns, sys.executable, "-c", code).stdout.strip()

    try:
        time.sleep(0.4)  # bound before the peer asks
        assert ask(40000) == "member"  # a peer: let in
        node.orders["w-member"] = replace(member, peers=(nic.ip,))
        node.sync()
        assert ask(40001) == "none"  # a new flow: refused
        assert ask(40000) == "none"  # its old flow: refused too (it was established)
    finally:
        server.kill()
        server.wait()
