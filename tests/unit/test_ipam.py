"""IP pool arithmetic (workspace/ipam)."""

from __future__ import annotations

import random
import re

import pytest

from workspace.errors import InvalidArgument
from workspace.ipam import Pool, check_usable, make_mac, pick_address, pool_size, validate_network

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# -- validate_network -----------------------------------------------------------------


def test_defaults_for_a_slash_24() -> None:
    pool = validate_network("lab", "10.0.0.0/24")
    assert pool == Pool("10.0.0.0/24", "10.0.0.1", "10.0.0.2", "10.0.0.254", "52:54:00")
    assert pool.prefix_len == 24


def test_range_defaults_to_every_host_around_an_explicit_gateway() -> None:
    pool = validate_network("lab", "192.168.7.0/24", gateway="192.168.7.100")
    assert (pool.gateway, pool.range_start, pool.range_end) == (
        "192.168.7.100",
        "192.168.7.1",
        "192.168.7.254",
    )
    assert pool_size(pool) == 253  # every host but the gateway
    assert pick_address(pool, set()) == "192.168.7.1"


def test_gateway_at_the_top_of_the_subnet_needs_no_explicit_range() -> None:
    pool = validate_network("top", "10.0.0.0/24", gateway="10.0.0.254")
    assert (pool.range_start, pool.range_end) == ("10.0.0.1", "10.0.0.254")
    assert pick_address(pool, {f"10.0.0.{i}" for i in range(1, 254)}) is None


def test_explicit_range_and_mac_prefix_kept() -> None:
    pool = validate_network(
        "lab", "10.1.0.0/16", "10.1.0.1", "10.1.5.10", "10.1.5.20", mac_prefix="02:AB:cd"
    )
    assert pool == Pool("10.1.0.0/16", "10.1.0.1", "10.1.5.10", "10.1.5.20", "02:ab:cd")


def test_smallest_accepted_subnet_is_slash_30() -> None:
    pool = validate_network("p2p", "10.9.9.0/30")
    assert (pool.gateway, pool.range_start, pool.range_end) == ("10.9.9.1", "10.9.9.2", "10.9.9.2")
    assert pool_size(pool) == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"subnet": "not-a-network"}, r"'not-a-network' is not a CIDR"),
        ({"subnet": "10.0.0.0/33"}, r"is not a CIDR"),
        ({"subnet": "fd00::/64"}, r"only IPv4"),
        ({"subnet": "10.0.0.0/31"}, r"too small"),
        ({"subnet": "10.0.0.5/32"}, r"too small"),
        ({"subnet": "10.0.0.7/24"}, r"host bits set; use 10\.0\.0\.0/24"),
        ({"subnet": "10.0.0.0/8"}, r"larger than 1048576 addresses; give a smaller .*--range"),
        ({"gateway": "10.0.1.1"}, r"gateway 10\.0\.1\.1 is not a host of 10\.0\.0\.0/24"),
        ({"gateway": "10.0.0.0"}, r"gateway 10\.0\.0\.0 is not a host"),
        ({"gateway": "10.0.0.255"}, r"gateway 10\.0\.0\.255 is not a host"),
        ({"gateway": "gw"}, r"gateway 'gw' is not an address"),
        ({"gateway": "fd00::1"}, r"gateway fd00::1 is not an IPv4 address \(pools are IPv4"),
        ({"range_start": "::ffff:10.0.0.5"}, r"range start ::ffff:10\.0\.0\.5 is not an IPv4"),
        ({"range_end": "fd00::ff"}, r"range end fd00::ff is not an IPv4 address"),
        ({"range_start": "10.0.0.200", "range_end": "10.0.0.100"}, r"range .* is empty"),
        ({"range_end": "10.0.0.255"}, r"range end 10\.0\.0\.255 is not a host"),
        ({"range_start": "192.168.0.10"}, r"range start .* is not a host"),
        ({"mac_prefix": "52:54"}, r"MAC prefix '52:54' must be 3 hex octets"),
        ({"mac_prefix": "52:54:00:01"}, r"must be 3 hex octets"),
        ({"mac_prefix": "52:5g:00"}, r"must be 3 hex octets"),
        ({"mac_prefix": "5:54:000"}, r"must be 3 hex octets"),
        ({"mac_prefix": "01:00:5e"}, r"multicast"),
        ({"mac_prefix": "03:00:00"}, r"multicast"),
    ],
)
def test_invalid_networks_refused(kwargs: dict[str, str], pattern: str) -> None:
    args = {"subnet": "10.0.0.0/24", **kwargs}
    with pytest.raises(InvalidArgument, match=pattern) as exc:
        validate_network("lab", **args)
    assert "network lab" in exc.value.message


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        # Addresses a guest cannot have: the node would hold the "gateway" on its bridge.
        ({"subnet": "127.0.0.0/24"}, r"127\.0\.0\.0/24 is loopback"),
        ({"subnet": "224.0.0.0/24"}, r"224\.0\.0\.0/24 is multicast"),
        ({"subnet": "169.254.0.0/16"}, r"169\.254\.0\.0/16 is link-local"),
        ({"subnet": "240.0.0.0/24"}, r"240\.0\.0\.0/24 is reserved"),
        ({"subnet": "0.0.0.0/24"}, r"0\.0\.0\.0/24 is reserved"),
        ({"subnet": "255.255.255.248/29"}, r"is reserved \(it overlaps 240\.0\.0\.0/4\)"),
        ({"subnet": "127.255.255.0/24"}, r"127\.255\.255\.0/24 is loopback"),
        # A range of the gateway alone gives no workspace an address.
        ({"range_start": "10.0.0.1", "range_end": "10.0.0.1"}, r"but the gateway"),
        (
            {"gateway": "10.0.0.9", "range_start": "10.0.0.9", "range_end": "10.0.0.9"},
            r"range 10\.0\.0\.9-10\.0\.0\.9 holds no address but the gateway",
        ),
    ],
)
def test_pools_that_serve_no_guest_refused(kwargs: dict[str, str], pattern: str) -> None:
    args = {"subnet": "10.0.0.0/24", **kwargs}
    with pytest.raises(InvalidArgument, match=pattern) as exc:
        check_usable("lab", validate_network("lab", **args))
    assert "network lab" in exc.value.message


