"""The whole service on PostgreSQL (the ``pg_url`` fixture, tests/conftest.py): a site whose
``database_url`` is a PostgreSQL database runs a workspace's life as on SQLite, on a
192.168 pool (above 128.0.0.0: 64-bit ``ip_int``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import WS, Site


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
