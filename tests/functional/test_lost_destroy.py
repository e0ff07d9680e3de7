"""A LOST workspace destroyed while its node is DOWN is TERMINATED at once, but its VM may
still run behind a partition: its address is held (not given to another VM) until the
node comes back and its reconciliation removes the domain, or an admin removes the node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.v1 import admin_pb2, common_pb2

PERSIST = {"persist": True}  # the fake node's domains survive its agent (as libvirt's do)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Site, common_pb2.Workspace]]:
    """A site with node1 (running k-m-0) and node2; node1's agent then dies (kill -9):
    node1 DOWN, k-m-0 LOST. The grace is well above the heartbeat interval (1 s): with 2 s,
    a busy machine that held node2's heartbeat back for a second made it DOWN too, and the
    tests' creates on it failed."""
    site = Site(tmp_path, node_grace_s=8)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", fake=PERSIST)
        w = site.stubs.create(name="k-m-0")
        w = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        assert w.node == "node1"
        site.add_agent("node2")
        site.agents.pop("node1").stop_event.set()  # cut off, its VM left running
        w = site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_LOST, timeout_s=60)
        yield site, w
    finally:
        site.close()


def allocated(site: Site) -> int:
    nets = site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks
    return sum(n.allocated for n in nets)


def released_events(site: Site, ref: str) -> list[admin_pb2.SiteEvent]:
    req = admin_pb2.WatchEventsRequest(kinds=["workspace.released"], workspace=ref)
    return list(site.stubs.admin.WatchEvents(req))


def destroy_lost(site: Site, w: common_pb2.Workspace) -> common_pb2.Workspace:
    """`ws destroy` of the LOST workspace: answered at once, TERMINATED, address held."""
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    gone = site.stubs.get(w.id)
    assert gone.state == WS.WORKSPACE_STATE_TERMINATED
    assert "its node was not reachable" in gone.reason
    assert f"held until node node1 confirms the VM is gone: address {w.nics[0].ip}" in gone.reason
    assert allocated(site) == 1  # `ws-admin network list` counts it
    assert released_events(site, w.id) == []
    return gone


def test_address_of_destroyed_lost_workspace_is_held_until_node_confirms(
    two_nodes: tuple[Site, common_pb2.Workspace],
) -> None:
    site, w = two_nodes
    ip = w.nics[0].ip
    destroy_lost(site, w)
    # a create for the same network, on the other node, does not get that address
    dup = site.stubs.wait_state(site.stubs.create(name="dup").id, WS.WORKSPACE_STATE_RUNNING)
    assert dup.node == "node2"
    assert dup.nics[0].ip != ip
    assert dup.nics[0].mac != w.nics[0].mac
    assert allocated(site) == 2
    # the node comes back: its reconciliation removes the domain; its report says so
    agent = site.add_agent("node1", fake=PERSIST)
    wait_for(lambda: allocated(site) == 1, what="k-m-0's address released")
    assert [d.workspace_id for d in agent.driver.list_domains()] == []
    (ev,) = released_events(site, w.id)
    assert ev.subject == ip
    assert ev.node == "node1"
    assert "node node1 confirmed the VM is gone" in ev.reason
    shown = site.stubs.get(w.id)
    assert shown.state == WS.WORKSPACE_STATE_TERMINATED
    assert "held until" not in shown.reason
    assert f"address {ip} and its capacity released" in shown.reason
    node1 = next(
        n
        for n in site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
        if n.name == "node1"
    )
    assert (node1.used_cpus, node1.used_memory_mib, node1.workspaces) == (0, 0, 0)
    # and the address can be given out again
    again = site.stubs.create(name="again")
    assert again.nics[0].ip == ip


def test_removing_the_dead_node_releases_the_address(
    two_nodes: tuple[Site, common_pb2.Workspace],
) -> None:
    site, w = two_nodes
    ip = w.nics[0].ip
    destroy_lost(site, w)
    site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node1"))
    assert allocated(site) == 0
    (ev,) = released_events(site, w.id)
    assert (ev.subject, ev.reason) == (ip, "node node1 was removed")
    assert site.stubs.create(name="again").nics[0].ip == ip


def test_lost_workspace_still_blocks_node_removal(
    two_nodes: tuple[Site, common_pb2.Workspace],
) -> None:
    site, _ = two_nodes
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.admin.RemoveNode(admin_pb2.NodeRef(name="node1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A DOWN node cannot be drained and stopped: the refusal says what helps.
    assert err.value.details().startswith(
        "node node1 is DOWN and still holds 1 workspace(s) (LOST); destroy them first"
    ), err.value.details()
    assert allocated(site) == 1
