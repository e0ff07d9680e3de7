"""The node's packet filter: anti-spoofing and connectivity policy, as ONE nftables script.

``render(orders, bridges)`` is pure: from the node's whole desired state it renders a
script that replaces our two tables in one transaction (``nft -f`` is atomic), and
``apply_ruleset`` loads it. No other table is ever touched. See
docs/design/network-policy.md for the why; in short:

* ``table bridge ws_guard`` (hooks forward/input/output, priority -200) sees every frame
  a VM's tap sends or receives. Per NIC a chain ``from_<tap>`` lets through only frames
  with the NIC's MAC, ARP with its MAC and IP (or 0.0.0.0, probes), IPv4 from its IP (or
  a DHCP discover from 0.0.0.0), DHCP client messages for its own MAC only (chaddr), no
  DHCP server replies (nothing from port 67 nor to port 68); everything else (IPv6,
  VLAN-tagged frames, other ethertypes) is dropped. A NIC with CLUSTER or OUTBOUND
  connectivity also gets its frames marked (``meta mark``, ``MARK_BASE | id``). Per NIC
  a chain ``to_<tap>`` delivers it no frame unicast to another MAC (a bridge floods those
  it has not learned to every port), and for CLUSTER or OUTBOUND only IPv4 for its own
  address (and DHCP replies) and ARP. A NIC whose values cannot be rendered (``blocked``)
  sends and receives nothing. Uplinked bridges with the distributed gateway
  keep the gateway node-local (no ARP for it, no IPv4 from it, crosses the uplink).
* ``table inet ws_policy`` (hooks forward/input/output, priority 0) is where conntrack
  works: bridged IPv4 reaches it through br_netfilter. The mark names the sending NIC
  (``out_<tap>``: a CLUSTER NIC may only talk to its peers, its gateway, DHCP and port
  53 of its network's DNS servers, and answer what came in); the bridge and destination
  address name the receiving NIC (``in_<tap>``: replies, DHCP, the gateway -- unless a
  site router beyond the uplink holds it --, the peers for CLUSTER, allow rules, and
  nothing else). First of all, every NIC that may send is bounded in the connections
  it opens that conntrack tracks at once (``flows_<tap>``, ``ct count``; the agent's
  ``conntrack_per_nic``), so one VM cannot fill the node's table.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.virt.base import TAP_PREFIX, tap_name
from workspace import errors
from workspace.domain.model import Nic, Order
from workspace.domain.netpolicy import AllowRule, Connectivity

log = logging.getLogger("agent.net.filter")

GUARD_TABLE = "ws_guard"
POLICY_TABLE = "ws_policy"
# Marks we put on frames from restricted NICs: "WS" in the high half, the NIC's id in
# the low half (ids are per ruleset; a frame carries its mark only through one node).
MARK_BASE = 0x57530000
MAX_NICS = 0xFFFF


class FilterError(errors.FailedPrecondition):
    """The node's filter rules could not be applied (the message names what)."""


@dataclass(frozen=True, order=True)
class BridgeSpec:
    """A bridge of this node as the filter needs it.

    ``uplink_port``: the interface attached to it towards other nodes ("" = none);
    ``local_gateway``: the gateway address every node's bridge holds (a distributed
    gateway, kept node-local), "" when the bridge has no shared gateway address;
    ``dhcp_server``: the address the node's DHCP server answers from on it ("" = the
    node serves no DHCP there: the site's server may be anywhere).
    """

    bridge: str
    uplink_port: str = ""
    local_gateway: str = ""
    dhcp_server: str = ""


@dataclass(frozen=True, order=True)
class NicRule:
    """One NIC of one workspace, with what the filter needs of its order."""

    tap: str
    workspace_id: str
    index: int
    mac: str
    ip: str
    bridge: str
    gateway: str
    connectivity: Connectivity
    allow: tuple[AllowRule, ...]
    peers: tuple[str, ...]
    dns: tuple[str, ...] = ()  # its network's DNS servers (IPv4 ones; port 53 only)
    # Why this NIC's values cannot be rendered ("" = they can): such a NIC's tap gets
    # chains that drop everything it sends and everything sent to it (fail closed, the
    # others are unaffected).
    blocked: str = ""

    @property
    def restricted(self) -> bool:
        return not self.blocked and self.connectivity is not Connectivity.OPEN


