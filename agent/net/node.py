"""Bridges and DHCP on a libvirt node, projected from the node's desired state.

Each pass (level-triggered, from the reconcile loop): every network this node
serves and that some workspace uses gets its bridge (created if absent, with the
configured address so dnsmasq can answer), and one dnsmasq per bridge whose hosts
file lists exactly the NICs of this node's workspaces on that bridge. Nothing on
the host network is touched beyond the configured bridges.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import netaddr

from agent.net.bridge import ensure_bridge
from agent.net.dhcp import DhcpHost, DhcpServer
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import Nic, Order
from workspace.errors import ConfigError

log = logging.getLogger("agent.net")


def bridge_cidr(net: NodeNetworkConfig, nic: Nic) -> str | None:
    """The address the node gives the network's bridge, or None for none."""
    if net.bridge_address == "":
        return None
    if net.bridge_address == "gateway":
        return f"{nic.gateway}/{nic.prefix_len}"
    try:
        netaddr.IPNetwork(net.bridge_address)
    except (netaddr.AddrFormatError, ValueError) as exc:
        raise ConfigError(
            f"networks.{net.name}.bridge_address {net.bridge_address!r}: "
            "use a CIDR, 'gateway' or ''"
        ) from exc
    return net.bridge_address


class BridgeNetworking:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir) / "dhcp"
        self.nets = {n.name: n for n in cfg.networks}
        self.servers: dict[str, DhcpServer] = {}
        self.bridges_done: dict[str, str | None] = {}

    def sync(self, orders: Sequence[Order]) -> None:
        per_bridge: dict[str, list[DhcpHost]] = {}
        first_nic: dict[str, Nic] = {}
        for order in orders:
            for nic in order.nics:
                if nic.network not in self.nets:
                    log.error(
                        "workspace %s: network %s is not served by node %s",
                        order.workspace_id,
                        nic.network,
                        self.cfg.node,
                    )
                    continue
                per_bridge.setdefault(nic.bridge, []).append(
                    DhcpHost(mac=nic.mac, ip=nic.ip, hostname=order.hostname or order.name)
                )
                first_nic.setdefault(nic.bridge, nic)
        for bridge, nic in first_nic.items():
            net = self.nets[nic.network]
            cidr = bridge_cidr(net, nic)
            if self.bridges_done.get(bridge, "-") != cidr:
                ensure_bridge(bridge, cidr)
                self.bridges_done[bridge] = cidr
                log.info("bridge %s ready (%s)", bridge, cidr or "no address")
            if net.dhcp and cidr is not None:
                server = self.servers.get(bridge)
                if server is None:
                    server = DhcpServer(
                        bridge,
                        self.state_dir / bridge,
                        nic.subnet,
                        router=nic.gateway or None,
                        dns_servers=tuple(nic.dns),
                    )
                    self.servers[bridge] = server
                if server.set_hosts(per_bridge[bridge]):
                    log.info("dhcp on %s: %d host(s)", bridge, len(per_bridge[bridge]))
                server.ensure_running()
        # Bridges no workspace uses any more keep their dnsmasq with an empty hosts file.
        for bridge, server in self.servers.items():
            if bridge not in first_nic:
                server.set_hosts([])

    def close(self) -> None:
        # dnsmasq outlives the agent on purpose (VMs keep their leases); nothing to stop.
        return None
