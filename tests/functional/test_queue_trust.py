"""A request waiting for capacity is placed only while the site's trust policy still lets
its image launch: under ENFORCE, a key revoked while it waited makes a create FAIL when
capacity comes (a cluster's whole, for one member's image), and withdraws a grow, with a
``workspace.refused`` site event (state ``trust``), instead of placing it for the node to
refuse at boot. Under WARN it is placed, as a create would be (over real gRPC, fake
driver)."""

from __future__ import annotations

import pytest

from images import signing
from tests.functional.harness import WS, Site, wait_for
from tests.functional.test_site_events import events
from workspace.codec.v1 import image_spec_from_proto as manifest_from_proto
from workspace.v1 import admin_pb2, clusters_pb2, images_pb2, trust_pb2

ENFORCE = trust_pb2.TRUST_MODE_ENFORCE


@pytest.fixture
def small(site: Site) -> Site:
    """One node of 4 vCPUs and 4 GiB, images img and tools, each signed by a key of its
    own; the site enforces signatures."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.stubs.import_image("tools", data=b"\1" * 65536)
    site.add_agent("node1", cpus=4, memory_mib=4096)
    for image in ("img", "tools"):
        private_pem, public_pem = signing.generate_key()
        site.stubs.trust.AddKey(
            trust_pb2.AddKeyRequest(public_key_pem=public_pem.decode(), image_patterns=[image])
        )
        manifest = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=image))
        envelope = signing.sign(
            manifest_from_proto(manifest), signing.load_private_key(private_pem)
        )
        site.stubs.trust.AddSignature(
            trust_pb2.AddSignatureRequest(image=image, envelope_json=envelope)
        )
    site.stubs.trust.SetMode(trust_pb2.SetModeRequest(mode=ENFORCE))
    return site


def revoke(site: Site, image: str) -> None:
    """Revoke the key that signs ``image`` (its patterns name it alone)."""
    policy = site.stubs.trust.GetPolicy(trust_pb2.GetPolicyRequest())
    (kid,) = [k.key_id for k in policy.keys if list(k.image_patterns) == [image]]
    site.stubs.trust.RevokeKey(trust_pb2.RevokeKeyRequest(key_id=kid))


def queue(site: Site) -> list[str]:
    return [e.name for e in site.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries]


def refused(site: Site) -> list[tuple[str, str, str]]:
    return [
        (e.state, e.workspace_name or e.cluster, e.reason)
        for e in events(site)
        if e.kind == "workspace.refused"
    ]


def test_a_queued_create_whose_key_was_revoked_fails_unplaced(small: Site) -> None:
    site = small
    hog = site.stubs.create(name="hog", memory_mib=2500)
    job = site.stubs.create(name="job", memory_mib=2500, wait_for_capacity_s=600)
    assert job.state == WS.WORKSPACE_STATE_PENDING
    ok = site.stubs.create(name="ok", image="tools", memory_mib=1000, wait_for_capacity_s=600)
    assert queue(site) == ["job", "ok"]
    revoke(site, "img")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(hog.id))
    got = site.stubs.wait_state(job.id, WS.WORKSPACE_STATE_FAILED)
    # The one behind it, of an image still trusted, is placed as before.
    assert site.stubs.wait_state(ok.id, WS.WORKSPACE_STATE_RUNNING).node == "node1"
    # Not placed, so never refused by the node at boot (it was: FAILED on node1, "start
    # failed: image img refused on this node", with node1's memory held for it).
    assert got.node == ""
    assert got.reason.startswith("not placed: image img is no longer trusted: key ")
    assert "is revoked" in got.reason
    assert queue(site) == []
    [(state, name, reason)] = refused(site)
    assert (state, name) == ("trust", "job")
    assert reason.startswith("create of workspace job waiting for capacity failed: image img")
    audit = site.stubs.trust.ListAudit(trust_pb2.ListAuditRequest(image="img")).entries
    assert [(a.action, a.verdict, a.workspace_id) for a in audit if a.action == "place"] == [
        ("place", "deny", job.id)
    ]


def test_a_queued_cluster_create_fails_whole_for_one_members_image(small: Site) -> None:
    site = small
    hog = site.stubs.create(name="hog", memory_mib=2500)
    c = site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="c",
            members=[
                clusters_pb2.ClusterMember(role="head", image="img", memory_mib=512),
                clusters_pb2.ClusterMember(role="worker", image="tools", memory_mib=1024),
            ],
            wait_for_capacity_s=600,
        )
    )
    assert queue(site) == ["c"]
    revoke(site, "tools")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(hog.id))
    wait_for(lambda: not queue(site), what="the cluster to leave the queue")
    got = site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id=c.id))
    assert got.state == clusters_pb2.CLUSTER_STATE_FAILED
    # The head's image is trusted still, but it is not placed alone.
    assert {(m.name, m.state, m.node) for m in got.members} == {
        ("c-head-0", WS.WORKSPACE_STATE_FAILED, ""),
        ("c-worker-0", WS.WORKSPACE_STATE_FAILED, ""),
    }
    assert all("not placed: image tools is no longer trusted" in m.reason for m in got.members)
    assert [(s, n) for s, n, _ in refused(site)] == [("trust", c.id)]


def test_a_queued_grow_whose_key_was_revoked_is_withdrawn(small: Site) -> None:
    site = small
    site.stubs.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="g",
            members=[clusters_pb2.ClusterMember(role="w", image="img", memory_mib=1024)],
        )
    )
    hog = site.stubs.create(name="hog", memory_mib=2000)
    site.stubs.clusters.ScaleCluster(
        clusters_pb2.ScaleClusterRequest(id="g", role="w", count=2, wait_for_capacity_s=600)
    )
    assert queue(site) == ["g"]
    revoke(site, "img")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(hog.id))
    wait_for(lambda: not queue(site), what="the grow to leave the queue")
    got = site.stubs.clusters.GetCluster(clusters_pb2.ClusterRef(id="g"))
    live = [m.name for m in got.members if m.state != WS.WORKSPACE_STATE_TERMINATED]
    assert live == ["g-w-0"]  # the member that ran before keeps running
    [(state, _, reason)] = refused(site)
    assert state == "trust"
    assert reason.startswith("grow of cluster g waiting for capacity (g-w-1) withdrawn: image img")


def test_under_warn_a_queued_create_is_placed_as_a_create_would_be(small: Site) -> None:
    site = small
    hog = site.stubs.create(name="hog", memory_mib=2500)
    job = site.stubs.create(name="job", memory_mib=2500, wait_for_capacity_s=600)
    site.stubs.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_WARN))
    revoke(site, "img")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(hog.id))
    assert site.stubs.wait_state(job.id, WS.WORKSPACE_STATE_RUNNING).node == "node1"
    assert refused(site) == []
