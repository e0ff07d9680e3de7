"""pick_address_int (sorted integers from the store) agrees with pick_address."""

from __future__ import annotations

import netaddr
from hypothesis import given, settings
from hypothesis import strategies as st

from workspace.ipam import pick_address, pick_address_int, validate_network


@settings(max_examples=200, deadline=None)
@given(
    gw_offset=st.integers(min_value=1, max_value=30),
    used_offsets=st.sets(st.integers(min_value=1, max_value=30), max_size=30),
)
def test_same_answer_as_the_string_version(gw_offset: int, used_offsets: set[int]) -> None:
    pool = validate_network("n", "10.1.0.0/27", gateway=f"10.1.0.{gw_offset}")
    used = {f"10.1.0.{o}" for o in used_offsets}
    ints = sorted(int(netaddr.IPAddress(u)) for u in used)
    assert pick_address_int(pool, ints) == pick_address(pool, used)


def test_exhausted_pool() -> None:
    pool = validate_network("n", "10.1.0.0/29")
    ints = [int(netaddr.IPAddress(f"10.1.0.{i}")) for i in range(2, 7)]
    assert pick_address_int(pool, ints) is None