def test_big_private_pools_serve_guests() -> None:
    for subnet in ("172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/30"):
        check_usable("lab", validate_network("lab", subnet))
    check_usable("lab", validate_network("lab", "10.0.0.0/8", range_end="10.15.255.254"))
    # Too many for one range: the refusal says how to make the network all the same.
    with pytest.raises(InvalidArgument, match=r"give a smaller one \(--range START-END\)"):
        validate_network("lab", "10.0.0.0/8")


# -- pick_address ---------------------------------------------------------------------


def test_pick_lowest_free() -> None:
    pool = validate_network("lab", "10.0.0.0/24")
    assert pick_address(pool, set()) == "10.0.0.2"
    assert pick_address(pool, {"10.0.0.2", "10.0.0.3"}) == "10.0.0.4"
    # A hole left by a released address is reused first.
    assert pick_address(pool, {"10.0.0.2", "10.0.0.4"}) == "10.0.0.3"


def test_pick_skips_gateway_inside_range() -> None:
    pool = validate_network("lab", "10.0.0.0/29", range_start="10.0.0.1")
    assert pool.gateway == "10.0.0.1"
    assert pick_address(pool, set()) == "10.0.0.2"


def test_pick_ignores_used_addresses_outside_range() -> None:
    pool = validate_network("lab", "10.0.0.0/24", range_start="10.0.0.50", range_end="10.0.0.51")
    assert pick_address(pool, {"10.0.0.2", "10.0.0.3"}) == "10.0.0.50"


def test_pick_none_when_exhausted() -> None:
    pool = validate_network("lab", "10.0.0.0/29")  # .2 .. .6
    used: set[str] = set()
    while (ip := pick_address(pool, used)) is not None:
        assert ip not in used
        used.add(ip)
        assert len(used) <= 5
    assert used == {f"10.0.0.{i}" for i in range(2, 7)}
    assert pick_address(pool, used) is None


# -- make_mac / pool_size -------------------------------------------------------------


def test_make_mac_keeps_prefix_and_is_unicast() -> None:
    rng = random.Random(7)
    for prefix in ("52:54:00", "02:ab:cd", "fe:00:01"):
        for _ in range(50):
            mac = make_mac(prefix, rng)
            assert MAC_RE.match(mac), mac
            assert mac.startswith(prefix + ":")
            assert int(mac[:2], 16) & 1 == 0


def test_make_mac_varies_and_is_reproducible_with_a_seed() -> None:
    macs = {make_mac("52:54:00") for _ in range(50)}
    assert len(macs) > 40
    assert make_mac("52:54:00", random.Random(1)) == make_mac("52:54:00", random.Random(1))


@pytest.mark.parametrize(
    ("subnet", "kwargs", "size"),
    [
        ("10.0.0.0/24", {}, 253),
        ("10.0.0.0/29", {}, 5),
        ("10.0.0.0/30", {}, 1),
        ("10.0.0.0/24", {"range_start": "10.0.0.1", "range_end": "10.0.0.10"}, 9),
        ("10.0.0.0/24", {"range_start": "10.0.0.20", "range_end": "10.0.0.29"}, 10),
        ("10.0.0.0/16", {}, 65533),
    ],
)
def test_pool_size(subnet: str, kwargs: dict[str, str], size: int) -> None:
    assert pool_size(validate_network("lab", subnet, **kwargs)) == size


@pytest.mark.parametrize("subnet", ["10.0.0.0/30", "10.0.0.0/29", "10.0.0.0/27"])
@pytest.mark.parametrize("range_start", ["", "10.0.0.1"])
def test_pool_size_matches_addresses_handed_out(subnet: str, range_start: str) -> None:
    pool = validate_network("lab", subnet, range_start=range_start)
    used: set[str] = set()
    while (ip := pick_address(pool, used)) is not None:
        used.add(ip)
    assert len(used) == pool_size(pool)
    assert pool.gateway not in used
