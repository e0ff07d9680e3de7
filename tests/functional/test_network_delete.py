"""`ws-admin network delete`: a network no one uses goes; one in use stays, and the refusal
names what uses it (real gRPC, fake driver)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site
from workspace.cli import admin as admin_cli
from workspace.v1 import admin_pb2, clusters_pb2, clusters_pb2_grpc

SUBNET = "10.213.40.0/24"


def names(site: Site) -> list[str]:
    return [n.name for n in site.stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks]


def delete(site: Site, name: str) -> admin_pb2.Network:
    return site.stubs.admin.DeleteNetwork(admin_pb2.NetworkRef(name=name))


def refused(site: Site, name: str, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as err:
        delete(site, name)
    assert err.value.code() == code, err.value.details()
    assert name not in names(site) or code != grpc.StatusCode.NOT_FOUND
    return str(err.value.details())


@pytest.fixture
def two_nets(ready_site: Site) -> Site:
    """``default`` (ready_site's) and ``lab``, both served by node1's agent."""
    ready_site.stubs.network("lab", SUBNET)
    ready_site.stop_agent("node1")
    ready_site.add_agent("node1", networks=[{"name": "default"}, {"name": "lab"}])
    return ready_site


def test_an_unused_network_is_deleted_and_its_name_and_subnet_are_free_again(
    two_nets: Site,
) -> None:
    site = two_nets
    gone = delete(site, "lab")
    assert (gone.name, gone.subnet) == ("lab", SUBNET)
    assert names(site) == ["default"]
    with pytest.raises(grpc.RpcError) as info:  # refused as for any unknown network
        site.stubs.create(name="late", networks=["lab"])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    site.stubs.network("lab", SUBNET)  # made again, as new
    w = site.stubs.create(name="again", networks=["lab"])
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert w.nics[0].ip == "10.213.40.2"


def test_a_network_in_use_stays_and_the_refusal_names_its_users(two_nets: Site) -> None:
    site = two_nets
    w = site.stubs.create(name="user1", networks=["lab"])
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    why = refused(site, "lab", grpc.StatusCode.FAILED_PRECONDITION)
    assert "network lab is in use by workspaces user1" in why
    # What ends the use: a workspace's networks cannot be changed ("destroy or change
    # those first", it said).
    assert "(`ws destroy NAME --wait` ends each)" in why and "change" not in why
    assert "lab" in names(site)
    assert site.stubs.get(w.id).nics[0].ip == "10.213.40.2"  # nothing of it changed
    # once its last user is destroyed (and the node said so), it can go
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    delete(site, "lab")
    assert names(site) == ["default"]


def test_a_workspace_waiting_for_capacity_on_it_keeps_it(two_nets: Site) -> None:
    site = two_nets
    (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    site.stubs.create(name="hog", memory_mib=node.memory_capacity_mib // 2 + 1)
    w = site.stubs.create(
        name="later",
        networks=["lab"],
        memory_mib=node.memory_capacity_mib // 2 + 1,
        wait_for_capacity_s=600,
    )
    assert w.state == WS.WORKSPACE_STATE_PENDING
    assert "workspaces later" in refused(site, "lab", grpc.StatusCode.FAILED_PRECONDITION)


def test_a_cluster_and_a_backfill_entry_keep_it(two_nets: Site) -> None:
    site = two_nets
    clusters = clusters_pb2_grpc.ClustersStub(site.stubs.channel)
    member = clusters_pb2.ClusterMember(
        role="head", image="img", cpus=1, memory_mib=256, count=1, networks=["lab"]
    )
    clusters.CreateCluster(clusters_pb2.CreateClusterRequest(name="mpi", members=[member]))
    site.stubs.admin.SetBackfill(
        admin_pb2.BackfillEntry(image="img", max=0, networks=["lab"], memory_mib=256)
    )
    why = refused(site, "lab", grpc.StatusCode.FAILED_PRECONDITION)
    assert "clusters mpi" in why and "backfill entries of images img" in why
    assert "`ws cluster destroy NAME`" in why and "`ws-admin backfill clear IMAGE`" in why


def test_an_unknown_network_is_not_found(ready_site: Site) -> None:
    why = refused(ready_site, "nope", grpc.StatusCode.NOT_FOUND)
    assert why == "network 'nope' not found; `ws-admin network list` shows them"
    assert names(ready_site) == ["default"]


def test_the_cli_deletes_and_says_why_not(
    two_nets: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = two_nets

    def admin(*args: str) -> Any:
        return admin_cli.main(["--service", site.address, *args])

    w = site.stubs.create(name="user1", networks=["lab"])
    assert admin("network", "delete", "lab") == 1
    err = capsys.readouterr().err
    assert "network lab is in use by workspaces user1" in err
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    assert admin("network", "delete", "lab") == 0
    assert capsys.readouterr().out == f"network lab ({SUBNET}) deleted\n"
    site.stubs.network("spare", "10.213.41.0/24")
    assert admin("network", "delete", "spare", "--output", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["subnet"]) == ("spare", "10.213.41.0/24")
    assert names(site) == ["default"]
