"""What the List* and Watch* calls an ordinary user may make show them of other projects:
nothing by name, and no count of another project's use (docs/security.md, "Roles").
Over mutual TLS with real user certificates, through the raw stubs."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.functional.harness import WS, SitePki, TlsSite
from tests.functional.test_projects import make
from workspace.v1 import (
    access_pb2,
    access_pb2_grpc,
    admin_pb2,
    clusters_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    usage_pb2,
    workspaces_pb2,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _allocated(stubs: object) -> dict[str, int]:
    listed = stubs.admin.ListNetworks(admin_pb2.ListNetworksRequest())  # type: ignore[attr-defined]
    return {n.name: n.allocated for n in listed.networks}


def test_a_user_counts_only_the_addresses_of_the_workspaces_they_see(tmp_path: Path) -> None:
    """ListNetworks, open to users, gave each the whole site's count of addresses in use:
    how many workspaces the other projects ran on each network."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        site.stubs.network()
        site.stubs.network("lab", subnet="10.214.0.0/24")
        site.add_agent("node1", networks=[{"name": "default"}, {"name": "lab"}])
        make(site, name="phys")
        make(site, name="chem")
        site.stubs.import_image("img")
        site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        alice = site.identity("alice", projects=("phys",))
        bob = site.identity("bob", projects=("phys",))
        carol = site.identity("carol", projects=("chem",))
        dave = site.identity("dave")
        alice.create(name="a1")
        alice.create(name="a2", networks=["default", "lab"])
        carol.create(name="c1")
        carol.create(name="c2")
        carol.create(name="c3", networks=["lab"])
        assert _allocated(site.stubs) == {"default": 4, "lab": 2}  # the admin: the site's
        assert _allocated(alice) == {"default": 2, "lab": 1}
        assert _allocated(bob) == {"default": 2, "lab": 1}  # alice's project's
        assert _allocated(carol) == {"default": 2, "lab": 1}
        assert _allocated(dave) == {"default": 0, "lab": 0}
    finally:
        site.close()


def test_no_list_or_watch_of_a_user_shows_another_projects_objects(tmp_path: Path) -> None:
    """Every List*, Watch* and Get* call open to users, as carol (chem) after alice
    (phys) made an image, a workspace with user-data, a cluster and a key and changed
    them: nothing of alice's names, ids, addresses or project reaches carol."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        site.stubs.network()
        site.add_agent("node1")
        make(site, name="phys")
        make(site, name="chem")
        site.stubs.import_image("img", context="nocloud")
        site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        alice = site.identity("alice", projects=("phys",))
        carol = site.identity("carol", projects=("chem",))
        mine = carol.create(name="c1", image="img")
        watched: list[str] = []
        marker = threading.Event()

        def watch() -> None:  # carol's ws watch, until her own stop comes through
            req = workspaces_pb2.WatchWorkspacesRequest(include_terminated=True)
            for ev in carol.ws.WatchWorkspaces(req, timeout=60):
                watched.append(str(ev))
                if ev.workspace.state == WS.WORKSPACE_STATE_STOPPED:
                    marker.set()
                    return

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        alice.import_image("phys-secret:1", b"\7" * 65536)
        a1 = alice.create(name="alice-secret-ws", image="img", user_data=b"#cloud-config\n{}\n")
        alice.clusters.CreateCluster(
            clusters_pb2.CreateClusterRequest(
                name="phys-mpi", members=[clusters_pb2.ClusterMember(role="w", image="img")]
            )
        )
        keys = access_pb2_grpc.KeysStub(alice.channel)
        keys.AddSshKey(access_pb2.AddSshKeyRequest(public_key=f"{KEY} alice@phys-laptop"))
        alice.wait_state(a1.id, WS.WORKSPACE_STATE_RUNNING)
        alice.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=a1.id))
        alice.wait_state(a1.id, WS.WORKSPACE_STATE_STOPPED)
        carol.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=mine.id))
        assert marker.wait(30), watched[-1:]
        a1 = alice.get(a1.id)
        needles = ["alice", "phys", a1.id, a1.nics[0].ip, a1.nics[0].mac]

        projects = projects_pb2_grpc.ProjectsStub(carol.channel)
        ws_events = workspaces_pb2.WatchWorkspaceEventsRequest(id=mine.id)
        answers = [
            *watched,
            carol.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(include_terminated=True)),
            carol.ws.GetWorkspace(workspaces_pb2.GetWorkspaceRequest(id=mine.id)),
            *carol.ws.WatchWorkspaceEvents(ws_events),
            carol.ws.GetUsage(usage_pb2.GetUsageRequest()),
            *(
                carol.ws.GetUsage(usage_pb2.GetUsageRequest(by=by))
                for by in usage_pb2.UsageGrouping.values()
            ),
            carol.clusters.ListClusters(clusters_pb2.ListClustersRequest(include_terminated=True)),
            carol.images.ListImages(images_pb2.ListImagesRequest()),
            carol.images.GetRepositoryUsage(images_pb2.RepositoryUsageRequest()),
            carol.trust.GetPolicy(trust_pb2.GetPolicyRequest()),
            carol.admin.ListNetworks(admin_pb2.ListNetworksRequest()),
            projects.GetQuota(projects_pb2.GetQuotaRequest()),
            access_pb2_grpc.KeysStub(carol.channel).ListSshKeys(access_pb2.ListSshKeysRequest()),
        ]
        text = "\n".join(str(a) for a in answers)
        assert "c1" in text and "chem" in text  # her own are there
        assert [n for n in needles if n in text] == []
        assert _allocated(carol) == {"default": 1}
    finally:
        site.close()
