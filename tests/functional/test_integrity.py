"""Integrity at rest, end to end on the fake driver: a byte flipped in the node's cached
blob, or in the service's repository, after a first boot of a signed image under
enforce; the next create is refused with the reason, nothing is defined, and the audit
says why; an import of a modified repository blob is refused. Real service +
fake-driver agent over gRPC."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from images import digest as digests
from images import signing
from tests.functional.harness import WS, Site, wait_for
from workspace.store import Image
from workspace.store.mapping import image_spec
from workspace.v1 import common_pb2, images_pb2, trust_pb2, trust_pb2_grpc

IMAGE = "app:1"
DATA = bytes(range(256)) * 256


def audit(site: Site, where: str, action: str) -> list[trust_pb2.AuditEntry]:
    stub = trust_pb2_grpc.TrustStub(site.stubs.channel)
    entries = stub.ListAudit(trust_pb2.ListAuditRequest(image=IMAGE)).entries
    return [e for e in entries if e.where == where and e.action == action]


def flip(path: Path, at: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def domains(site: Site) -> set[str]:
    return {d.workspace_id for d in site.agents["node1"].driver.list_domains()}


@pytest.fixture
def signed_site(site: Site) -> Site:
    """Enforce mode, one trusted key, image app:1 signed by it, one node."""
    key = Ed25519PrivateKey.generate()
    trust = trust_pb2_grpc.TrustStub(site.stubs.channel)
    site.stubs.network()
    site.stubs.import_image(IMAGE, DATA)
    trust.AddKey(
        trust_pb2.AddKeyRequest(public_key_pem=signing.public_pem(key), image_patterns=["*"])
    )
    assert site.service is not None
    with site.service.store.read() as s:
        row = s.get(Image, IMAGE)
        assert row is not None
        envelope = signing.sign(image_spec(row), key)
    trust.AddSignature(trust_pb2.AddSignatureRequest(image=IMAGE, envelope_json=envelope))
    trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))
    site.add_agent("node1")
    return site


def image_digest(site: Site) -> str:
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=IMAGE))
    return str(img.partitions[0].digest)


def test_flipped_byte_in_the_nodes_cache_refuses_the_next_create(signed_site: Site) -> None:
    site = signed_site
    ag = site.agents["node1"]
    digest = image_digest(site)
    w1 = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    fetched = ag.cache.received_bytes["service"]
    flip(ag.cache.path(digest))

    w2 = site.stubs.create(name="w2", image=IMAGE)
    failed = site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_FAILED)
    assert w2.id not in domains(site)  # refused before anything was defined
    assert f"cached blob {digest} does not match its digest (modified on disk" in failed.reason
    assert "refused, nothing was booted" in failed.reason
    deny = wait_for(
        lambda: [e for e in audit(site, "node:node1", "cache-hit") if e.verdict == "deny"],
        what="the node's cache-hit audit",
    )[0]
    assert (deny.digest, deny.workspace_id) == (digest, w2.id)
    assert "does not match its digest (modified on disk" in deny.reason
    (kept,) = (ag.cache.root / "quarantine").iterdir()  # moved aside, not deleted
    assert digests.of_file(kept) != digest

    # The retry fetches it again from the service and boots from intact bytes.
    site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
    assert ag.cache.received_bytes["service"] == fetched + len(DATA)
    assert digests.of_file(ag.cache.path(digest)) == digest
    # An unchanged blob is used as it is: no re-hash, no further cache-hit audit.
    before = len(audit(site, "node:node1", "cache-hit"))
    w3 = site.stubs.create(name="w3", image=IMAGE)
    site.stubs.wait_state(w3.id, WS.WORKSPACE_STATE_RUNNING)
    assert len(audit(site, "node:node1", "cache-hit")) == before


def test_flipped_byte_in_the_repository_refuses_the_fetch(signed_site: Site) -> None:
    site = signed_site
    digest = image_digest(site)
    w1 = site.stubs.create(name="w1", image=IMAGE)
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    # Clear the node's cache (agent stopped, its blobs removed, started again).
    cache_root = site.agents["node1"].cache.root
    site.stop_agent("node1")
    shutil.rmtree(cache_root / "blobs")
    site.add_agent("node1")
    repo = Path(site.cfg.blob_dir)
    flip(repo / "sha256" / digests.hex_of(digest))

    w2 = site.stubs.create(name="w2", image=IMAGE)
    failed = site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_FAILED)
    assert w2.id not in domains(site)
    assert "FAILED_PRECONDITION" in failed.reason
    assert f"repository blob {digest} does not match its digest (modified on disk" in failed.reason
    deny = wait_for(lambda: audit(site, "service", "repository"), what="the service's audit")[0]
    assert (deny.verdict, deny.digest) == ("deny", digest)
    assert "does not match its digest" in deny.reason
    assert [p.name.split(".")[0] for p in (repo / "bad").iterdir()] == [digests.hex_of(digest)]
    missing = site.stubs.images.HasBlobs(images_pb2.HasBlobsRequest(digests=[digest])).missing
    assert list(missing) == [digest]  # a push sends it again

    assert site.stubs.upload(DATA) == digest  # pushed again: the retry boots
    site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING, timeout_s=40)
    assert digests.of_file(site.agents["node1"].cache.path(digest)) == digest


def test_import_of_a_modified_repository_blob_is_refused(site: Site) -> None:
    digest = site.stubs.upload(DATA)
    flip(Path(site.cfg.blob_dir) / "sha256" / digests.hex_of(digest))
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.images.ImportImage(
            images_pb2.ImportImageRequest(
                name="later:1",
                partitions=[
                    common_pb2.Partition(
                        name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
                    )
                ],
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"repository blob {digest} does not match its digest" in str(err.value.details())
