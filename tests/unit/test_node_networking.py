"""Bridges and DHCP hosts projected from a node's orders (agent/net/node.py), with the
host side (ip link, dnsmasq) replaced by recorders."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from agent.net import flows, node
from agent.net.dhcp import DhcpHost
from agent.virt.base import tap_name
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import NETWORK_NOT_READY, Nic, NodeCondition, Order
from workspace.domain.netpolicy import Connectivity
from workspace.domain.states import Desired
from workspace.errors import FailedPrecondition


class FakeDhcp:
    made: list[FakeDhcp] = []

    def __init__(self, bridge: str, state_dir: Path, subnet: str, **kw: Any) -> None:
        self.bridge, self.subnet, self.kw = bridge, subnet, kw
        self.state_dir = Path(state_dir)
        self.hosts: list[DhcpHost] = []
        self.router, self.dns_servers = kw["router"], kw["dns_servers"]
        FakeDhcp.made.append(self)

    def set_options(self, router: str | None, dns_servers: tuple[str, ...]) -> bool:
        changed = (router, dns_servers) != (self.router, self.dns_servers)
        self.router, self.dns_servers = router, dns_servers
        return changed

    def set_hosts(self, entries: Iterable[DhcpHost]) -> bool:
        self.hosts = sorted(entries)
        return True

    def ensure_running(self) -> int:
        self.stopped = False
        return 1

    def stop(self) -> None:
        self.stopped = True


forgotten: list[set[str]] = []
forgotten_pairs: list[set[tuple[str, str]]] = []


def _forget_stale(stale: flows.Stale, netns: str | None = None) -> dict[str, int]:
    """One pass's clean-up: its addresses and pairs recorded apart."""
    if stale.addresses:
        forgotten.append(set(stale.addresses))
    if stale.pairs:
        forgotten_pairs.append({(min(p), max(p)) for p in stale.pairs})
    return {}


@pytest.fixture(autouse=True)
def _no_nft(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Never load filter rules into the test host's own namespace, nor touch its
    conntrack table."""
    applied: list[str] = []
    monkeypatch.setattr(node, "apply_ruleset", lambda script, netns=None: applied.append(script))
    # our tables, as listed: always what was applied (their checks are in test_uplink.py)
    monkeypatch.setattr(node, "list_table", lambda family, name, netns=None: "as applied")
    forgotten.clear()
    forgotten_pairs.clear()
    monkeypatch.setattr(node.flows, "forget_stale", _forget_stale)
    return applied


def _order(wid: str, *nics: Nic) -> Order:
    return Order(wid, wid, f"host-{wid}", Desired.RUNNING, 1, 512, "img", (), nics)


def _nic(network: str, ip: str, mac: str, bridge: str) -> Nic:
    return Nic(network, ip, mac, 24, "10.0.0.1", bridge, "10.0.0.0/24", ("10.0.0.53",))


def test_bridges_and_hosts_follow_the_orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridges: list[tuple[str, str | None]] = []
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: bridges.append((b, cidr)))
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    FakeDhcp.made = []
    cfg = AgentConfig(
        node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig(name="default")]
    )
    net = node.BridgeNetworking(cfg)
    orders = [
        _order("w1", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0")),
        _order("w2", _nic("default", "10.0.0.6", "52:54:00:00:00:06", "br0")),
        _order("w3", _nic("elsewhere", "10.9.0.6", "52:54:00:00:09:06", "br9")),  # not served
    ]
    net.sync(orders)
    assert bridges == [("br0", "10.0.0.1/24")]
    (server,) = FakeDhcp.made
    assert (server.bridge, server.subnet) == ("br0", "10.0.0.0/24")
    assert server.kw == {"router": "10.0.0.1", "dns_servers": ("10.0.0.53",)}
    assert server.hosts == [
        DhcpHost("52:54:00:00:00:05", "10.0.0.5", "host-w1"),
        DhcpHost("52:54:00:00:00:06", "10.0.0.6", "host-w2"),
    ]
    server.state_dir.mkdir(parents=True, exist_ok=True)
    (server.state_dir / "hosts").write_text("52:54:00:00:00:05,10.0.0.5,w1\n")
    net.sync([])  # no workspace uses br0 any more: its dnsmasq is stopped
    assert server.stopped and net.servers == {} and bridges == [("br0", "10.0.0.1/24")]
    assert not (server.state_dir / "hosts").exists()  # no binding of a workspace gone
    net.sync(orders[:1])  # used again: a dnsmasq with its hosts
    assert FakeDhcp.made[1:] != [] and FakeDhcp.made[-1].hosts == server.hosts[:1]


def test_a_networks_new_dns_servers_reach_its_dhcp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orders' NICs carry the network's servers as they are now: the bridge's DHCP
    server takes them (it restarts dnsmasq when they differ); IPv6 ones are not offered
    (DHCPv4 cannot carry them)."""
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: None)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    FakeDhcp.made = []
    cfg = AgentConfig(
        node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig(name="default")]
    )
    net = node.BridgeNetworking(cfg)
    nic = _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0")
    net.sync([_order("w1", nic)])
    (server,) = FakeDhcp.made
    assert (server.router, server.dns_servers) == ("10.0.0.1", ("10.0.0.53",))
    changed = replace(nic, dns=("10.0.0.54", "2001:db8::53", "10.0.0.55"))
    net.sync([_order("w1", changed)])
    assert FakeDhcp.made == [server]  # the same server, told the new options
    assert (server.router, server.dns_servers) == ("10.0.0.1", ("10.0.0.54", "10.0.0.55"))
    net.sync([_order("w1", replace(nic, dns=()))])
    assert server.dns_servers == ()


