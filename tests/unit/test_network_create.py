"""`ws-admin network create`: two networks share neither a bridge nor addresses (a real
SQLite store, the operations; no gRPC)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import NetworkInfo
from workspace.errors import AlreadyExists, InvalidArgument
from workspace.ops import networks
from workspace.store import Network


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


def test_a_vlan_is_one_networks(site: Site) -> None:
    """One VLAN is one segment: two DHCP servers and gateways would share it."""
    env = site.core.env
    networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24", vlan=78))
    with pytest.raises(AlreadyExists, match="VLAN 78 is network lab's already"):
        networks.create_network(env, NetworkInfo("lab2", "10.62.0.0/24", vlan=78))
    networks.create_network(env, NetworkInfo("lab3", "10.63.0.0/24", vlan=79))
    networks.create_network(env, NetworkInfo("flat", "10.64.0.0/24"))  # untagged: no VLAN
    assert names(site) == ["default", "flat", "lab", "lab3", "storage"]


@pytest.mark.parametrize(
    ("dns", "says"),
    [
        ("10.61.0.7", "is in the range workspaces' addresses are given from"),
        ("127.0.0.1", "is not a unicast address a guest can ask"),
        ("224.0.0.1", "is not a unicast address a guest can ask"),
        ("255.255.255.255", "is not a unicast address a guest can ask"),
        ("0.0.0.0", "is not a unicast address a guest can ask"),
        ("::1", "is an IPv6 address"),
        ("10.61.0.255", "is the subnet's network or broadcast address"),
    ],
)
def test_a_dns_server_a_guest_cannot_or_should_not_ask_is_refused(
    site: Site, dns: str, says: str
) -> None:
    env = site.core.env
    with pytest.raises(InvalidArgument, match=f"DNS server '{dns}' {says}"):
        networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24", dns=(dns,)))
    assert names(site) == ["default", "storage"]


def test_dns_servers_off_the_range_are_taken_and_the_range_cannot_grow_over_them(
    site: Site,
) -> None:
    env = site.core.env
    got = networks.create_network(
        env,
        NetworkInfo(
            "lab", "10.61.0.0/24", range_start="10.61.0.2", range_end="10.61.0.200",
            dns=("10.61.0.1", "10.61.0.253", "192.0.2.53"),
        ),
    )  # fmt: skip
    assert list(got.dns) == ["10.61.0.1", "10.61.0.253", "192.0.2.53"]
    with pytest.raises(InvalidArgument, match=r"DNS server '10\.61\.0\.253' is in the range"):
        networks.update_network(env, "lab", addresses=("10.61.0.2", "10.61.0.254"))
    (lab,) = [n for n in networks.list_networks(env) if n.name == "lab"]
    assert (lab.range_start, lab.range_end) == ("10.61.0.2", "10.61.0.200")


@pytest.mark.parametrize(
    ("subnet", "what"),
    [("127.0.0.0/24", "loopback"), ("224.1.0.0/24", "multicast"), ("169.254.0.0/24", "link-local")],
)
def test_a_subnet_no_guest_can_have_is_refused(site: Site, subnet: str, what: str) -> None:
    """Each node would hold the gateway (here 127.0.0.1) on the network's bridge."""
    with pytest.raises(InvalidArgument, match=f"subnet {subnet} is {what}"):
        networks.create_network(site.core.env, NetworkInfo("lab", subnet))
    assert names(site) == ["default", "storage"]


def test_a_range_of_the_gateway_alone_is_refused(site: Site) -> None:
    env = site.core.env
    with pytest.raises(InvalidArgument, match="holds no address but the gateway's"):
        networks.create_network(
            env,
            NetworkInfo("lab", "10.61.0.0/24", range_start="10.61.0.1", range_end="10.61.0.1"),
        )
    assert names(site) == ["default", "storage"]
    networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24"))
    with pytest.raises(InvalidArgument, match="holds no address but the gateway's"):
        networks.update_network(env, "lab", addresses=("10.61.0.1", "10.61.0.1"))
    [lab] = [n for n in networks.list_networks(env) if n.name == "lab"]
    assert (lab.range_start, lab.range_end) == ("10.61.0.2", "10.61.0.254")


