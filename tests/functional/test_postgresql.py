"""The whole service on PostgreSQL (the ``pg_url`` fixture, tests/conftest.py): a site whose
``database_url`` is a PostgreSQL database runs a workspace's life as on SQLite, on a
192.168 pool (above 128.0.0.0: 64-bit ``ip_int``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine

from images.model import ImageSpec, Mode, Partition
from tests.functional.harness import WS, Site, wait_for
from tests.pg import USER as PG_USER
from tests.pg import PgServer
from workspace.ops import images as images_ops
from workspace.store import Workspace, engines, migrations
from workspace.store.engines import MAX_OVERFLOW, POOL_SIZE
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


REPO = Path(__file__).resolve().parents[2]


def test_a_replica_holds_the_database_connections_the_docs_say(tmp_path: Path, pg_db: str) -> None:
    """An admin sizes PostgreSQL's max_connections by the README ("Each replica holds up
    to N database connections") and store.md: the store's pool at most, and the sessions
    the replica holds beside it, as pg_stat_activity names them."""
    site = Site(tmp_path, database_url=pg_db)
    try:
        site.stubs.network(subnet="192.168.124.0/24")  # a change: the NOTIFY session opens
        pool = f"workspace-service {os.getpid()}"

        def beside_the_pool() -> list[str]:
            with psycopg.connect(pg_db.replace("+psycopg", ""), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
            return sorted(name for (name,) in rows if name != pool)

        def all_four() -> list[str] | None:
            names = beside_the_pool()
            return names if len(names) >= 4 else None

        names = wait_for(all_four, 30, "its own sessions")
    finally:
        site.close()
    assert names[:3] == [
        f"workspace-service leader {os.getpid()}",
        "workspace-service listen",
        "workspace-service notify",
    ]
    assert names[3].startswith("workspace-service replica ") and len(names) == 4
    held = POOL_SIZE + MAX_OVERFLOW + len(names)
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"Each replica holds up to {held} database connections" in readme
    store = " ".join((REPO / "docs/design/store.md").read_text().split())
    assert (
        f"{held} database connections" in store
        and f"at least {held} \N{MULTIPLICATION SIGN} N" in store
    )


def test_a_role_that_may_not_create_the_tables_is_one_line_saying_what_to_do(
    pg_server: PgServer, pg_db: str
) -> None:
    """The README's database (`postgresql://workspace@db/workspace`), made by the
    superuser with `createdb workspace`, is not the role's: on PostgreSQL 15 the role may
    not create tables in its schema public. The service's start ended with "cannot start:
    store migration failed: (Background on this error at: https://sqlalche.me/e/…)",
    SQLAlchemy's last line, the reason only among a hundred lines of traceback above it."""
    pg_server.sql("DROP ROLE IF EXISTS ws_no_create")
    pg_server.sql("CREATE ROLE ws_no_create LOGIN")
    url = pg_db.replace(f"postgresql://{PG_USER}@", "postgresql://ws_no_create@")
    engine = create_engine(engines.normalize_url(url))
    try:
        with pytest.raises(RuntimeError) as caught:
            migrations.upgrade_in_child(engine)
    finally:
        engine.dispose()
    said = str(caught.value)
    assert said.startswith("store migration failed: permission denied for schema public")
    assert "`createdb -O ROLE DB`" in said and "sqlalche.me" not in said, said