def nic_rules(orders: Iterable[Order], served: Iterable[str] | None = None) -> list[NicRule]:
    """Every NIC of these orders (of the networks in ``served``, if given), by tap name."""
    nets = set(served) if served is not None else None
    out = []
    for order in orders:
        for i, nic in enumerate(order.nics):
            if nets is not None and nic.network not in nets:
                continue
            out.append(_nic_rule(order, i, nic))
    return sorted(out, key=lambda r: r.tap)


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
# As agent/net/bridge.py's: Linux refuses "." and ".." as interface names.
_IFNAME = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9_.-]{1,15}\Z")


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _nic_rule(order: Order, index: int, nic: Nic) -> NicRule:
    mac = nic.mac.lower()
    blocked = ""
    if not _MAC.match(mac):
        blocked = f"MAC {nic.mac!r} is not a MAC address"
    elif not _ipv4(nic.ip):
        blocked = f"address {nic.ip!r} is not an IPv4 address"
    elif not _IFNAME.match(nic.bridge):
        blocked = f"bridge {nic.bridge!r} is not an interface name"
    elif nic.gateway and not _ipv4(nic.gateway):
        blocked = f"gateway {nic.gateway!r} is not an IPv4 address"
    return NicRule(
        tap=tap_name(order.workspace_id, index),
        workspace_id=order.workspace_id,
        index=index,
        mac=mac,
        ip=nic.ip,
        bridge=nic.bridge,
        gateway=nic.gateway,
        connectivity=order.connectivity,
        allow=tuple(sorted(set(order.allow))),
        peers=tuple(sorted({p for p in order.peers if _ipv4(p)} - {nic.ip})),
        dns=tuple(sorted({d for d in nic.dns if _ipv4(d)})),
        blocked=blocked,
    )


def _q(name: str) -> str:
    return f'"{name}"'


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _allow(rule: AllowRule) -> str:
    src = "" if rule.source == "0.0.0.0/0" else f"ip saddr {rule.source} "
    if rule.protocol in ("tcp", "udp"):
        ports = ""
        if rule.port_min:
            ports = f" {rule.protocol} dport {rule.port_min}"
            if rule.port_max != rule.port_min:
                ports += f"-{rule.port_max}"
        if ports:
            return f"{src}{ports.strip()} accept"
        return f"{src}meta l4proto {rule.protocol} accept"
    if rule.protocol == "icmp":
        return f"{src}meta l4proto icmp accept"
    return f"{src}accept"


class _Script:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, text: str, depth: int = 0) -> None:
        self.lines.append("\t" * depth + text)

    def chain(self, name: str, rules: Sequence[str], hook: str = "", comment: str = "") -> None:
        self.add(f"chain {name} {{", 1)
        if comment:  # one line whatever the values hold
            self.add("# " + "".join(c if c.isprintable() else "?" for c in comment), 2)
        if hook:
            self.add(hook, 2)
        for rule in rules:
            self.add(rule, 2)
        self.add("}", 1)


def _from_chain(nic: NicRule, mark: int) -> list[str]:
    if nic.blocked:
        return ["drop"]
    rules = []
    if nic.restricted:
        rules.append(f"meta mark set {mark:#010x}")
    rules += [
        f"ether saddr != {nic.mac} drop",
        f"ether type arp arp saddr ether != {nic.mac} drop",
        f"ether type arp arp saddr ip != {_set(sorted({'0.0.0.0', nic.ip}))} drop",
        "ether type arp return",
        "ether type ip udp sport 67 drop",
        # A client may take a server's reply by its destination port alone (busybox
        # udhcpc checks no source port): from port 6767 a VM was still its neighbours'
        # DHCP server. No VM has anything to send to a DHCP client's port.
        "ether type ip udp dport 68 drop",
        # DHCP names its client by the BOOTP chaddr, not by the frame's source: a VM may
        # speak for its own MAC only (a DHCPDECLINE naming another VM's MAC disabled that
        # VM's address in dnsmasq for ten minutes). chaddr is 36 bytes into the UDP
        # header, so a first fragment could leave it to a later one that carries no UDP
        # header: DHCP is never fragmented, so a fragmented one is dropped.
        "ether type ip udp dport 67 ip frag-off & 0x3fff != 0 drop",
        f"ether type ip udp dport 67 @th,288,48 != 0x{nic.mac.replace(':', '')} drop",
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return",
        f"ether type ip ip saddr != {nic.ip} drop",
        "ether type ip return",
        "drop",  # IPv6, VLAN-tagged frames and every other ethertype
    ]
    return rules