def test_the_gateway_inside_the_range_may_be_the_dns_server(site: Site) -> None:
    """A gateway given at the top of the subnet sits inside the default range (it is
    skipped when addresses are given): the refusal of a DNS server in the range told
    the admin to give the gateway, and then refused the gateway too."""
    env = site.core.env
    made = networks.create_network(
        env, NetworkInfo("lab", "10.61.0.0/24", gateway="10.61.0.254", dns=("10.61.0.254",))
    )
    assert made.dns == ("10.61.0.254",) and made.range_end == "10.61.0.254"
    networks.update_network(env, "lab", dns=("10.61.0.254", "10.9.9.9"))
    with pytest.raises(InvalidArgument, match=r"10\.61\.0\.253' is in the range"):
        networks.update_network(env, "lab", dns=("10.61.0.253",))


@pytest.mark.parametrize(
    ("dns", "says"),
    [
        (
            ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"),
            "4 DNS servers given, at most 3 (a guest's resolver asks the first 3 only",
        ),
        (("192.0.2.1", "2001:db8::53"), "DNS server '2001:db8::53' is an IPv6 address"),
        (("192.0.2.1", "192.0.2.1"), "DNS server '192.0.2.1' is given twice"),
    ],
)
def test_a_dns_list_no_guest_would_use_as_given_is_refused(
    site: Site, dns: tuple[str, ...], says: str
) -> None:
    """64 servers stopped every node's dnsmasq of the network ("dhcp-option too long");
    a fourth is never asked by a guest's resolver; an IPv6 one never answers (the nodes'
    filters drop a guest's IPv6), a guest's lookups waited for it."""
    env = site.core.env
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24", dns=dns))
    assert names(site) == ["default", "storage"]
    networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24", dns=("192.0.2.9",)))
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        networks.update_network(env, "lab", dns=dns)
    [lab] = [n for n in networks.list_networks(env) if n.name == "lab"]
    assert lab.dns == ("192.0.2.9",)


def test_a_range_change_keeps_a_dns_list_stored_before_the_bounds(site: Site) -> None:
    """The list's bounds apply to a list given: a network made before them keeps its
    servers through a change of its range."""
    env = site.core.env
    networks.create_network(env, NetworkInfo("lab", "10.61.0.0/24"))
    old = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "2001:db8::53"]
    with env.store.write() as s:
        row = s.get(Network, "lab")
        assert row is not None
        row.dns = old
    got = networks.update_network(env, "lab", addresses=("10.61.0.2", "10.61.0.100"))
    assert (got.range_end, list(got.dns)) == ("10.61.0.100", old)


@pytest.mark.parametrize(
    ("name", "bridge", "says"),
    [
        ("lab", "br 0", "network lab: bridge name 'br 0' is not an interface name: 1-15 letters"),
        ("lab", "b" * 16, "is not an interface name: 1-15 letters, digits, '_', '.' and '-'"),
        # Linux refuses these two (dev_valid_name): the agent could never make the bridge.
        ("lab", ".", "network lab: bridge name '.' is not an interface name: 1-15 letters"),
        (
            "lab",
            "..",
            "bridge name '..' is not an interface name: 1-15 letters, digits, '_', "
            "'.' and '-', not '.' or '..'",
        ),
        ("Lab", "", "network name 'Lab': 1-63 lowercase letters, digits and '-', starting with"),
        ("-lab", "", "network name '-lab': 1-63 lowercase letters"),
        ("l" * 64, "", "1-63 lowercase letters, digits and '-', starting with a letter or digit"),
    ],
)
def test_a_bad_name_or_bridge_says_what_a_good_one_is(
    site: Site, name: str, bridge: str, says: str
) -> None:
    """`ws-admin network create lab --bridge br0-of-the-lab` said only "bridge name
    'br0-of-the-lab' is not valid": not that an interface name has at most 15
    characters; a network name of 64 characters was told "lowercase letters, digits,
    '-'", which it was."""
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        networks.create_network(site.core.env, NetworkInfo(name, "10.61.0.0/24", bridge=bridge))
    assert names(site) == ["default", "storage"]
