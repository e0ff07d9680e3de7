"""Image names are case-sensitive on every store: ``App`` and ``app`` are two NAMEs.

SQLite's LIKE ignores ASCII case, PostgreSQL's does not: the NAME checks (another
owner's or project's NAME; the versions a refusal names) must not use it, or a NAME
would be taken, and versions named, on SQLite only."""

from __future__ import annotations

from pathlib import Path

import pytest

from images.model import ImageSpec, Mode, Partition
from workspace.config import ServiceConfig, load
from workspace.errors import NotFound
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog
from workspace.ops.unit import Env
from workspace.store import Store
from workspace.store.blobs import BlobRepository


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path))
    env = Env.of(cfg, Store(f"sqlite:///{tmp_path}/db.sqlite"), Notifier())
    return Catalog(env, BlobRepository(tmp_path / "blobs"))


def _push(c: Catalog, who: str, name: str, fill: int) -> None:
    digest, _ = c.upload_blob([bytes([fill]) * 4096], who)
    c.import_image(who, ImageSpec(name, (Partition("root", Mode.COW, digest, format="raw"),)))


def test_a_name_differing_only_in_case_is_another_name(catalog: Catalog) -> None:
    _push(catalog, "alice", "App:1", 1)
    _push(catalog, "bob", "app:1", 2)  # was refused: "its NAME is another project's"
    assert catalog.get_image("bob", "app:1").owner == "bob"


def test_a_refusal_names_only_versions_of_that_very_name(catalog: Catalog) -> None:
    _push(catalog, "alice", "App:1", 1)
    with pytest.raises(NotFound) as err:
        catalog.get_image("alice", "app")
    assert "App:1" not in err.value.message
    with pytest.raises(NotFound) as err:
        catalog.get_image("alice", "App")
    assert "App:1" in err.value.message
