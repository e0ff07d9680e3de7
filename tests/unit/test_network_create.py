"""`ws-admin network create`: two networks share neither a bridge nor addresses (a real
SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import NetworkInfo
from workspace.errors import AlreadyExists, InvalidArgument
from workspace.ops import networks


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path, subnet="10.213.0.0/16")  # and storage, 10.9.0.0/24


def names(site: Site) -> list[str]:
    return [n.name for n in networks.list_networks(site.core.env)]


@pytest.mark.parametrize(
    ("subnet", "other"),
    [
        ("10.213.0.0/16", "default"),  # the same
        ("10.213.7.0/24", "default"),  # inside
        ("10.208.0.0/12", "default"),  # around
        ("10.9.0.128/25", "storage"),
    ],
)
def test_an_overlapping_subnet_is_refused(site: Site, subnet: str, other: str) -> None:
    with pytest.raises(InvalidArgument, match=f"overlaps network {other}'s"):
        networks.create_network(site.core.env, NetworkInfo("lab", subnet))
    assert names(site) == ["default", "storage"]


def test_a_bridge_is_one_networks(site: Site) -> None:
    taken = networks.list_networks(site.core.env)[0].bridge
    with pytest.raises(AlreadyExists, match=f"bridge {taken} is network default's"):
        networks.create_network(site.core.env, NetworkInfo("lab", "10.61.0.0/24", bridge=taken))
    assert names(site) == ["default", "storage"]


def test_long_names_get_bridges_of_their_own(site: Site) -> None:
    """Cut to 15 characters, both once got wsbr-physics-ne."""
    env = site.core.env
    a = networks.create_network(env, NetworkInfo("physics-network-long", "10.70.0.0/24"))
    b = networks.create_network(env, NetworkInfo("physics-network-b", "10.71.0.0/24"))
    short = networks.create_network(env, NetworkInfo("lab", "10.72.0.0/24"))
    assert a.bridge != b.bridge and all(len(n.bridge) <= 15 for n in (a, b))
    assert a.bridge.startswith("wsbr-physi") and short.bridge == "wsbr-lab"
