"""Node conditions over the real service, reported by a fake-driver agent whose
networking finds them (the real finding is tested in tests/unit/test_uplink.py): what
`ws-admin node list` and `node show` print, their JSON, the Python client's view, and
one `node.condition` site event per condition that appears or clears."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.agent import Agent
from agent.netsetup import NullNetworking
from agent.virt.base import local_capacity
from agent.virt.fake import FakeDriver
from tests.functional.harness import WS, Site, wait_for
from tests.functional.test_netpolicy import run
from tests.functional.test_site_events import events
from workspace.cli import admin
from workspace.client import Client
from workspace.domain.events import SiteEvent
from workspace.domain.model import NodeCondition
from workspace.errors import NotFound
from workspace.v1 import admin_pb2

NO_ISOLATION = NodeCondition(
    "no-isolation",
    "bridged IPv4 does not pass the inet hooks (br_netfilter not loaded, ...):"
    " CLUSTER and OUTBOUND workspaces cannot be isolated here and do not start",
)
LAB_DOWN = NodeCondition(
    "network-not-ready", "network lab: uplink eth9 does not exist on node node1", subject="lab"
)


class Found(NullNetworking):
    """Networking whose every pass finds ``found``."""

    def __init__(self, *found: NodeCondition) -> None:
        self.found: tuple[NodeCondition, ...] = found

    def conditions(self) -> Sequence[NodeCondition]:
        return self.found


# The node grace of the tests where the node must stay up through an outage of its
# hypervisor. Far above the heartbeat interval (1 s here): with 2 s, a busy machine that kept
# the agent's heartbeat back for a second made the healthy node DOWN. That the agent keeps
# heartbeating is seen in its heartbeats' times (heartbeats_go_on), not in a fixed wait past
# a short grace.
GRACE_S = 15


def heartbeats_go_on(site: Site, since: float, for_s: float = 3.0) -> None:
    """Wait until the node's heartbeats are still taken ``for_s`` after ``since`` (many
    heartbeats and liveness passes), however slowly a busy machine gets there."""

    def latest() -> float:
        (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        return node.last_heartbeat.ToMicroseconds() / 1e6

    wait_for(lambda: latest() > since + for_s, 60, f"heartbeats {for_s:g} s after the outage")


def listed(site: Site) -> list[tuple[str, str, str]]:
    (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    return [(c.code, c.subject, c.message) for c in node.conditions]


def as_listed(*conds: NodeCondition) -> list[tuple[str, str, str]]:
    return [(c.code, c.subject, c.message) for c in conds]


def condition_events(site: Site) -> list[SiteEvent]:
    return [e for e in events(site) if e.kind == "node.condition"]


def test_a_condition_is_shown_on_the_node_and_is_an_event_until_it_clears(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    net = Found()
    site.add_agent("node1", networking=net)
    wait_for(lambda: site.agents["node1"].executor.conditions() == (), what="the first pass")
    code, out, _ = run(admin, site, capsys, "node", "list")
    header, row = out.splitlines()
    assert code == 0 and dict(zip(header.split(), row.split(), strict=True))["CONDITIONS"] == "-"

    net.found = (NO_ISOLATION, LAB_DOWN)  # the node loses br_netfilter and an uplink
    wait_for(lambda: listed(site) == as_listed(NO_ISOLATION, LAB_DOWN), what="the conditions")
    code, out, _ = run(admin, site, capsys, "node", "list")
    header, row = out.splitlines()
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert (code, cells["STATE"]) == (0, "READY")  # it still serves its other workspaces
    assert cells["CONDITIONS"] == "no-isolation,network-not-ready:lab"
    code, out, _ = run(admin, site, capsys, "node", "show", "node1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "node1"]
    at = lines.index("conditions")
    assert lines[at + 1 :] == [
        f"  no-isolation           {NO_ISOLATION.message}",
        f"  network-not-ready:lab  {LAB_DOWN.message}",
    ]
    for argv in (["node", "list"], ["node", "show", "node1"]):
        code, out, _ = run(admin, site, capsys, "-o", "json", *argv)
        data: Any = json.loads(out)
        node = data[0] if isinstance(data, list) else data
        assert node["conditions"] == [
            {"code": "no-isolation", "subject": "", "message": NO_ISOLATION.message},
            {"code": "network-not-ready", "subject": "lab", "message": LAB_DOWN.message},
        ]
    with Client(site.address) as client:  # the Python client sees them too
        assert [c.code for c in client.get_node("node1").conditions] == [
            "no-isolation",
            "network-not-ready",
        ]
    appeared = wait_for(lambda: condition_events(site), what="the node.condition events")
    assert [(e.node, e.subject, e.state, e.reason) for e in appeared] == [
        ("node1", "network-not-ready:lab", "appeared", LAB_DOWN.message),
        ("node1", "no-isolation", "appeared", NO_ISOLATION.message),
    ]
    code, out, _ = run(admin, site, capsys, "events", "--kind", "node.condition")
    assert code == 0
    assert (
        "node.condition  node node1  condition no-isolation  appeared  by user:local: "
        f"{NO_ISOLATION.message}" in out
    )

    net.found = (NO_ISOLATION,)  # the uplink is back
    wait_for(lambda: listed(site) == as_listed(NO_ISOLATION), what="the network's cleared")
    time.sleep(1.5)  # more full reports: each says the same, nothing new happens
    net.found = ()  # and br_netfilter is loaded
    wait_for(lambda: listed(site) == [], what="no conditions")
    done = wait_for(lambda: (e := condition_events(site)) and len(e) == 4 and e)
    assert [(e.subject, e.state, e.reason) for e in done[2:]] == [
        ("network-not-ready:lab", "cleared", ""),
        ("no-isolation", "cleared", ""),
    ]
    code, out, _ = run(admin, site, capsys, "node", "show", "node1")
    assert out.splitlines()[-1].split() == ["conditions", "none"]


def test_a_restarted_agent_does_not_clear_and_raise_its_conditions_again(site: Site) -> None:
    site.add_agent("node1", networking=Found(NO_ISOLATION))
    wait_for(lambda: listed(site) == as_listed(NO_ISOLATION), what="the condition")
    site.stop_agent("node1")
    again = site.add_agent("node1", networking=Found(NO_ISOLATION))
    # its first full reports come before its first pass: they say nothing of conditions
    wait_for(lambda: again.executor.conditions() is not None, what="the first pass")
    time.sleep(1.5)  # full reports after it
    assert listed(site) == as_listed(NO_ISOLATION)
    assert [(e.subject, e.state) for e in condition_events(site)] == [("no-isolation", "appeared")]


def test_node_show_of_an_unknown_node(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(admin, site, capsys, "node", "show", "nope")
    assert code == 1 and "no node 'nope'; `ws-admin node list` shows them" in err
    with Client(site.address) as client, pytest.raises(NotFound):
        client.get_node("nope")


def test_the_scheduler_keeps_workspaces_off_a_node_whose_condition_concerns_them(
    site: Site,
) -> None:
    """A CLUSTER or OUTBOUND workspace is not placed on a `no-isolation` node (it would be
    held there, never started); a workspace on a network the node could not make ready is
    not placed there; the others are. A request that waits is placed once it clears."""
    site.stubs.network()
    site.stubs.network("lab", subnet="10.214.0.0/24")
    site.stubs.import_image("img")
    unsafe = Found(NO_ISOLATION, LAB_DOWN)
    site.add_agent("node1", networking=unsafe, networks=[{"name": "default"}, {"name": "lab"}])
    site.add_agent("node2", networking=Found(), networks=[{"name": "default"}, {"name": "lab"}])
    wait_for(lambda: listed_of(site, "node1") == as_listed(NO_ISOLATION, LAB_DOWN), what="them")
    # pack would put all on node1 (first by name, equal free capacity)
    assert site.stubs.create(name="plain").node == "node1"
    for conn in ("cluster", "outbound"):
        assert site.stubs.create(name=f"iso-{conn}", connectivity=conn).node == "node2"
    assert site.stubs.create(name="on-lab", networks=["lab"]).node == "node2"

    site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="node2"))
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="refused", connectivity="cluster")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 node(s) are DRAINING, 1 node(s) cannot isolate bridged traffic (no-isolation)" in (
        err.value.details() or ""
    )
    # One that may wait is queued (the condition may clear: it is not "never placed") ...
    waiting = site.stubs.create(name="waits", connectivity="cluster", wait_for_capacity_s=600)
    assert waiting.state == WS.WORKSPACE_STATE_PENDING
    assert "cannot isolate bridged traffic" in site.stubs.get(waiting.id).reason
    # ... and placed on node1 once br_netfilter is loaded there.
    unsafe.found = (LAB_DOWN,)
    placed = site.stubs.wait_state(waiting.id, WS.WORKSPACE_STATE_RUNNING, timeout_s=30)
    assert placed.node == "node1"
    with pytest.raises(grpc.RpcError) as err:  # the broken network still keeps lab off it
        site.stubs.create(name="lab2", networks=["lab"])
    assert "could not make a requested network ready (network-not-ready)" in (
        err.value.details() or ""
    )


def listed_of(site: Site, name: str) -> list[tuple[str, str, str]]:
    nodes = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    (node,) = [n for n in nodes if n.name == name]
    return [(c.code, c.subject, c.message) for c in node.conditions]


LIBVIRT_DOWN = "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Connection refused"


def test_a_node_whose_hypervisor_is_down_stays_up_with_its_workspaces_as_they_were(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libvirtd killed under running VMs: the agent keeps heartbeating (the node is not
    DOWN past node_grace_s, no workspace is LOST), reports `hypervisor-unreachable` with
    the error, says its workspaces' states unknown (a destroy waits: nothing is reported
    gone), logs the outage once, and no new workspace is placed there. Once the
    hypervisor answers again, all of it clears and the destroy is carried out."""
    caplog.set_level(logging.INFO, logger="agent")
    site = Site(tmp_path, node_grace_s=GRACE_S)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        agent = site.add_agent("node1")
        kept, doomed = (site.stubs.create(name=n) for n in ("kept", "doomed"))
        for w in (kept, doomed):
            site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        driver = agent.driver
        assert isinstance(driver, FakeDriver)

        driver.unreachable = LIBVIRT_DOWN  # `kill <libvirtd pid>`
        wait_for(lambda: [c[0] for c in listed(site)] == ["hypervisor-unreachable"], what="it")
        since = time.time()
        ((_, subject, message),) = listed(site)
        assert subject == "" and LIBVIRT_DOWN in message
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(doomed.id))
        heartbeats_go_on(site, since)
        (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        assert node.state == admin_pb2.NODE_STATE_READY
        assert site.stubs.get(kept.id).state == WS.WORKSPACE_STATE_RUNNING
        assert site.stubs.get(doomed.id).state == WS.WORKSPACE_STATE_STOPPING  # not ended
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.create(name="new")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cannot reach their hypervisor (hypervisor-unreachable)" in (
            err.value.details() or ""
        )
        said = [r.getMessage() for r in caplog.records if r.name.startswith("agent")]
        assert sum("the hypervisor does not answer" in m for m in said) == 1, said
        assert not any(r.exc_info for r in caplog.records if r.name.startswith("agent"))

        driver.unreachable = ""  # `ws-admin site up` started libvirtd again
        wait_for(lambda: listed(site) == [], what="the condition to clear")
        site.stubs.wait_state(doomed.id, WS.WORKSPACE_STATE_TERMINATED)
        assert site.stubs.get(kept.id).state == WS.WORKSPACE_STATE_RUNNING
        said = [r.getMessage() for r in caplog.records if r.name.startswith("agent")]
        assert sum("the hypervisor answers again" in m for m in said) == 1, said
        assert [(e.subject, e.state) for e in condition_events(site)] == [
            ("hypervisor-unreachable", "appeared"),
            ("hypervisor-unreachable", "cleared"),
        ]
    finally:
        site.close()


