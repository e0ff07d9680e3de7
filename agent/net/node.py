"""Bridges, uplinks, the packet filter and DHCP on a libvirt node, projected from the
node's desired state.

Each pass (level-triggered, from the reconcile loop): every network this node
serves and that some workspace uses gets its bridge (created if absent, with the
configured address so dnsmasq can answer) and, when the node's config names an
uplink for it, the uplink (or its VLAN sub-interface) attached; the node's nftables
ruleset (agent/net/filter.py: anti-spoofing and connectivity of every NIC) is
rendered from the orders and applied when it changed (always once per process: the
path that rebuilds it after an agent restart); and one dnsmasq per bridge in use whose
hosts file lists exactly the NICs of this node's workspaces on that bridge (none for a
bridge no workspace uses). Nothing on the host network is touched beyond the configured
bridges and uplinks, and the running VMs' taps put back on their bridge (``reattach``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import netaddr
from pyroute2.netlink.exceptions import NetlinkError

from agent.net import flows
from agent.net.bridge import attach_ports, ensure_bridge
from agent.net.dhcp import DhcpHost, DhcpServer, forget, stop_leftover
from agent.net.filter import (
    BR_NF_ADVICE,
    GUARD_TABLE,
    POLICY_TABLE,
    BridgeSpec,
    NicRule,
    apply_ruleset,
    bridged_ipv4_filtered,
    nic_rules,
    render_nics,
)
from agent.net.nftstate import TableWatch, list_table
from agent.net.uplink import ensure_uplink
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import (
    NETWORK_NOT_READY,
    NO_ISOLATION,
    NetworkInfo,
    Nic,
    NodeCondition,
    Order,
)
from workspace.domain.netpolicy import Connectivity
from workspace.errors import ConfigError, FailedPrecondition, WorkspaceError
from workspace.files import write_private

log = logging.getLogger("agent.net")

# The no-isolation condition's message (the node's, whatever workspaces it holds).
NOT_ISOLATING = (
    "bridged IPv4 does not pass the inet hooks (br_netfilter not loaded, or"
    " net.bridge.bridge-nf-call-iptables is not 1): CLUSTER and OUTBOUND workspaces cannot"
    " be isolated here and do not start; modprobe br_netfilter and sysctl"
    " net.bridge.bridge-nf-call-iptables=1 (docs/design/network-policy.md)"
)


# What making a bridge, attaching an uplink or running a DHCP server can fail with: our
# own errors, the kernel's refusal (pyroute2), a file or a process that could not be made.
# Each fails only its network (``sync``).
HOST_ERRORS = (WorkspaceError, NetlinkError, OSError)


def host_error(exc: Exception) -> WorkspaceError:
    """``exc`` (one of ``HOST_ERRORS``) as a WorkspaceError, its message kept."""
    if isinstance(exc, WorkspaceError):
        return exc
    return FailedPrecondition(f"{type(exc).__name__}: {exc}")


def one_line(message: str) -> str:
    """A multi-line error (dnsmasq's: what failed, then its log's tail) as one line: the
    first, and the last line dnsmasq wrote in the tail (its own word on why; the lines
    "--- <time>: <command>" are the server's, one per start)."""
    first, *tail = message.splitlines() or [message]
    said = [line.strip() for line in tail if line.strip() and not line.startswith("--- ")]
    return f"{first.rstrip(':')}: {said[-1]}" if said else first.rstrip(":")


def _said(errs: Mapping[str, WorkspaceError]) -> dict[str, str]:
    """Network name → why it is not ready."""
    return {name: e.message for name, e in errs.items()}


def dhcp_options(nic: Nic) -> tuple[str | None, tuple[str, ...]]:
    """What a bridge's DHCP server offers, from the first NIC on it: the network's
    gateway as router and its IPv4 DNS servers (DHCPv4 carries no others)."""
    dns = tuple(d for d in nic.dns if netaddr.valid_ipv4(d, netaddr.INET_PTON))
    return nic.gateway or None, dns


def bridge_cidr(net: NodeNetworkConfig, nic: Nic) -> str | None:
    """The address the node gives the network's bridge, or None for none."""
    return _cidr(net, nic.gateway, nic.prefix_len)


def _cidr(net: NodeNetworkConfig, gateway: str, prefix_len: int) -> str | None:
    if net.bridge_address == "":
        return None
    if net.bridge_address == "gateway":
        return f"{gateway}/{prefix_len}" if gateway else None
    try:
        netaddr.IPNetwork(net.bridge_address)
    except (netaddr.AddrFormatError, ValueError) as exc:
        raise ConfigError(
            f"networks.{net.name}.bridge_address {net.bridge_address!r}: "
            "use a CIDR, 'gateway' or ''"
        ) from exc
    return net.bridge_address


class BridgeNetworking:
    def __init__(self, cfg: AgentConfig, *, netns: str | None = None) -> None:
        self.cfg = cfg
        self.netns = netns  # tests: work in this network namespace, not our own
        self.state_dir = Path(cfg.state_dir) / "dhcp"
        self.nets = {n.name: n for n in cfg.networks}
        self.servers: dict[str, DhcpServer] = {}
        # bridge -> (its address, its ifindex) as the last pass made it
        self.bridges_done: dict[str, tuple[str | None, int | None]] = {}
        self.uplinks_done: dict[str, tuple[str, int, str]] = {}  # bridge -> (uplink, vlan, port)
        # The bridges the last pass made, with the filter applied: where ``reattach``
        # puts taps back (none while the filter cannot be applied: no unguarded VM).
        self.guarded: set[str] = set()
        # Bridges joined to an uplink before any workspace used them (``join``).
        self.joined: dict[str, BridgeSpec] = {}
        self.ruleset: str | None = None  # the last ruleset applied by this process
        # What our tables held right after that: checked on every pass.
        self.watch = TableWatch(
            [("bridge", GUARD_TABLE), ("inet", POLICY_TABLE)],
            lambda family, name, netns: list_table(family, name, netns),
            netns,
        )
        # Workspaces whose connectivity policy cannot hold on this node now (id → why).
        self.held: dict[str, str] = {}
        # What the last pass found: whether bridged IPv4 passes the inet hooks (None: not
        # checked, the node serves no network), and the networks it could not make ready
        # (name → why), used or only remembered (``conditions``).
        self.filtered: bool | None = None
        self.broken: dict[str, str] = {}
        self._last_nics: list[NicRule] = []
        # (workspace, network) of the NICs on networks the node does not serve, as the
        # last pass found them (each is logged once).
        self._unserved: set[tuple[str, str]] = set()
        # Uplinked networks seen in orders, remembered across restarts so a restarted
        # agent rejoins their L2 before (and without) any workspace on them.
        self.memory_path = Path(cfg.state_dir) / "uplinks.json"
        self.remembered = self._load_memory()
        # Address -> the NIC that held it in the last ruleset applied (agent/net/flows.py:
        # the flows of an address given to another NIC are forgotten).
        self.owners_path = Path(cfg.state_dir) / "addresses.json"
        self.owners = flows.load(self.owners_path)
        # CLUSTER NIC -> (its address, its peers) in the last ruleset this process
        # applied (None: none yet): the flows with a peer that left are forgotten.
        self.peers_seen: dict[str, tuple[str, frozenset[str]]] | None = None

    def join(self, networks: Iterable[NetworkInfo]) -> None:
        """Make the bridge of every configured network with an uplink and attach the
        uplink, before any workspace uses it (agent start: the node joins the L2)."""
        errs: list[WorkspaceError] = self._join(networks)
        self._filter(self._last_nics, self.joined.values())
        if errs:
            raise errs[0]

    def _join(self, networks: Iterable[NetworkInfo]) -> list[WorkspaceError]:
        return list(self._join_each(networks).values())

    def _join_each(self, networks: Iterable[NetworkInfo]) -> dict[str, WorkspaceError]:
        """Join each uplinked network; the ones that failed (name → error)."""
        errs: dict[str, WorkspaceError] = {}
        for info in networks:
            net = self.nets.get(info.name)
            if net is None or not net.uplink or not info.bridge or not info.subnet:
                continue
            prefix = int(netaddr.IPNetwork(info.subnet).prefixlen)
            try:
                self._bridge(info.bridge, _cidr(net, info.gateway, prefix))
                self.joined[info.bridge] = self._uplink(info.bridge, net, info.vlan, info.gateway)
            except HOST_ERRORS as exc:
                errs[info.name] = host_error(exc)
            else:
                self._remember(info)
        return errs

    def _load_memory(self) -> dict[str, NetworkInfo]:
        try:
            raw = json.loads(self.memory_path.read_text())
            return {name: NetworkInfo(name=name, **fields) for name, fields in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", self.memory_path, exc)
            return {}

    def _remember(self, info: NetworkInfo) -> None:
        if self.remembered.get(info.name) == info:
            return
        self.remembered[info.name] = info
        data = {
            n.name: {"subnet": n.subnet, "gateway": n.gateway, "bridge": n.bridge, "vlan": n.vlan}
            for n in self.remembered.values()
        }
        try:
            self.memory_path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.memory_path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("cannot record uplinked networks in %s: %s", self.memory_path, exc)

    def _bridge(self, bridge: str, cidr: str | None) -> None:
        # Every pass, not once (as the uplinks): a bridge deleted behind the agent's back
        # (`ip link del`, a reload of the host's network) or its address removed is made
        # again; idempotent and cheap (a few netlink lookups). It was made once per
        # process: new VMs then failed to start on it until the agent restarted.
        if self.netns:
            index = ensure_bridge(bridge, cidr, netns=self.netns)
        else:
            index = ensure_bridge(bridge, cidr)
        done = self.bridges_done.get(bridge)
        if done is None or done[0] != cidr:
            log.info("bridge %s ready (%s)", bridge, cidr or "no address")
        elif done[1] != index:
            log.warning("bridge %s had been deleted behind the agent's back; made again", bridge)
        self.bridges_done[bridge] = (cidr, index)

    def _uplink(self, bridge: str, net: NodeNetworkConfig, vlan: int, gateway: str) -> BridgeSpec:
        # Every pass, not once: a port detached or re-made behind the agent's back (a
        # switch re-plugged, a veth recreated) is attached again. Idempotent and cheap
        # (a few netlink lookups).
        done = self.uplinks_done.get(bridge)
        try:
            port = ensure_uplink(bridge, net.uplink, vlan, netns=self.netns, node=self.cfg.node)
        except HOST_ERRORS as exc:
            log.error("network %s (bridge %s): %s", net.name, bridge, host_error(exc).message)
            raise
        if done != (net.uplink, vlan, port):
            log.info("bridge %s: uplink %s attached", bridge, port)
        self.uplinks_done[bridge] = done = (net.uplink, vlan, port)
        local_gw = gateway if net.bridge_address == "gateway" else ""
        return BridgeSpec(bridge, done[2], local_gw)

    def sync(self, orders: Sequence[Order]) -> dict[str, str]:
        """Bridges, uplinks, the filter and DHCP for ``orders``; returns the networks that
        could not be made ready (name → why: its bridge, its uplink or its DHCP server
        failed): only their workspaces wait. Uplinked networks the node knew
        (``uplinks.json``) are joined on every pass too, so a port re-made behind the
        agent's back is attached again without a restart. A ruleset that cannot be
        applied raises: it concerns every workspace (each network in use is then said
        not ready, with why, in ``conditions``). The workspaces whose policy cannot hold
        here are in ``held`` afterwards."""
        per_bridge: dict[str, list[DhcpHost]] = {}
        first_nic: dict[str, Nic] = {}
        # NICs on a network this node's config does not name (removed from it while
        # workspaces used it): not ready, so none of them starts here; a running one
        # keeps its NIC's filter rules all the same (``nic_rules`` of every NIC), and a
        # dnsmasq an earlier agent left on its bridge is left as it is (``_retire_dhcp``:
        # this agent cannot run it without the network's config; its VMs renew there).
        unserved: dict[str, WorkspaceError] = {}
        unserved_bridges: set[str] = set()
        for order in orders:
            for nic in order.nics:
                if nic.network not in self.nets:
                    unserved[nic.network] = FailedPrecondition(
                        f"not served by node {self.cfg.node} (not in its networks config)"
                    )
                    unserved_bridges.add(nic.bridge)
                    if (order.workspace_id, nic.network) not in self._unserved:
                        log.error(
                            "workspace %s: network %s is not served by node %s",
                            order.workspace_id,
                            nic.network,
                            self.cfg.node,
                            extra={"workspace": order.workspace_id},
                        )
                    continue
                per_bridge.setdefault(nic.bridge, []).append(
                    DhcpHost(mac=nic.mac, ip=nic.ip, hostname=order.hostname or order.name)
                )
                first_nic.setdefault(nic.bridge, nic)
        self._unserved = {
            (o.workspace_id, n.network) for o in orders for n in o.nics if n.network in unserved
        }
        broken: dict[str, WorkspaceError] = dict(unserved)
        self.guarded = set()  # filled once the filter holds (``reattach``)
        made: set[str] = set()
        in_use = {nic.network for nic in first_nic.values()}
        # What the node knew and no workspace uses now: kept joined (errors only logged,
        # and the node's conditions say so).
        unused = self._join_each(n for n in list(self.remembered.values()) if n.name not in in_use)
        for bridge, nic in first_nic.items():
            net = self.nets[nic.network]
            try:
                self._bridge(bridge, bridge_cidr(net, nic))
            except HOST_ERRORS as exc:
                broken[nic.network] = host_error(exc)
                log.error(
                    "network %s (bridge %s): %s", nic.network, bridge, broken[nic.network].message
                )
                continue
            made.add(bridge)
            if net.uplink:
                info = NetworkInfo(
                    nic.network, nic.subnet, nic.gateway, bridge=bridge, vlan=nic.vlan
                )
                broken.update(self._join_each([info]))
        # The filter before DHCP: no VM gets an address on a bridge that is not guarded.
        self._last_nics = nic_rules(orders)
        for n in self._last_nics:
            if n.blocked:
                log.error(
                    "workspace %s: NIC %d sends nothing: %s",
                    n.workspace_id,
                    n.index,
                    n.blocked,
                    extra={"workspace": n.workspace_id},
                )
        try:
            self._filter(self._last_nics, self._specs(made, first_nic))
        except Exception as exc:
            why = f"filter rules could not be applied: {host_error(exc).message}"
            self.broken = {
                **_said({**unused, **broken}),
                **dict.fromkeys(in_use - set(broken), why),
            }
            raise
        self._forget_flows(self._last_nics)
        self.guarded = made
        wanted: set[str] = set()  # the bridges that have a dnsmasq
        for bridge, nic in first_nic.items():
            net = self.nets[nic.network]
            if not net.dhcp:
                continue
            if nic.network in broken:
                wanted.add(bridge)  # its dnsmasq, if any, is left as it is till next pass
                continue
            if bridge_cidr(net, nic) is None:
                continue
            wanted.add(bridge)
            try:
                self._serve(bridge, nic, per_bridge[bridge])
            except HOST_ERRORS as exc:
                # dnsmasq would not start (its port taken, its binary missing), a
                # hosts file that cannot be written: only this network waits.
                said = host_error(exc).message
                log.error("network %s (bridge %s): DHCP: %s", nic.network, bridge, said)
                broken[nic.network] = FailedPrecondition(f"DHCP server: {one_line(said)}")
        self._retire_dhcp(wanted, unserved_bridges)
        failed = _said(broken)
        self.broken = {**_said(unused), **failed}
        return failed

    def _specs(self, made: Iterable[str], first_nic: Mapping[str, Nic]) -> list[BridgeSpec]:
        """The bridges as the filter needs them: the uplinked ones (``joined``), and the
        address of the node's DHCP server on each bridge made this pass that has one
        (a restricted NIC's DHCP goes to it only)."""
        specs = dict(self.joined)
        for bridge in made:
            nic = first_nic[bridge]
            net = self.nets[nic.network]
            cidr = bridge_cidr(net, nic) if net.dhcp else None
            if cidr:
                spec = specs.get(bridge, BridgeSpec(bridge))
                specs[bridge] = replace(spec, dhcp_server=cidr.split("/")[0])
        return list(specs.values())

    def _retire_dhcp(self, wanted: set[str], left: set[str]) -> None:
        """Stop the dnsmasq of every bridge not in ``wanted`` (no workspace of the node
        uses it, or its network has no DHCP now): the ones this process started, and
        the ones an earlier agent process left running (found by their state dir's pid
        file; they would go on serving the hosts file of then, which no pass rewrites),
        except on the bridges in ``left`` (used by NICs on networks the node does not
        serve)."""
        for bridge in sorted(set(self.servers) - wanted):
            try:
                self.servers[bridge].stop()
                forget(self.servers[bridge].state_dir)
            except HOST_ERRORS as exc:
                log.error("dhcp on %s: cannot stop dnsmasq: %s", bridge, host_error(exc).message)
                continue
            del self.servers[bridge]
            log.info("dhcp on %s: no workspace of node %s uses it; stopped", bridge, self.cfg.node)
        try:
            dirs = sorted(d for d in self.state_dir.iterdir() if d.is_dir())
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("dhcp: cannot list %s: %s", self.state_dir, exc)
            return
        for state in dirs:
            if state.name in wanted or state.name in self.servers or state.name in left:
                continue
            try:
                pid = stop_leftover(state)
                forget(state)
            except HOST_ERRORS as exc:
                why = host_error(exc).message
                log.error("dhcp on %s: cannot stop dnsmasq: %s", state.name, why)
                continue
            if pid is not None:
                log.info(
                    "dhcp on %s: dnsmasq (pid %d) left by an earlier agent stopped: no"
                    " workspace of node %s uses the bridge with DHCP",
                    state.name,
                    pid,
                    self.cfg.node,
                )

    def reattach(self, running: Sequence[Order]) -> None:
        """The taps of these running workspaces put back on their bridges where they are
        on none (``Networking.reattach``); only on the bridges the last pass made, the
        filter applied (its network may be not ready for another reason: its uplink,
        its DHCP server). The filter rules name the taps: they hold again at once."""
        taps: dict[str, dict[str, str]] = {}  # bridge -> tap -> workspace
        for order in running:
            for i, nic in enumerate(order.nics):
                if nic.bridge in self.guarded:
                    taps.setdefault(nic.bridge, {})[tap_name(order.workspace_id, i)] = (
                        order.workspace_id
                    )
        for bridge, owners in sorted(taps.items()):
            try:
                if self.netns:
                    done = attach_ports(bridge, owners, netns=self.netns)
                else:
                    done = attach_ports(bridge, owners)
            except HOST_ERRORS as exc:
                log.error("bridge %s: its VMs' taps: %s", bridge, host_error(exc).message)
                continue
            for tap in done:
                log.warning(
                    "node %s: workspace %s: its tap %s was on no bridge (%s deleted and"
                    " made again?); attached to %s again",
                    self.cfg.node,
                    owners[tap],
                    tap,
                    bridge,
                    bridge,
                    extra={"workspace": owners[tap]},
                )

    def _serve(self, bridge: str, nic: Nic, hosts: list[DhcpHost]) -> None:
        """The DHCP server of ``bridge``: made if absent, its options and hosts those of
        the orders, running. Raises (one of ``HOST_ERRORS``) when it cannot be."""
        server = self.servers.get(bridge)
        if server is None:
            server = self._dhcp(bridge, nic)
            self.servers[bridge] = server
        elif server.set_options(*dhcp_options(nic)):
            log.info(
                "dhcp on %s: now offers router %s, DNS servers %s",
                bridge,
                server.router or "none",
                ",".join(server.dns_servers) or "none",
            )
        if server.set_hosts(hosts):
            log.info("dhcp on %s: %d host(s)", bridge, len(hosts))
        server.ensure_running()

    def _filter(self, nics: Sequence[NicRule], bridges: Iterable[BridgeSpec]) -> None:
        """Apply the ruleset if it changed, or if our tables no longer hold what was
        applied (deleted, flushed, edited behind the agent's back); FilterError raised
        when it could not be. Then ``held``: the workspaces whose policy cannot hold."""
        script = render_nics(nics, bridges, flow_limit=self.cfg.conntrack_per_nic)
        drifted = self.watch.drifted() if script == self.ruleset else []
        if drifted:
            log.warning(
                "filter table(s) %s missing or changed behind the agent's back;"
                " applying the node's ruleset again",
                ", ".join(drifted),
            )
        if script != self.ruleset or drifted:
            apply_ruleset(script, self.netns)
            self.watch.record()
            first = self.ruleset is None
            self.ruleset = script
            log.info(
                "filter rules %s: %d NIC(s)",
                "applied" if first else "restored" if drifted else "replaced",
                len(nics),
            )
        self._isolation(nics)

    def _forget_flows(self, nics: Sequence[NicRule]) -> None:
        """Called with the new ruleset applied, before any new VM starts: the conntrack
        entries that must not stay established deleted (agent/net/flows.py), all found
        in one dump of the table:

        * those of each address now held by another NIC than in the last ruleset (a
          workspace ended, its address given to a new one), so that no flow of the old
          workspace is established for the new one;
        * those between each CLUSTER NIC and every address that left its peers since the
          last ruleset: a member gone from the cluster, its address maybe another
          workspace's on another node, has no flow established with the members left.

        A deletion that fails is logged; both are tried again on the next pass."""
        owners = {n.ip: f"{n.workspace_id}/{n.index}" for n in nics if not n.blocked}
        peers = {
            f"{n.workspace_id}/{n.index}": (n.ip, frozenset(n.peers))
            for n in nics
            if n.restricted and n.connectivity is Connectivity.CLUSTER
        }
        owners_changed, peers_changed = owners != self.owners, peers != self.peers_seen
        if not owners_changed and not peers_changed:
            return
        addresses = flows.moved(self.owners, owners) if owners_changed else set()
        pairs = flows.dropped_peers(self.peers_seen, peers) if peers_changed else set()
        stale = flows.Stale.of(addresses, pairs)
        try:
            counts = flows.forget_stale(stale, self.netns) if stale else {}
        except HOST_ERRORS as exc:
            # Kept as it was: the next pass tries again.
            why = host_error(exc).message
            if addresses:
                log.error(
                    "conntrack: cannot forget the flows of %s: %s",
                    ", ".join(sorted(addresses)),
                    why,
                )
            if pairs:
                log.error(
                    "conntrack: cannot forget the flows with former peers (%s): %s",
                    ", ".join(sorted(f"{a}-{b}" for a, b in pairs)),
                    why,
                )
            return
        if count := counts.get(flows.MOVED, 0):
            log.info(
                "conntrack: %d flow(s) of %s forgotten (now another workspace's)",
                count,
                ", ".join(sorted(addresses)),
            )
        if count := counts.get(flows.PEER, 0):
            log.info(
                "conntrack: %d flow(s) with former cluster peers forgotten (%s)",
                count,
                ", ".join(sorted(f"{a}-{b}" for a, b in pairs)),
            )
        if owners_changed:
            self.owners = owners
            flows.save(self.owners_path, owners)
        self.peers_seen = peers

    def _isolation(self, nics: Sequence[NicRule]) -> None:
        """Anti-spoofing holds anyway; a CLUSTER or OUTBOUND policy only where bridged
        IPv4 passes the inet hooks (br_netfilter). Checked on every pass (a sysctl read):
        without it, those workspaces are held back (``held``), the others go on."""
        restricted = sorted({n.workspace_id for n in nics if n.restricted})
        # Checked whenever the node serves a network, restricted workspaces or not: the
        # node's no-isolation condition says it before any such workspace comes.
        filtered = bridged_ipv4_filtered(self.netns) if self.nets or restricted else None
        if filtered is False and self.filtered is not False:
            log.error("node %s: %s", self.cfg.node, NOT_ISOLATING)
        elif filtered and self.filtered is False:
            log.info("node %s: bridged IPv4 passes the inet hooks now", self.cfg.node)
        self.filtered = filtered
        held: dict[str, str] = {}
        if restricted and not filtered:
            why = (
                f"not isolated: its connectivity policy cannot be enforced on node"
                f" {self.cfg.node}: {BR_NF_ADVICE}"
            )
            held = dict.fromkeys(restricted, why)
        if held.keys() != self.held.keys():
            if held:
                log.error("workspace(s) %s not isolated: %s", ", ".join(held), BR_NF_ADVICE)
            else:
                log.info("bridged IPv4 passes the inet hooks again: every policy holds")
        self.held = held

    def holds(self) -> Mapping[str, str]:
        """The workspaces the last pass found cannot be isolated here (id → why)."""
        return dict(self.held)

    def conditions(self) -> tuple[NodeCondition, ...]:
        """What the last pass found keeps the node from serving some workspaces: no
        isolation (bridged IPv4 not filtered), each network it could not make ready."""
        out = [NodeCondition(NO_ISOLATION, NOT_ISOLATING)] if self.filtered is False else []
        out.extend(
            NodeCondition(NETWORK_NOT_READY, f"network {name}: {why}", subject=name)
            for name, why in sorted(self.broken.items())
        )
        return tuple(out)

    def _dhcp(self, bridge: str, nic: Nic) -> DhcpServer:
        args = (bridge, self.state_dir / bridge, nic.subnet)
        router, dns = dhcp_options(nic)
        if self.netns:
            prefix = ("ip", "netns", "exec", self.netns)
            return DhcpServer(*args, router=router, dns_servers=dns, command_prefix=prefix)
        return DhcpServer(*args, router=router, dns_servers=dns)

    def close(self) -> None:
        # dnsmasq outlives the agent on purpose (VMs keep their leases); nothing to stop.
        # The filter rules stay too: the VMs keep running, guarded, until the next agent.
        return None
