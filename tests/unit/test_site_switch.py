"""The switch between the nodes of a local libvirt site, without namespaces: the
launcher's wiring (record, configs, up/down order) and the switch's pure parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_site import FakeEnv, _no_daemons
from workspace import config
from workspace.config import AgentConfig
from workspace.site import local, switch
from workspace.site.configs import write_configs


class FakeSwitch:
    def __init__(self, calls: list[Any], netns: str, nodes: list[str], gateway: str) -> None:
        self.calls = calls
        self.args = (netns, nodes, gateway)

    def up(self) -> list[str]:
        self.calls.append(("switch up", *self.args))
        return list(self.args[1])  # every uplink new (no agent runs yet: none restarted)

    def down(self) -> None:
        self.calls.append(("switch down", *self.args))

    def running(self) -> bool:
        return False


def test_several_libvirt_nodes_get_a_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    site = local.LocalSite(tmp_path, driver="libvirt", nodes=2)
    _no_daemons(site, calls, monkeypatch)
    monkeypatch.setattr(site, "_hostenv", lambda ns, d=None: calls.append(ns) or FakeEnv(calls))
    monkeypatch.setattr(
        local, "Switch", lambda netns, nodes, gw: FakeSwitch(calls, netns, list(nodes), gw)
    )
    rec = site.up().record
    nodes = [f"{site.netns_name}-1", f"{site.netns_name}-2"]
    sw = f"{site.netns_name}-sw"
    assert rec.switch_netns == sw and local.read_record(tmp_path) == rec
    # The nodes' namespaces first, then the switch that plugs into them, then daemons.
    assert calls[:5] == [nodes[0], "up", nodes[1], "up", ("switch up", sw, nodes, "10.213.0.1")]
    agents = [config.load(AgentConfig, s.config) for s in site.node_specs()]
    assert [a.networks[0].uplink for a in agents] == ["uplink0", "uplink0"]
    calls.clear()
    done = site.down()
    assert f"switch namespace {sw}: removed with its links" in done
    assert calls[-1] == ("switch down", sw, nodes, "10.213.0.1")


def test_one_node_or_fake_sites_have_no_switch(tmp_path: Path) -> None:
    for driver, nodes in (("libvirt", 1), ("fake", 3)):
        site = local.LocalSite(tmp_path / f"{driver}{nodes}", driver=driver, nodes=nodes)
        site.dir.mkdir()
        uris = {s.name: "qemu+unix:///system?socket=/x" for s in site.node_specs()}
        write_configs(site.dir, site.address, site.node_specs(), driver, "qemu", uris)
        for spec in site.node_specs():
            assert config.load(AgentConfig, spec.config).networks[0].uplink == ""


def test_switch_names_and_rules() -> None:
    assert switch.switch_netns("ws-1234abcd") == "ws-1234abcd-sw"
    assert switch.port_name(3) == "p3"
    text = switch.rules("10.213.0.1")
    assert "udp dport { 67, 68 } drop" in text  # each node's dnsmasq serves its own VMs
    assert "arp saddr ip 10.213.0.1 drop" in text  # and each bridge is its VMs' gateway
    assert text.startswith("table bridge ws_switch\ndelete table bridge ws_switch\n")


def test_veth_indices() -> None:
    line = "7: p1@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master wssw0"
    assert switch._indices(line) == (7, 6)
    with pytest.raises(ValueError):
        switch._indices("3: wssw0: <BROADCAST> mtu 1500")


def test_running_agents_keep_running_when_the_switch_is_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`site up` on a running site whose switch is gone (or predates switches): the
    switch is made, and no agent is restarted: an agent joins its uplinked networks on
    every pass, so it attaches a new uplink0 on its next one."""
    calls: list[Any] = []
    site = local.LocalSite(tmp_path, driver="libvirt", nodes=2)
    _no_daemons(site, calls, monkeypatch)
    monkeypatch.setattr(site, "_hostenv", lambda ns, d=None: FakeEnv(calls))
    nodes = [f"{site.netns_name}-1", f"{site.netns_name}-2"]
    monkeypatch.setattr(local, "Switch", lambda netns, n, gw: FakeSwitch(calls, netns, list(n), gw))
    monkeypatch.setattr(FakeSwitch, "up", lambda self: [nodes[1]])  # local-2's uplink0 is new
    rec = site.up().record
    for i, agent in enumerate(rec.agents):
        agent.pid = 101 + i  # both agents run now
    local.write_record(tmp_path, rec)
    monkeypatch.setattr(local.hostproc, "pid_if_ours", lambda pid, m: pid if pid else None)
    stopped: list[int] = []
    monkeypatch.setattr(
        local.hostproc, "stop_session", lambda pid, m, *a: stopped.append(pid) or "stopped"
    )
    calls.clear()
    site.up()
    assert stopped == []
    agents = [c for c in calls if isinstance(c, tuple) and c[0] == local.AGENT_MODULE]
    assert agents == []  # none started again either
    assert [a.pid for a in local.read_record(tmp_path).agents] == [101, 102]
