"""Uplinks and the filter as BridgeNetworking drives them (agent/net/node.py), with the
host side (pyroute2, nft, dnsmasq) replaced by recorders; the real thing is in
tests/host/test_net_policy.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from agent.net import node
from agent.net.bridge import check_ifname
from agent.net.uplink import vlan_ifname
from agent.virt.base import tap_name
from workspace import errors
from workspace.config import AgentConfig, NodeNetworkConfig
from workspace.domain.model import NetworkInfo, Nic, Order
from workspace.domain.netpolicy import Connectivity
from workspace.domain.states import Desired


@dataclass
class Host:
    bridges: list[tuple[str, str | None]] = field(default_factory=list)
    uplinks: list[tuple[str, str, int]] = field(default_factory=list)
    rulesets: list[str] = field(default_factory=list)
    # Our tables as `nft list table` would print them ("family name" -> text).
    live: dict[str, str] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    h = Host()

    def ensure_uplink(bridge: str, uplink: str, vlan: int, **kw: object) -> str:
        if uplink in h.missing:
            raise errors.FailedPrecondition(f"uplink {uplink} does not exist on node {kw['node']}")
        h.uplinks.append((bridge, uplink, vlan))
        return vlan_ifname(uplink, vlan) if vlan else uplink

    monkeypatch.setattr(node, "ensure_bridge", lambda b, cidr: h.bridges.append((b, cidr)))
    monkeypatch.setattr(node, "ensure_uplink", ensure_uplink)

    def apply_ruleset(script: str, netns: str | None = None) -> None:
        h.rulesets.append(script)
        h.live = {"bridge ws_guard": f"guard of {script}", "inet ws_policy": f"policy of {script}"}

    monkeypatch.setattr(node, "apply_ruleset", apply_ruleset)
    monkeypatch.setattr(
        node, "list_table", lambda fam, name, netns=None: h.live.get(f"{fam} {name}")
    )
    monkeypatch.setattr(node.flows, "forget_stale", lambda stale, netns=None: {})  # the host's
    yield h


def cfg(tmp_path: Path, **nets: str) -> AgentConfig:
    networks = [
        NodeNetworkConfig(name=name, uplink=uplink, dhcp=False) for name, uplink in nets.items()
    ]
    return AgentConfig(node="n1", state_dir=str(tmp_path), networks=networks)


def order(wid: str, network: str, bridge: str, ip: str, vlan: int) -> Order:
    nic = Nic(network, ip, "52:54:00:00:00:05", 24, "10.0.0.1", bridge, "10.0.0.0/24", vlan=vlan)
    return Order(wid, wid, wid, Desired.RUNNING, 1, 512, "img", (), (nic,))


def test_vlan_interface_names() -> None:
    assert vlan_ifname("eth1", 100) == "eth1.100"
    long = vlan_ifname("enp1s0f1np1", 4094)
    assert len(long) <= 15 and long.endswith(".4094") and long == vlan_ifname("enp1s0f1np1", 4094)
    assert vlan_ifname("enp1s0f1np1", 4094) != vlan_ifname("enp1s0f0np0", 4094)


@pytest.mark.parametrize("name", [".", "..", "", "eth 1", "e" * 16])
def test_a_name_linux_refuses_for_an_interface_is_refused_saying_what_a_good_one_is(
    name: str,
) -> None:
    """ "." and ".." passed the agent's interface-name check (letters, digits, '_', '.',
    '-'), though Linux refuses them as interface names: the bridge or uplink named so
    failed later in netlink, not with the rule."""
    with pytest.raises(errors.InvalidArgument) as caught:
        check_ifname(name, "uplink")
    assert str(caught.value) == (
        f"uplink {name!r}: 1 to 15 letters, digits, '_', '.', '-', not '.' or '..'"
    )


def test_names_with_dots_linux_takes_pass() -> None:
    for name in ("...", ".a", "eth1.100", "br-lab_0"):
        check_ifname(name)


def test_uplinks_follow_the_orders(host: Host, tmp_path: Path) -> None:
    net = node.BridgeNetworking(cfg(tmp_path, a="eth1", b="eth1", c=""))
    orders = [
        order("w1", "a", "wsbr-a", "10.0.0.5", 100),
        order("w2", "b", "wsbr-b", "10.0.0.6", 200),
        order("w3", "c", "wsbr-c", "10.0.0.7", 0),  # no uplink configured
    ]
    net.sync(orders)
    assert sorted(host.uplinks) == [("wsbr-a", "eth1", 100), ("wsbr-b", "eth1", 200)]
    (script,) = host.rulesets
    assert 'oifname "eth1.100" drop' in script and 'oifname "eth1.200" drop' in script
    assert f"from_{tap_name('w3', 0)}" in script
    net.sync(orders)  # nothing changed: the uplinks checked again (level-triggered,
    # ensure_uplink is idempotent), the ruleset not re-applied
    assert host.uplinks[2:] == host.uplinks[:2] and len(host.rulesets) == 1
    net.sync(orders[:2])  # w3 gone: a new ruleset without it
    assert len(host.rulesets) == 2 and f"from_{tap_name('w3', 0)}" not in host.rulesets[-1]


def test_a_restarted_agent_rejoins_and_reapplies(host: Host, tmp_path: Path) -> None:
    config = cfg(tmp_path, a="eth1")
    node.BridgeNetworking(config).sync([order("w1", "a", "wsbr-a", "10.0.0.5", 100)])
    host.uplinks.clear()
    host.bridges.clear()
    # restarted, and no workspace on the network any more: the node stays in its L2
    again = node.BridgeNetworking(config)
    again.sync([])
    assert host.uplinks == [("wsbr-a", "eth1", 100)]
    assert host.bridges == [("wsbr-a", "10.0.0.1/24")]
    assert len(host.rulesets) == 2  # applied once by each process
    assert 'oifname "eth1.100" drop' in host.rulesets[-1]


def test_join_before_any_workspace(host: Host, tmp_path: Path) -> None:
    net = node.BridgeNetworking(cfg(tmp_path, a="eth1", b=""))
    net.join(
        [
            NetworkInfo("a", "10.0.0.0/24", "10.0.0.1", bridge="wsbr-a", vlan=7),
            NetworkInfo("b", "10.1.0.0/24", "10.1.0.1", bridge="wsbr-b"),  # no uplink
            NetworkInfo("z", "10.2.0.0/24", "10.2.0.1", bridge="wsbr-z"),  # not served
        ]
    )
    assert host.uplinks == [("wsbr-a", "eth1", 7)]
    assert host.bridges == [("wsbr-a", "10.0.0.1/24")]


def test_a_missing_uplink_fails_only_its_network(host: Host, tmp_path: Path) -> None:
    host.missing.add("eth9")
    net = node.BridgeNetworking(cfg(tmp_path, a="eth9", b="eth1"))
    orders = [
        order("w1", "a", "wsbr-a", "10.0.0.5", 0),
        order("w2", "b", "wsbr-b", "10.0.0.6", 0),
    ]
    broken = net.sync(orders)
    assert list(broken) == ["a"]
    assert "uplink eth9 does not exist on node n1" in broken["a"]
    assert host.uplinks == [("wsbr-b", "eth1", 0)]
    (script,) = host.rulesets  # every VM guarded all the same
    assert f"from_{tap_name('w1', 0)}" in script and f"from_{tap_name('w2', 0)}" in script
    host.missing.discard("eth9")  # the admin fixes it: the next pass joins it
    assert net.sync(orders) == {}
    assert sorted(host.uplinks[1:]) == [("wsbr-a", "eth9", 0), ("wsbr-b", "eth1", 0)]


def test_remembered_networks_are_joined_on_every_pass(host: Host, tmp_path: Path) -> None:
    """A network the node joined once stays joined when no workspace uses it: a port
    re-made behind the agent's back is attached again on the next pass, no restart."""
    config = cfg(tmp_path, a="eth1")
    net = node.BridgeNetworking(config)
    net.sync([order("w1", "a", "wsbr-a", "10.0.0.5", 0)])
    net.sync([])
    net.sync([])
    assert host.uplinks == [("wsbr-a", "eth1", 0)] * 3


