"""What the List* and Watch* calls an ordinary user may make show them of other projects:
nothing by name, and no count of another project's use (docs/security.md, "Roles").
Over mutual TLS with real user certificates, through the raw stubs."""

from __future__ import annotations

from pathlib import Path

from tests.functional.harness import SitePki, TlsSite
from tests.functional.test_projects import make
from workspace.v1 import admin_pb2, images_pb2


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