def _to_chain(nic: NicRule) -> list[str]:
    if nic.blocked:  # fail closed both ways: without a MAC to trust, nothing is its own
        return ["drop"]
    # A bridge floods a frame for a MAC it has not learned (a VM silent for its FDB's
    # ageing time, or just plugged) to every port: no VM reads frames unicast to another.
    rules = [f"ether daddr != {nic.mac} ether daddr & 01:00:00:00:00:00 == 00:00:00:00:00:00 drop"]
    if nic.restricted:
        rules += [
            "ether type arp return",
            f"ether type ip ip daddr {nic.ip} return",
            "ether type ip udp sport 67 udp dport 68 return",
            "drop",
        ]
    return rules


def _dhcp_peers(server: str) -> str:
    """Where a restricted NIC's DHCP goes to or comes from: its node's server (and a
    broadcast), when the node serves DHCP on its bridge; else anywhere (the site's)."""
    return f"ip daddr {_set(sorted({'255.255.255.255', server}))} " if server else ""


def _out_chain(nic: NicRule, server: str = "") -> list[str]:
    # Only CLUSTER NICs have one: OUTBOUND may send anywhere. ``return``, not accept:
    # the receiving NIC's own ``in_`` chain must still see what passes here. DHCP goes
    # to the node's server only: "udp 68 -> 67" to any host was a way out.
    rules = [
        f"{_dhcp_peers(server)}udp sport 68 udp dport 67 return",
        f"ip daddr {nic.gateway} return" if nic.gateway else "",
        f"ip daddr {_set(nic.dns)} meta l4proto {{ tcp, udp }} th dport 53 return"
        if nic.dns
        else "",
        f"ip daddr {_set(nic.peers)} return" if nic.peers else "",
        "ct state established,related return",
        "drop",
    ]
    return [r for r in rules if r]


def _in_chain(nic: NicRule, gateway_trusted: bool = True, server: str = "") -> list[str]:
    """``gateway_trusted``: the gateway address can only be the node itself here (it
    holds it, and ws_guard drops it from the uplink) or nobody; False when a site
    router holds it beyond the uplink, where any host of the L2 could forge it.
    ``server``: the node's DHCP server on the NIC's bridge ("" = none)."""
    rules = [
        "ct state established,related accept",
        f"ip saddr {server} udp sport 67 udp dport 68 accept"
        if server
        else "udp sport 67 udp dport 68 accept",
        f"ip saddr {nic.gateway} accept" if nic.gateway and gateway_trusted else "",
    ]
    if nic.connectivity is Connectivity.CLUSTER and nic.peers:
        rules.append(f"ip saddr {_set(nic.peers)} accept")
    rules += [_allow(r) for r in nic.allow]
    rules.append("drop")
    return [r for r in rules if r]


def _uplink_rules(bridges: Sequence[BridgeSpec], hook: str) -> list[str]:
    """Keep a distributed gateway node-local: nothing of the node leaves through the
    uplink, no ARP for the gateway address crosses it, and no IPv4 from the gateway
    address comes in through it (every node holds that address: from the uplink it is
    always forged, and the policy trusts it)."""
    rules = []
    for b in bridges:
        if not (b.uplink_port and b.local_gateway):
            continue
        port, gw = _q(b.uplink_port), b.local_gateway
        if hook == "output":
            rules.append(f"oifname {port} drop")
        else:
            rules.append(f"iifname {port} ether type arp arp daddr ip {gw} drop")
            rules.append(f"iifname {port} ether type arp arp saddr ip {gw} drop")
            rules.append(f"iifname {port} ether type ip ip saddr {gw} drop")
        if hook == "forward":
            rules.append(f"oifname {port} ether type arp arp daddr ip {gw} drop")
    return rules


def _unknown_taps(nics: Sequence[NicRule], way: str = "iifname") -> str:
    """Drop what a tap of ours sends (``way`` "iifname") or would be delivered
    ("oifname") when no NIC of the orders has it: its workspace left the orders
    (destroyed) but its domain still runs until its removal is carried out (queued
    behind other operations, failing, or a create under way that starts it); without
    rules it could send from any MAC and address, answer DHCP, advertise routes, and it
    read every broadcast and every frame the bridge floods (unicast to a MAC it has not
    learned: its neighbours' conversations)."""
    known = f" {way} != {_set(_q(n.tap) for n in nics)}" if nics else ""
    return f'{way} "{TAP_PREFIX}*"{known} drop'