def test_a_bridge_the_kernel_refuses_fails_only_its_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyroute2's own error (not one of ours) making one bridge: that network is not
    ready, said on the node; the other is served; the next pass tries again."""
    refused = {"br-a"}

    def ensure_bridge(bridge: str, cidr: str | None) -> None:
        if bridge in refused:
            raise NetlinkError(1, "Operation not permitted")

    monkeypatch.setattr(node, "ensure_bridge", ensure_bridge)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    monkeypatch.setattr(node, "bridged_ipv4_filtered", lambda netns=None: True)
    FakeDhcp.made = []
    nets = [NodeNetworkConfig(name="a"), NodeNetworkConfig(name="b")]
    net = node.BridgeNetworking(AgentConfig(node="n1", state_dir=str(tmp_path), networks=nets))
    orders = [
        _order("w1", _nic("a", "10.0.0.5", "52:54:00:00:00:05", "br-a")),
        _order("w2", _nic("b", "10.0.0.6", "52:54:00:00:00:06", "br-b")),
    ]
    why = "NetlinkError: (1, 'Operation not permitted')"
    assert net.sync(orders) == {"a": why}
    assert [s.bridge for s in FakeDhcp.made] == ["br-b"]
    assert net.conditions() == (NodeCondition(NETWORK_NOT_READY, f"network a: {why}", "a"),)
    refused.clear()
    assert net.sync(orders) == {}
    assert net.conditions() == ()


def test_a_filter_that_cannot_be_applied_says_every_network_in_use_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def apply_ruleset(script: str, netns: str | None = None) -> None:
        raise FailedPrecondition("nft: Error: Could not process rule: Permission denied")

    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: None)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    monkeypatch.setattr(node, "apply_ruleset", apply_ruleset)
    FakeDhcp.made = []
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig(name="a")])
    net = node.BridgeNetworking(cfg)
    with pytest.raises(FailedPrecondition):
        net.sync([_order("w1", _nic("a", "10.0.0.5", "52:54:00:00:00:05", "br-a"))])
    assert FakeDhcp.made == []  # no address handed out on an unguarded bridge
    why = "network a: filter rules could not be applied: nft: Error: Could not process rule:"
    (cond,) = net.conditions()
    assert (cond.code, cond.subject) == (NETWORK_NOT_READY, "a")
    assert cond.message == f"{why} Permission denied"


def test_a_bridge_deleted_behind_the_agents_back_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ip link del` (or a host network reload) took the bridge, or its address, away:
    the next pass makes them again, as it re-attaches an uplink (it made a bridge once
    per process: new VMs then failed to start on it until the agent restarted)."""
    kernel: dict[str, str | None] = {}  # bridge -> its address, as the kernel has them

    def ensure_bridge(bridge: str, cidr: str | None) -> int:
        kernel[bridge] = cidr
        return 7

    monkeypatch.setattr(node, "ensure_bridge", ensure_bridge)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    cfg = AgentConfig(
        node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig(name="default")]
    )
    net = node.BridgeNetworking(cfg)
    orders = [_order("w1", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0"))]
    net.sync(orders)
    assert kernel == {"br0": "10.0.0.1/24"}
    kernel.clear()  # ip link del br0
    assert net.sync(orders) == {}
    assert kernel == {"br0": "10.0.0.1/24"}


def test_dnsmasqs_an_earlier_agent_left_are_stopped_unless_a_workspace_uses_their_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an agent restart, the dnsmasq of a bridge no workspace uses now (its last
    workspace deleted while the agent was away) or of a network whose DHCP is now off
    would go on serving its old hosts file, which no pass rewrites: stopped (by its
    pid file). The bridge in use keeps its dnsmasq (adopted by a new DhcpServer)."""
    stopped: list[str] = []

    def stop_leftover(state_dir: Path) -> int | None:
        stopped.append(Path(state_dir).name)
        return 4242

    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: 7)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    monkeypatch.setattr(node, "stop_leftover", stop_leftover)
    FakeDhcp.made = []
    for bridge in ("br0", "br-old", "br-q"):
        (tmp_path / "dhcp" / bridge).mkdir(parents=True)
        (tmp_path / "dhcp" / bridge / "hosts").write_text("52:54:00:00:00:09,10.0.0.9\n")
    nets = [NodeNetworkConfig(name="default"), NodeNetworkConfig(name="quiet", dhcp=False)]
    net = node.BridgeNetworking(AgentConfig(node="n1", state_dir=str(tmp_path), networks=nets))
    orders = [
        _order("w1", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0")),
        _order("w2", _nic("quiet", "10.0.0.6", "52:54:00:00:00:06", "br-q")),
    ]
    assert net.sync(orders) == {}
    assert sorted(stopped) == ["br-old", "br-q"]
    assert [s.bridge for s in FakeDhcp.made] == ["br0"]
    hosts = sorted(p.parent.name for p in (tmp_path / "dhcp").glob("*/hosts"))
    assert hosts == ["br0"]  # the stopped ones' bindings are gone with them


def test_a_network_removed_from_the_nodes_config_holds_its_workspaces_and_keeps_them_guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _no_nft: list[str]
) -> None:
    """The admin removed a network from the node's config while a VM used it: its NIC
    kept no filter rules at all (unguarded: it could send from any MAC and address) and
    a stopped workspace on it could start. Its rules stay; the network is not ready."""
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: 7)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    monkeypatch.setattr(node, "bridged_ipv4_filtered", lambda netns=None: True)
    stopped: list[Path] = []
    monkeypatch.setattr(node, "stop_leftover", lambda d: stopped.append(d))
    (tmp_path / "dhcp" / "br9").mkdir(parents=True)
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig("default")])
    net = node.BridgeNetworking(cfg)
    gone = _nic("lab", "10.9.0.6", "52:54:00:00:09:06", "br9")
    why = "not served by node n1 (not in its networks config)"
    assert net.sync([_order("w3", gone)]) == {"lab": why}
    assert net.conditions() == (NodeCondition(NETWORK_NOT_READY, f"network lab: {why}", "lab"),)
    rules = _no_nft[-1]
    assert "ether saddr != 52:54:00:00:09:06 drop" in rules
    assert "ip saddr != 10.9.0.6 drop" in rules
    assert stopped == []  # the dnsmasq left on its bridge still serves its running VMs


def test_taps_left_on_no_bridge_are_put_back_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge deleted and made again has no ports: the running VMs' taps go back on
    it (libvirt attached them once, at start); bridges not made ready are left."""
    detached = {tap_name("w1", 0)}  # as the kernel has them: on no bridge
    asked: list[tuple[str, list[str]]] = []

    def attach_ports(bridge: str, ports: Iterable[str]) -> list[str]:
        asked.append((bridge, sorted(ports)))
        done = sorted(set(ports) & detached)
        detached.difference_update(done)
        return done

    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: 7)
    monkeypatch.setattr(node, "attach_ports", attach_ports)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    nets = [NodeNetworkConfig("default"), NodeNetworkConfig("b")]
    net = node.BridgeNetworking(AgentConfig(node="n1", state_dir=str(tmp_path), networks=nets))
    w1 = _order("w1", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0"))
    w2 = _order("w2", _nic("default", "10.0.0.6", "52:54:00:00:00:06", "br0"))
    w3 = _order("w3", _nic("b", "10.0.1.6", "52:54:00:00:01:06", "br-b"))  # not made yet
    net.sync([w1, w2])
    net.reattach([w1, w2, w3])
    assert asked == [("br0", sorted([tap_name("w1", 0), tap_name("w2", 0)]))]
    assert f"node n1: workspace w1: its tap {tap_name('w1', 0)} was on no bridge" in caplog.text
    assert "workspace w2" not in caplog.text
    net.reattach([w1, w2])  # nothing left to do: nothing said
    assert caplog.text.count("was on no bridge") == 1


def test_taps_go_back_on_a_bridge_whose_dhcp_failed_but_none_while_the_filter_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _no_nft: list[str]
) -> None:
    """The bridge is there and guarded although its network is not ready for another
    reason (its dnsmasq would not start): its VMs' taps go back. While the filter
    cannot be applied, no tap is put back (it would be unguarded)."""
    asked: list[str] = []

    def attach_ports(bridge: str, ports: Iterable[str]) -> list[str]:
        asked.append(bridge)
        return []

    class NoDhcp(FakeDhcp):
        def ensure_running(self) -> int:
            raise OSError("dnsmasq: no such file")

    def refused(script: str, netns: str | None = None) -> None:
        raise FailedPrecondition("nft: Error: Could not process rule: Permission denied")

    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: 7)
    monkeypatch.setattr(node, "attach_ports", attach_ports)
    monkeypatch.setattr(node, "DhcpServer", NoDhcp)
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig("default")])
    net = node.BridgeNetworking(cfg)
    w1 = _order("w1", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "br0"))
    assert list(net.sync([w1])) == ["default"]
    net.reattach([w1])
    assert asked == ["br0"]
    monkeypatch.setattr(node, "apply_ruleset", refused)
    w1 = replace(w1, connectivity=Connectivity.OUTBOUND)  # a new ruleset to apply
    with pytest.raises(FailedPrecondition):
        net.sync([w1])
    net.reattach([w1])
    assert asked == ["br0"]


