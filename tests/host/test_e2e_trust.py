"""End to end on real VMs: signed images under the site's trust policy.

A real site (`ws-admin site up --driver libvirt`, private libvirtd, QEMU TCG) with the
test appliance: signed under enforce it boots; a flipped byte in the repository's blob
is refused (no VM boots); an unsigned image is refused under enforce, and
under warn it boots and the audit (service and node) says why it should not have.
The tests run in file order on one site (module scope).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from images import signing
from images.appliance import Appliance
from tests.functional.harness import WS, wait_for
from tests.host.test_e2e_site import BOOT_S, E2ESite, run
from workspace.codec.v1 import image_spec_from_proto as manifest_from_proto
from workspace.v1 import images_pb2, trust_pb2, trust_pb2_grpc

pytestmark = pytest.mark.host
SIGNED = "appliance"
UNSIGNED = "appliance-unsigned"


class TrustSite(E2ESite):
    @property
    def trust(self) -> trust_pb2_grpc.TrustStub:
        assert self.stubs is not None
        return trust_pb2_grpc.TrustStub(self.stubs.channel)

    def import_appliance(self, name: str, appliance: Appliance) -> None:
        out = run(
            "workspace.cli.admin",
            "--service",
            str(self.record["address"]),
            "image",
            "import",
            name,
            "--appliance",
            str(appliance.manifest.parent),
            check=False,
        )
        assert out.returncode == 0, out.stderr

    def image(self, name: str) -> images_pb2.Image:
        assert self.stubs is not None
        return self.stubs.images.GetImage(images_pb2.GetImageRequest(name=name))

    def create(self, name: str, image: str) -> str:
        assert self.stubs is not None
        return str(self.stubs.create(name=name, image=image, memory_mib=256).id)

    def domains(self) -> str:
        return self.virsh("list", "--all", "--name")


S = TypeVar("S", bound=TrustSite)


@contextlib.contextmanager
def enforcing_site(cls: type[S], prefix: str, appliance: Appliance) -> Iterator[S]:
    """A libvirt site under ``enforce`` with the appliance imported as SIGNED and signed
    by a key trusted for it; taken down (and removed) afterwards."""
    site_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    site_dir.chmod(0o755)
    s = cls(site_dir)
    try:
        s.up()
        s.import_appliance(SIGNED, appliance)
        key = Ed25519PrivateKey.generate()
        s.trust.AddKey(
            trust_pb2.AddKeyRequest(
                public_key_pem=signing.public_pem(key), image_patterns=["appliance"]
            )
        )
        envelope = signing.sign(manifest_from_proto(s.image(SIGNED)), key)
        s.trust.AddSignature(trust_pb2.AddSignatureRequest(image=SIGNED, envelope_json=envelope))
        s.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))
        yield s
    finally:
        run("workspace.cli.admin", "site", "down", "--dir", str(site_dir), check=False)
        if s.stubs is not None:
            s.stubs.channel.close()
        if not os.environ.get("WS_KEEP_SITE"):
            shutil.rmtree(site_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[TrustSite]:
    with enforcing_site(TrustSite, "ws-e2e-trust-", appliance) as s:
        yield s


def test_flipped_byte_in_the_repository_blob_is_refused_by_the_node(site: TrustSite) -> None:
    """First in the file: the node has not cached the disk blob yet."""
    assert site.stubs is not None
    digest = next(p.digest for p in site.image(SIGNED).partitions if p.digest)
    blob = site.dir / "service" / "blobs" / "sha256" / digest.split(":", 1)[1]
    original = blob.read_bytes()
    flipped = bytearray(original)
    flipped[4096] ^= 0x01
    blob.write_bytes(bytes(flipped))
    try:
        wid = site.create("tampered", SIGNED)
        ws = site.stubs.wait_state(wid, WS.WORKSPACE_STATE_FAILED, BOOT_S)
        assert f"image {SIGNED}" in ws.reason and digest in ws.reason, ws.reason
        assert "does not match its digest" in ws.reason, ws.reason  # the repository's check
        assert f"ws-{wid}" not in site.domains()  # no VM was defined, let alone booted
    finally:
        blob.write_bytes(original)
    site.ws("destroy", "tampered", "--wait")


def test_signed_appliance_boots_under_enforce(site: TrustSite) -> None:
    assert site.stubs is not None
    wid = site.create("signed", SIGNED)
    site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    boot = wait_for(
        lambda: [
            e
            for e in site.trust.ListAudit(trust_pb2.ListAuditRequest(image=SIGNED)).entries
            if e.action == "boot" and e.workspace_id == wid
        ],
        what="the node's boot audit",
    )[0]
    assert boot.where.startswith("node:") and boot.verdict == "allow"
    site.ws("destroy", "signed", "--wait")


def test_unsigned_image_refused_under_enforce_boots_under_warn(
    site: TrustSite, appliance: Appliance
) -> None:
    assert site.stubs is not None
    site.import_appliance(UNSIGNED, appliance)
    with pytest.raises(grpc.RpcError) as err:
        site.create("unsigned", UNSIGNED)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"image {UNSIGNED} is not trusted" in str(err.value.details())
    assert "not signed" in str(err.value.details())

    site.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_WARN))
    try:
        wid = site.create("unsigned", UNSIGNED)
        site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)

        def warnings() -> list[trust_pb2.AuditEntry]:
            entries = site.trust.ListAudit(trust_pb2.ListAuditRequest(image=UNSIGNED)).entries
            out = [e for e in entries if e.workspace_id == wid and e.verdict == "warn"]
            return out if {e.where.split(":")[0] for e in out} >= {"service", "node"} else []

        entries = wait_for(warnings, what="the warn audit from the service and the node")
        assert all("not signed" in e.reason for e in entries), entries
        site.ws("destroy", "unsigned", "--wait")
    finally:
        site.trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))