def test_policy_without_br_netfilter_holds_back_only_the_restricted(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filtered = [False]
    monkeypatch.setattr(node, "bridged_ipv4_filtered", lambda netns=None: filtered[0])
    net = node.BridgeNetworking(cfg(tmp_path, a=""))
    open_vm = order("w1", "a", "wsbr-a", "10.0.0.5", 0)
    net.sync([open_vm])  # OPEN only: anti-spoofing needs no br_netfilter
    assert net.holds() == {}
    cluster = replace(order("w2", "a", "wsbr-a", "10.0.0.6", 0), connectivity=Connectivity.CLUSTER)
    for _ in range(2):  # applied (anti-spoofing holds), held back, and checked again
        assert net.sync([open_vm, cluster]) == {}
        assert list(net.holds()) == ["w2"]
        assert re.match(r"not isolated: .* node n1: .*br_netfilter", net.holds()["w2"])
    assert len(host.rulesets) == 2  # the ruleset did not change: applied once
    filtered[0] = True  # modprobe br_netfilter: the next pass lets it go
    net.sync([open_vm, cluster])
    assert net.holds() == {}


def test_tables_removed_or_changed_behind_the_agents_back_are_applied_again(
    host: Host, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net = node.BridgeNetworking(cfg(tmp_path, a=""))
    vm = order("w1", "a", "wsbr-a", "10.0.0.5", 0)
    net.sync([vm])
    net.sync([vm])
    assert len(host.rulesets) == 1  # nothing changed: nothing applied
    del host.live["inet ws_policy"]  # `nft delete table inet ws_policy`, a flush ruleset
    net.sync([vm])
    assert len(host.rulesets) == 2 and host.rulesets[1] == host.rulesets[0]
    assert "inet ws_policy missing or changed behind the agent's back" in caplog.text
    host.live["bridge ws_guard"] += "\n# a rule added by hand"
    net.sync([vm])
    assert len(host.rulesets) == 3 and "inet ws_policy" in host.live
    net.sync([vm])
    assert len(host.rulesets) == 3


def test_the_remembered_networks_are_only_the_agents_to_read(host: Host, tmp_path: Path) -> None:
    config = cfg(tmp_path, a="eth1")
    net = node.BridgeNetworking(config)
    net.sync([order("w1", "a", "wsbr-a", "10.0.0.5", 0)])
    assert net.memory_path.stat().st_mode & 0o777 == 0o600
    assert list(net.memory_path.parent.glob("*.tmp")) == []


def test_a_node_serving_a_network_without_br_netfilter_says_so_before_any_workspace(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The no-isolation condition is the node's: checked on every pass of a node that
    serves a network, with no restricted workspace (or none at all) there."""
    filtered, reads = [False], [0]

    def read(netns: str | None = None) -> bool:
        reads[0] += 1
        return filtered[0]

    monkeypatch.setattr(node, "bridged_ipv4_filtered", read)
    net = node.BridgeNetworking(cfg(tmp_path, a=""))
    assert net.conditions() == ()  # no pass yet: nothing found
    net.sync([])
    (cond,) = net.conditions()
    assert (cond.code, cond.subject, cond.label) == ("no-isolation", "", "no-isolation")
    assert "CLUSTER and OUTBOUND workspaces cannot be isolated here" in cond.message
    assert "modprobe br_netfilter" in cond.message
    net.sync([order("w1", "a", "wsbr-a", "10.0.0.5", 0)])  # an OPEN workspace: the same
    assert [c.code for c in net.conditions()] == ["no-isolation"]
    assert net.holds() == {}  # and nothing held: it needs no isolation
    filtered[0] = True  # modprobe br_netfilter: the next pass clears it
    net.sync([])
    assert net.conditions() == ()
    assert reads[0] == 3  # once a pass


def test_a_node_serving_no_network_does_not_read_the_sysctl(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read(netns: str | None = None) -> bool:
        raise AssertionError("no network served: nothing to check")

    monkeypatch.setattr(node, "bridged_ipv4_filtered", read)
    net = node.BridgeNetworking(cfg(tmp_path))
    net.sync([])
    assert net.conditions() == ()


def test_a_network_that_cannot_be_made_ready_is_a_condition_naming_it(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "bridged_ipv4_filtered", lambda netns=None: True)
    host.missing.add("eth9")
    net = node.BridgeNetworking(cfg(tmp_path, a="eth9", b="eth1"))
    orders = [order("w1", "a", "wsbr-a", "10.0.0.5", 0), order("w2", "b", "wsbr-b", "10.0.0.6", 0)]
    net.sync(orders)
    (cond,) = net.conditions()
    assert (cond.code, cond.subject, cond.label) == (
        "network-not-ready",
        "a",
        "network-not-ready:a",
    )
    assert cond.message == "network a: uplink eth9 does not exist on node n1"
    host.missing.discard("eth9")
    net.sync(orders)
    assert net.conditions() == ()
    # a network the node joined and no workspace uses any more: still the node's to join
    host.missing.add("eth1")
    assert net.sync([]) == {}  # no workspace waits for it
    assert [c.label for c in net.conditions()] == ["network-not-ready:b"]
