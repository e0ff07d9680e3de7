from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.harness import Site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ready_site(site: Site) -> Site:
    """A site with one node, the default network and an image named `img`."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1")
    return site