def test_an_address_given_to_another_workspace_loses_its_flows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conntrack knows flows by address: those of an ended workspace must not be
    established for the one its address is given to next (agent/net/flows.py)."""
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: None)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig()])
    a = _order("w-a", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "wsbr0"))
    b = _order("w-b", _nic("default", "10.0.0.6", "52:54:00:00:00:06", "wsbr0"))
    net = node.BridgeNetworking(cfg)
    net.sync([a, b])  # a node's first start: nothing to compare with, nothing forgotten
    net.sync([b])  # w-a ended: its address is free, nobody else's yet
    assert forgotten == []
    c = _order("w-c", _nic("default", "10.0.0.5", "52:54:00:00:00:07", "wsbr0"))
    net.sync([b, c])
    assert forgotten == [{"10.0.0.5"}]
    net.sync([b, c])  # nothing moved: conntrack is not asked again
    assert len(forgotten) == 1
    # A restarted agent compares with what the last one applied
    d = _order("w-d", _nic("default", "10.0.0.6", "52:54:00:00:00:08", "wsbr0"))
    node.BridgeNetworking(cfg).sync([c, d])
    assert forgotten[-1] == {"10.0.0.6"}
    node.BridgeNetworking(cfg).sync([c, d])  # ... and forgets nothing when nothing moved
    assert len(forgotten) == 2


def test_a_peer_that_left_the_cluster_loses_its_flows_with_the_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLUSTER member accepts what conntrack calls established: the flows a member that
    left (destroyed, its address soon another workspace's, maybe on another node) had
    with it must not stay established for whoever holds that address next."""
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: None)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig()])
    member = replace(
        _order("w-m", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "wsbr0")),
        connectivity=Connectivity.CLUSTER,
        peers=("10.0.0.5", "10.0.9.7", "10.0.9.8"),
    )
    net = node.BridgeNetworking(cfg)
    net.sync([member])  # the first pass: nothing to compare with
    assert forgotten_pairs == []
    net.sync([replace(member, peers=("10.0.0.5", "10.0.9.8"))])  # 10.0.9.7 left
    assert forgotten_pairs == [{("10.0.0.5", "10.0.9.7")}]
    net.sync([replace(member, peers=("10.0.0.5", "10.0.9.8"))])  # nothing changed
    assert len(forgotten_pairs) == 1
    # a member joining forgets nothing; a NIC that is no longer CLUSTER is not compared
    net.sync([replace(member, peers=("10.0.0.5", "10.0.9.8", "10.0.9.9"))])
    net.sync([replace(member, connectivity=Connectivity.OPEN)])
    assert len(forgotten_pairs) == 1


def test_flows_with_a_former_peer_are_forgotten_again_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: None)
    monkeypatch.setattr(node, "DhcpServer", FakeDhcp)
    cfg = AgentConfig(node="n1", state_dir=str(tmp_path), networks=[NodeNetworkConfig()])
    member = replace(
        _order("w-m", _nic("default", "10.0.0.5", "52:54:00:00:00:05", "wsbr0")),
        connectivity=Connectivity.CLUSTER,
        peers=("10.0.9.7",),
    )
    net = node.BridgeNetworking(cfg)
    net.sync([member])

    def refused(stale: flows.Stale, netns: str | None = None) -> dict[str, int]:
        raise OSError("conntrack refused")

    monkeypatch.setattr(node.flows, "forget_stale", refused)
    net.sync([replace(member, peers=())])
    monkeypatch.setattr(node.flows, "forget_stale", _forget_stale)
    net.sync([replace(member, peers=())])  # tried again on the next pass
    assert forgotten_pairs == [{("10.0.0.5", "10.0.9.7")}]