def _flow_limit(nics: Sequence[NicRule], limit: int) -> tuple[list[str], dict[str, list[str]]]:
    """The per-NIC bound on tracked connections (``limit``; 0 = none): a rule of the
    ``policy_forward`` and ``policy_input`` hooks that sends what each NIC opens
    (bridged IPv4 names its bridge as ``iifname``, and ws_guard keeps its source address
    its own) to a chain of its own, whose ``ct count`` drops a new connection beyond
    ``limit`` before conntrack confirms it. Every NIC that may send has one, whatever its
    connectivity: an OPEN VM's flows fill the node's table as well. Its ``counter``
    tells an admin what was refused (``nft list chain inet ws_policy flows_<tap>``; the
    agent's drift check lists the tables without counters' values)."""
    # One chain per (bridge, address): two NICs given one address (which the service
    # never does) would be one key twice, which nft refuses, and are one source anyway.
    first: dict[tuple[str, str], NicRule] = {}
    for n in nics:
        if not n.blocked:
            first.setdefault((n.bridge, n.ip), n)
    if limit <= 0 or not first:
        return [], {}
    sending = sorted(first.values(), key=lambda n: n.tap)
    dispatch = _set(f"{_q(n.bridge)} . {n.ip} : jump flows_{n.tap}" for n in sending)
    chains = {n.tap: [f"ct state new ct count over {limit} counter drop"] for n in sending}
    return [f"iifname . ip saddr vmap {dispatch}"], chains


def render(
    orders: Iterable[Order], bridges: Iterable[BridgeSpec] = (), *, flow_limit: int = 0
) -> str:
    """The whole ruleset of a node: both tables, replaced in one transaction."""
    return render_nics(nic_rules(orders), bridges, flow_limit=flow_limit)


def render_nics(
    nics: Sequence[NicRule], bridges: Iterable[BridgeSpec] = (), *, flow_limit: int = 0
) -> str:
    """``flow_limit``: the most connections each NIC may have tracked at once (0 = no
    bound; ``_flow_limit``)."""
    if len(nics) > MAX_NICS:
        raise FilterError(f"{len(nics)} NICs on one node: the filter marks at most {MAX_NICS}")
    brs = sorted(set(bridges))
    marks = {n.tap: MARK_BASE | (i + 1) for i, n in enumerate(nics)}
    restricted = [n for n in nics if n.restricted]
    s = _Script()
    s.add("# workspace-agent: the node's filter (agent/net/filter.py); replaced as a whole")
    # add + delete + define: one transaction replacing the table whether it existed or not.
    s.add(f"add table bridge {GUARD_TABLE}")
    s.add(f"delete table bridge {GUARD_TABLE}")
    s.add(f"table bridge {GUARD_TABLE} {{")
    from_map = _set(f"{_q(n.tap)} : jump from_{n.tap}" for n in nics)
    # Every NIC receives only its own frames; one with bad values nothing (``_to_chain``).
    to_map = _set(f"{_q(n.tap)} : jump to_{n.tap}" for n in nics)
    for hook in ("forward", "input", "output"):
        rules = _uplink_rules(brs, hook)
        if hook in ("forward", "input"):
            rules.append(_unknown_taps(nics))
        if hook in ("forward", "output"):
            rules.append(_unknown_taps(nics, "oifname"))
        if nics and hook in ("forward", "input"):
            rules.append(f"iifname vmap {from_map}")
        if nics and hook in ("forward", "output"):
            rules.append(f"oifname vmap {to_map}")
        s.chain(
            f"guard_{hook}",
            rules,
            hook=f"type filter hook {hook} priority -200; policy accept;",
        )
    for n in nics:
        where = f"workspace {n.workspace_id} nic {n.index} bridge {n.bridge}"
        if n.blocked:
            where = f"workspace {n.workspace_id} nic {n.index}: blocked, {n.blocked}"
        s.chain(f"from_{n.tap}", _from_chain(n, marks[n.tap]), comment=where)
        s.chain(f"to_{n.tap}", _to_chain(n), comment=where)
    s.add("}")
    s.add(f"add table inet {POLICY_TABLE}")
    s.add(f"delete table inet {POLICY_TABLE}")
    s.add(f"table inet {POLICY_TABLE} {{")
    cluster = [n for n in restricted if n.connectivity is Connectivity.CLUSTER]
    out_map = _set(f"{marks[n.tap]:#010x} : jump out_{n.tap}" for n in cluster)
    in_map = _set(f"{_q(n.bridge)} . {n.ip} : jump in_{n.tap}" for n in restricted)
    limit_rules, limit_chains = _flow_limit(nics, flow_limit)
    for hook in ("forward", "input", "output"):
        # The bound first: a verdict of a NIC's chains below ends the hook's evaluation.
        rules = list(limit_rules) if hook in ("forward", "input") else []
        if cluster and hook in ("forward", "input"):
            rules.append(f"meta mark vmap {out_map}")
        if restricted and hook in ("forward", "output"):
            rules.append(f"oifname . ip daddr vmap {in_map}")
        s.chain(
            f"policy_{hook}",
            rules,
            hook=f"type filter hook {hook} priority 0; policy accept;",
        )
    # Uplinked bridges whose gateway a site router holds (bridge_address "" or a CIDR):
    # their gateway address is not trusted (see _in_chain).
    routed = {b.bridge for b in brs if b.uplink_port and not b.local_gateway}
    servers = {b.bridge: b.dhcp_server for b in brs if _ipv4(b.dhcp_server)}
    for n in restricted:
        where = f"workspace {n.workspace_id} nic {n.index} bridge {n.bridge}"
        server = servers.get(n.bridge, "")
        if n.connectivity is Connectivity.CLUSTER:
            s.chain(f"out_{n.tap}", _out_chain(n, server), comment=where)
        s.chain(f"in_{n.tap}", _in_chain(n, n.bridge not in routed, server), comment=where)
    for n in nics:
        if n.tap in limit_chains:
            where = f"workspace {n.workspace_id} nic {n.index} bridge {n.bridge}"
            s.chain(f"flows_{n.tap}", limit_chains[n.tap], comment=where)
    s.add("}")
    return "\n".join(s.lines) + "\n"


