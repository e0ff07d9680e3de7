"""The whole service on PostgreSQL (the ``pg_url`` fixture, tests/conftest.py): a site whose
``database_url`` is a PostgreSQL database runs a workspace's life as on SQLite, on a
192.168 pool (above 128.0.0.0: 64-bit ``ip_int``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from images.model import ImageSpec, Mode, Partition
from tests.functional.harness import WS, Site
from workspace.ops import images as images_ops
from workspace.store import Workspace
from workspace.store.mapping import bound_spec


@pytest.fixture
def pg_site(tmp_path: Path, pg_url: str) -> Iterator[Site]:
    site = Site(tmp_path, database_url=pg_url)
    try:
        yield site
    finally:
        site.close()


def test_a_workspace_lives_and_dies_on_postgresql(pg_site: Site) -> None:
    site = pg_site
    site.stubs.network(subnet="192.168.122.0/24")
    site.stubs.import_image("img", context="nocloud")
    site.add_agent("node1")
    script = "#!/bin/sh\necho Grüße ✓\n".encode()  # bytes beyond ASCII, kept as sent
    ask = {"name": "alpha", "request_id": "r-alpha", "user_data": script}
    w = site.stubs.create(**ask)
    assert w.nics[0].ip.startswith("192.168.122.")
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert site.stubs.create(**ask).id == w.id  # idempotent
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    again = site.stubs.create(name="beta", request_id="r-beta")
    assert again.nics[0].ip == w.nics[0].ip  # the address came back to the pool


def test_the_blob_collections_check_under_the_lock_finds_what_uses_a_blob(
    pg_site: Site,
) -> None:
    """The collection's look under the write lock (ops/images.py) reads only the images
    and live workspaces whose columns name a blob (a LIKE on their JSON as text): on
    PostgreSQL too it finds a partition's and a kernel's blob, and a live workspace's
    (which its image names too), and not one nothing uses."""
    site = pg_site
    # The module's database is shared with the test above: names of its own.
    site.stubs.network("coll", subnet="192.168.123.0/24")
    site.stubs.import_image("coll-img")
    site.add_agent("node1", networks=[{"name": "coll"}])
    w = site.stubs.create(name="coll", image="coll-img", networks=["coll"])
    root, kernel, unused = (site.stubs.upload(bytes([i]) * 4096) for i in (1, 2, 3))
    assert site.service is not None
    catalog = site.service.catalog.catalog
    catalog.import_image(
        site.cfg.default_owner,
        ImageSpec("k:1", (Partition("root", Mode.COW, root, "raw"),), kernel),
    )
    with catalog.env.store.read() as s:
        used = bound_spec(s.get(Workspace, w.id)).digests()  # type: ignore[arg-type]
        assert images_ops._referencing(s, {root, kernel, unused, *used}) == {
            root,
            kernel,
            *used,
        }
