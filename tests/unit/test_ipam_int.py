"""pick_address_int / pick_address: the lowest free address of a pool, checked against
hand-computed answers and against a brute-force reference written from the definition
("the lowest address of the range that is not the gateway and not used")."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.errors import InvalidArgument
from workspace.ipam import Pool, pick_address, pick_address_int, validate_network


def n(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def both(pool: Pool, used: set[str]) -> str | None:
    """The answer of the integer version, checked to equal the string version's."""
    got = pick_address_int(pool, sorted(n(u) for u in used))
    assert pick_address(pool, used) == got
    return got


def hosts(prefix: str, *last_octets: int) -> set[str]:
    return {f"{prefix}.{o}" for o in last_octets}


# -- hand-computed answers ------------------------------------------------------------


def test_empty_slash_29_gives_the_first_address_after_the_gateway() -> None:
    pool = validate_network("n", "10.1.0.0/29")  # gateway .1, range .2 - .6
    assert both(pool, set()) == "10.1.0.2"


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        ({2}, "10.1.0.3"),
        ({2, 3, 5}, "10.1.0.4"),  # the hole, not after the highest
        ({3, 4, 5, 6}, "10.1.0.2"),  # free at the start of the range
        ({2, 3, 4, 6}, "10.1.0.5"),
        ({2, 3, 4, 5}, "10.1.0.6"),  # the last address of the range
        ({2, 3, 4, 5, 6}, None),  # full
    ],
)
def test_slash_29_lowest_free_after_holes(used: set[int], expected: str | None) -> None:
    pool = validate_network("n", "10.1.0.0/29")
    assert both(pool, hosts("10.1.0", *used)) == expected


def test_exhausted_pool() -> None:
    pool = validate_network("n", "10.1.0.0/29")
    assert pick_address_int(pool, [n(f"10.1.0.{i}") for i in range(2, 7)]) is None


def test_gateway_inside_the_range_is_skipped() -> None:
    pool = validate_network("n", "10.1.0.0/29", gateway="10.1.0.4")  # range .1 - .6
    assert (pool.range_start, pool.range_end) == ("10.1.0.1", "10.1.0.6")
    assert both(pool, set()) == "10.1.0.1"
    assert both(pool, hosts("10.1.0", 1, 2, 3)) == "10.1.0.5"
    assert both(pool, hosts("10.1.0", 1, 2, 3, 5)) == "10.1.0.6"
    assert both(pool, hosts("10.1.0", 1, 2, 3, 5, 6)) is None  # the gateway is never given


def test_gateway_recorded_as_used_changes_nothing() -> None:
    pool = validate_network("n", "10.1.0.0/29", gateway="10.1.0.4")
    assert both(pool, hosts("10.1.0", 1, 2, 3, 4)) == "10.1.0.5"


def test_gateway_at_the_top_of_the_range() -> None:
    pool = validate_network("n", "10.1.0.0/29", gateway="10.1.0.6")  # range .1 - .6
    assert both(pool, hosts("10.1.0", 1, 2, 3, 4)) == "10.1.0.5"
    assert both(pool, hosts("10.1.0", 1, 2, 3, 4, 5)) is None


def test_network_and_broadcast_are_never_given() -> None:
    # /30: .0 network, .1 gateway, .2 the one host of the pool, .3 broadcast
    pool = validate_network("p2p", "10.9.9.0/30")
    assert both(pool, set()) == "10.9.9.2"
    assert both(pool, {"10.9.9.2"}) is None
    pool = validate_network("p2p", "10.9.9.0/30", gateway="10.9.9.2")  # range .1 - .2
    assert both(pool, set()) == "10.9.9.1"
    assert both(pool, {"10.9.9.1"}) is None


def test_slash_31_and_32_are_refused() -> None:
    for subnet in ("10.9.9.0/31", "10.9.9.0/32"):
        with pytest.raises(InvalidArgument, match="too small"):
            validate_network("p2p", subnet)


def test_used_addresses_outside_the_range_are_ignored() -> None:
    pool = validate_network("n", "10.1.0.0/16", "10.1.0.1", "10.1.5.10", "10.1.5.20")
    assert both(pool, set()) == "10.1.5.10"
    assert both(pool, {"10.1.0.50", "10.1.5.9", "10.1.5.10", "10.1.5.21"}) == "10.1.5.11"
    assert both(pool, {f"10.1.5.{i}" for i in range(10, 20)}) == "10.1.5.20"
    assert both(pool, {f"10.1.5.{i}" for i in range(10, 21)}) is None


def test_the_answer_crosses_an_octet_boundary() -> None:
    pool = validate_network("n", "10.0.0.0/23")  # gateway 10.0.0.1, range to 10.0.1.254
    # 10.0.1.0 and 10.0.0.255 are hosts of a /23, not network or broadcast addresses
    assert both(pool, {f"10.0.0.{i}" for i in range(2, 256)}) == "10.0.1.0"
    used = {f"10.0.0.{i}" for i in range(2, 256)} | {f"10.0.1.{i}" for i in range(0, 254)}
    assert both(pool, used) == "10.0.1.254"
    assert both(pool, used | {"10.0.1.254"}) is None


def test_the_top_of_the_address_space() -> None:
    pool = validate_network("n", "255.255.255.248/29", gateway="255.255.255.254")
    assert both(pool, hosts("255.255.255", 249, 250, 251, 252)) == "255.255.255.253"
    assert both(pool, hosts("255.255.255", 249, 250, 251, 252, 253)) is None


# -- against a reference written from the definition ----------------------------------


def reference(subnet: str, gateway: int, first: int, last: int, used: set[int]) -> str | None:
    net = ipaddress.IPv4Network(subnet)
    for value in range(first, last + 1):
        if value != gateway and value not in used:
            addr = ipaddress.IPv4Address(value)
            assert addr in net and addr not in (net.network_address, net.broadcast_address)
            return str(addr)
    return None


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.integers(min_value=26, max_value=30),
    gw_offset=st.integers(min_value=1, max_value=62),
    range_offsets=st.tuples(st.integers(1, 62), st.integers(1, 62)),
    explicit_range=st.booleans(),
    used_offsets=st.sets(st.integers(min_value=0, max_value=63), max_size=64),
)
def test_same_answer_as_the_reference(
    prefix: int,
    gw_offset: int,
    range_offsets: tuple[int, int],
    explicit_range: bool,
    used_offsets: set[int],
) -> None:
    subnet = f"10.1.0.0/{prefix}"
    top = 2 ** (32 - prefix) - 2  # the highest host offset
    gw = 1 + (gw_offset - 1) % top
    lo, hi = sorted(1 + (o - 1) % top for o in range_offsets)
    kwargs = {"range_start": f"10.1.0.{lo}", "range_end": f"10.1.0.{hi}"} if explicit_range else {}
    pool = validate_network("n", subnet, gateway=f"10.1.0.{gw}", **kwargs)
    used = {f"10.1.0.{o}" for o in used_offsets}
    expected = reference(
        subnet,
        n(pool.gateway),
        n(pool.range_start),
        n(pool.range_end),
        {n(u) for u in used},
    )
    assert pick_address_int(pool, sorted(n(u) for u in used)) == expected
    assert pick_address(pool, used) == expected