def test_an_agent_restarted_while_its_hypervisor_is_down_registers_and_keeps_its_node_up(
    tmp_path: Path,
) -> None:
    """libvirtd down, then the agent restarted (or its link reconnecting: a service
    restart): it registers all the same, so its node stays READY and its workspaces are
    not LOST; the node says `hypervisor-unreachable`. Registering asked the hypervisor
    for the host's size, failed, and was tried again for ever while the node went DOWN
    and every workspace on it LOST."""
    site = Site(tmp_path, node_grace_s=GRACE_S)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        agent = site.add_agent("node1")
        w = site.stubs.create(name="kept")
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        site.stop_agent("node1")  # its fake domains persist, as libvirt's
        driver = FakeDriver(agent.cfg.fake, agent.cfg.state_dir)
        driver.unreachable = LIBVIRT_DOWN
        # its size not in its config: the hypervisor's to say, which cannot now
        again = Agent(dataclasses.replace(agent.cfg, cpus=0, memory_mib=0), driver)
        again.start()
        site.agents["node1"] = again
        wait_for(again.link.connected, what="the restarted agent's order stream")
        wait_for(lambda: [c[0] for c in listed(site)] == ["hypervisor-unreachable"], what="it")
        heartbeats_go_on(site, time.time())
        (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        assert node.state == admin_pb2.NODE_STATE_READY
        assert node.cpus == local_capacity()[0]  # the kernel's word meanwhile
        assert site.stubs.get(w.id).state == WS.WORKSPACE_STATE_RUNNING

        driver.unreachable = ""  # libvirtd started again
        wait_for(lambda: listed(site) == [], what="the condition to clear")
        assert site.stubs.get(w.id).state == WS.WORKSPACE_STATE_RUNNING
    finally:
        site.close()