_ERR_LINE = re.compile(r"^[^:\n]*:(\d+):\d+(?:-\d+)?: Error: (.*)$", re.M)


def _blame(script: str, stderr: str) -> str:
    """What the first error of ``nft`` is about: the workspace/bridge comment of the
    chain holding the failing line, if any."""
    m = _ERR_LINE.search(stderr)
    if not m:
        return ""
    lines = script.splitlines()
    lineno = int(m[1])
    for i in range(min(lineno, len(lines)) - 1, -1, -1):
        text = lines[i].strip()
        if text.startswith("# workspace "):
            return text[2:]
        if text.startswith("chain ") and i < lineno - 1:
            # a chain without a comment (a hook chain): name it
            return f"chain {text.split()[1]}"
    return ""


BR_NF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def bridged_ipv4_filtered(netns: str | None = None) -> bool:
    """Whether bridged IPv4 traverses the inet hooks here (br_netfilter loaded and
    ``net.bridge.bridge-nf-call-iptables`` = 1): CLUSTER and OUTBOUND need it."""
    try:
        if netns:
            argv = ["ip", "netns", "exec", netns, "cat", BR_NF_SYSCTL]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            text = proc.stdout if proc.returncode == 0 else ""
        else:
            with open(BR_NF_SYSCTL) as f:
                text = f.read()
    except OSError:
        return False
    return text.strip() == "1"


BR_NF_ADVICE = (
    "CLUSTER and OUTBOUND connectivity need bridged IPv4 to pass the inet hooks:"
    " modprobe br_netfilter and sysctl net.bridge.bridge-nf-call-iptables=1"
    " (docs/design/network-policy.md)"
)


def apply_ruleset(script: str, netns: str | None = None, *, nft: str = "nft") -> None:
    """Load ``script`` with ``nft -f -`` (in ``netns`` if given). Atomic: on any error
    the previous ruleset stays whole. Raises FilterError naming the culprit."""
    argv = [nft, "-f", "-"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise FilterError(
            f"{exc.filename or nft} not found: install nftables (apt-get install nftables);"
            " the node cannot filter its VMs' traffic without it"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise FilterError("nft -f did not finish within 60 s") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip() or f"exit code {proc.returncode}"
        culprit = _blame(script, proc.stderr)
        where = f" ({culprit})" if culprit else ""
        log.error("filter rules not applied%s: %s", where, err)
        raise FilterError(f"filter rules not applied{where}: {err.splitlines()[0]}")
