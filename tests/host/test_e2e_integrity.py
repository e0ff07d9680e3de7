"""End to end on real VMs: integrity at rest of the node's cache and the repository.

A real site (`ws-admin site up --driver libvirt`, private libvirtd, QEMU TCG) with the
signed test appliance under enforce. Booting it again does not read the cached blob
again (its stat is unchanged). After a first boot, a byte flipped in the node's
cached disk blob refuses the next create (no domain defined, `ws-admin audit` says
why: cache-hit deny) and the retry boots from a fresh copy; a byte flipped in the
repository's copy, once the node's cache no longer holds it, refuses the fetch the
same way (the service audits it and moves the blob to `bad/`). The tests run in file
order on one site (module scope). The fast twin: tests/functional/test_integrity.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from images import digest as digests
from images.appliance import Appliance
from tests.functional.harness import WS
from tests.host.test_e2e_site import BOOT_S, run
from tests.host.test_e2e_trust import TrustSite, enforcing_site

pytestmark = pytest.mark.host
SIGNED = "appliance"


class IntegritySite(TrustSite):
    def disk_digest(self) -> str:
        return next(p.digest for p in self.image(SIGNED).partitions if p.digest)

    def cached(self, digest: str) -> Path:
        return self.dir / "agent" / "cache" / "blobs" / "sha256" / digests.hex_of(digest)

    def stored(self, digest: str) -> Path:
        return self.dir / "service" / "blobs" / "sha256" / digests.hex_of(digest)

    def audit_lines(self, action: str) -> list[str]:
        """`ws-admin audit --image appliance`, the rows of ``action`` (as a user reads them)."""
        out = run(
            "workspace.cli.admin",
            "--service",
            str(self.record["address"]),
            "audit",
            "--image",
            SIGNED,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if f"  {action}  " in line]


def flip(path: Path, at: int = 4096) -> None:
    """One byte changed in place, through the filesystem."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.fixture(scope="module")
def site(appliance: Appliance) -> Iterator[IntegritySite]:
    with enforcing_site(IntegritySite, "ws-e2e-integrity-", appliance) as s:
        yield s


def test_first_boot_caches_the_signed_appliance(site: IntegritySite) -> None:
    assert site.stubs is not None
    wid = site.create("first", SIGNED)
    site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    assert digests.of_file(site.cached(site.disk_digest())) == site.disk_digest()
    site.ws("destroy", "first", "--wait")


def test_an_unchanged_blob_is_not_rehashed_at_each_use(site: IntegritySite) -> None:
    """Two more boots from the cached blob: each checks its stat, none reads it again
    (at most one re-hash, should libvirt have chowned the base at the first start)."""
    assert site.stubs is not None
    for name in ("again-1", "again-2"):
        wid = site.create(name, SIGNED)
        site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
        site.ws("destroy", name, "--wait")
    digest = site.disk_digest()  # (a kernel given to QEMU may be relabelled at each start)
    rehashed = [ln for ln in site.audit_lines("cache-hit") if "allow" in ln and digest in ln]
    assert len(rehashed) <= 1, rehashed


def test_flipped_byte_in_the_nodes_cache_refuses_the_next_create(site: IntegritySite) -> None:
    assert site.stubs is not None
    digest = site.disk_digest()
    flip(site.cached(digest))
    wid = site.create("second", SIGNED)
    ws = site.stubs.wait_state(wid, WS.WORKSPACE_STATE_FAILED, BOOT_S)
    assert f"cached blob {digest} does not match its digest (modified on disk" in ws.reason, (
        ws.reason
    )
    assert f"ws-{wid}" not in site.domains()  # refused before a domain was defined
    denied = [line for line in site.audit_lines("cache-hit") if "deny" in line]
    assert any(wid in line and "does not match its digest" in line for line in denied), denied
    quarantined = list((site.dir / "agent" / "cache" / "quarantine").iterdir())
    assert len(quarantined) == 1 and digests.of_file(quarantined[0]) != digest
    # The retry fetches the blob again and boots from intact bytes.
    site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    assert digests.of_file(site.cached(digest)) == digest
    site.ws("destroy", "second", "--wait")


def test_flipped_byte_in_the_repository_refuses_the_fetch(site: IntegritySite) -> None:
    assert site.stubs is not None
    digest = site.disk_digest()
    site.cached(digest).unlink()  # the node's cache no longer holds it
    stored = site.stored(digest)
    original = stored.read_bytes()
    flip(stored)
    try:
        wid = site.create("third", SIGNED)
        ws = site.stubs.wait_state(wid, WS.WORKSPACE_STATE_FAILED, BOOT_S)
        assert f"repository blob {digest} does not match its digest" in ws.reason, ws.reason
        assert f"image {SIGNED}" in ws.reason, ws.reason
        assert f"ws-{wid}" not in site.domains()
        denied = site.audit_lines("repository")
        assert any("deny" in line and "modified on disk" in line for line in denied), denied
        bad = list((site.dir / "service" / "blobs" / "bad").iterdir())
        assert [p.name.split(".")[0] for p in bad] == [digests.hex_of(digest)]
    finally:
        stored.write_bytes(original)  # restored (as a push of the image again would)
    site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING, BOOT_S)
    site.ws("destroy", "third", "--wait")
