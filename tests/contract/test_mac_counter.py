# ruff: noqa: F811 - the fixtures imported from test_store_engines are parameters here
"""MACs come from a counter per MAC prefix (store/macs.py), on both engines: in order,
never twice (under concurrent creates, and through several replicas on PostgreSQL),
after a restart too; starting above MACs handed out before the counter; skipping one
taken anyway (after the counter wrapped, or set by hand)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.contract.store_world import OWNER, World
from tests.contract.test_store_engines import (  # noqa: F401 - fixtures
    MakeUrl,
    batched,
    hammer,
    make_url,
    standard,
    world,
)
from workspace import ipam
from workspace.domain.states import Op
from workspace.store import IpAllocation
from workspace.store.models import MacCounter

PREFIX = "52:54:00"


def counter(w: World, prefix: str = PREFIX) -> int | None:
    with w.store.read() as s:
        return s.execute(select(MacCounter.next).where(MacCounter.prefix == prefix)).scalar()


def set_counter(w: World, n: int, prefix: str = PREFIX) -> None:
    with w.store.write() as s:
        s.execute(update(MacCounter).where(MacCounter.prefix == prefix).values(next=n))


def suffix(ws: object) -> int:
    return ipam.mac_suffix(ws.nics[0].mac)  # type: ignore[attr-defined]


def macs(w: World) -> list[str]:
    with w.store.read() as s:
        return list(s.execute(select(IpAllocation.mac)).scalars())


def test_macs_are_drawn_in_order_and_the_counter_survives_a_restart(
    make_url: MakeUrl, tmp_path: Path
) -> None:
    url = make_url()
    first = World(tmp_path / "a", url)
    try:
        standard(first)
        a, b = first.create("a"), first.create("b")
        assert [a.nics[0].mac, b.nics[0].mac] == [f"{PREFIX}:00:00:00", f"{PREFIX}:00:00:01"]
        assert counter(first) == 2
        first.core.operate(OWNER, a.id, Op.DESTROY)
        first.absent("n0", a.id)  # its address and MAC are free again
    finally:
        first.close()
    again = World(tmp_path / "b", url)  # the service restarted
    try:
        c = again.create("c")
        assert suffix(c) == 2  # after b's, not a's again
        assert counter(again) == 3
        again.snapshot().check()
    finally:
        again.close()


def test_the_counter_starts_above_macs_handed_out_before_it(world: World) -> None:
    """A site upgraded with random MACs: the prefix has no counter row yet; the first MAC
    drawn is above the highest of the prefix (another prefix's do not count)."""
    standard(world)
    a = world.create("a")
    with world.store.write() as s:
        s.execute(update(IpAllocation).values(mac=f"{PREFIX}:7f:00:10"))
        s.add(
            IpAllocation(
                network="default",
                ip="10.20.0.200",
                ip_int=0,
                mac="52:55:00:ff:ff:ff",
                workspace_id=a.id,
                nic_index=1,
            )
        )
        s.execute(MacCounter.__table__.delete())
    b = world.create("b")
    assert b.nics[0].mac == f"{PREFIX}:7f:00:11"
    assert counter(world) == 0x7F0012


def test_a_mac_taken_outside_the_counter_is_skipped_and_the_counter_wraps(world: World) -> None:
    standard(world)
    a = world.create("a")  # 52:54:00:00:00:00
    set_counter(world, ipam.MAC_SUFFIXES - 1)  # the last suffix; then 0 (a's) again
    b, c = world.create("b"), world.create("c")
    assert [suffix(a), suffix(b), suffix(c)] == [0, ipam.MAC_SUFFIXES - 1, 1]  # 0 skipped
    assert counter(world) == ipam.MAC_SUFFIXES + 2
    with world.store.write() as s:  # a MAC the counter has not reached, set by hand
        s.execute(
            update(IpAllocation)
            .where(IpAllocation.workspace_id == a.id)
            .values(mac=f"{PREFIX}:00:00:02")
        )
    d = world.create("d")
    assert suffix(d) == 3
    world.snapshot().check()


def test_networks_sharing_a_prefix_share_its_counter(world: World) -> None:
    """MACs are unique across networks: two networks of one prefix draw from one counter."""
    standard(world)
    world.network("10.30.0.0/24", name="second")
    world.node("n1", cpus=64, memory_mib=65536, networks=("default", "second"))
    made = [
        world.create("a", networks=["default"]),
        world.create("b", networks=["second"]),
        world.create("c", networks=["default", "second"]),
    ]
    got = sorted(ipam.mac_suffix(n.mac) for w in made for n in w.nics)
    assert got == [0, 1, 2, 3]
    world.snapshot().check()


def test_a_batch_draws_each_mac_once_even_when_a_create_is_refused(world: World) -> None:
    """One batch (one counter read, one write): a create rolled back after drawing leaves
    a gap, never a MAC twice."""
    standard(world, "192.168.9.0/28", nodes=1, memory=4000)
    got = batched(
        world,
        {
            "a": {"memory_mib": 256},
            "two-nics-dup": {"memory_mib": 256, "networks": ["default", "default"]},
            "b": {"memory_mib": 256},
            "too-big": {"memory_mib": 8000},
            "c": {"memory_mib": 256},
        },
    )
    placed = [w for w in got.values() if not isinstance(w, Exception)]
    assert len(placed) == 4  # the leader, a, b, c
    assert len({w.nics[0].mac for w in placed}) == 4
    top = max(suffix(w) for w in placed)
    assert (counter(world) or 0) > top
    world.snapshot().check()


def test_macs_stay_unique_under_concurrent_creates_and_replicas(
    make_url: MakeUrl, tmp_path: Path
) -> None:
    """Sixteen threads creating at once (group commits), through three replicas on
    PostgreSQL (the advisory lock serialises their writers): every MAC once, all of the
    counter's prefix, the counter above every one of them."""
    url = make_url()
    first = World(tmp_path / "r0", url)
    worlds = (
        [first] if url.startswith("sqlite") else [first, first.replica("r1"), first.replica("r2")]
    )
    try:
        standard(first, "10.40.0.0/22", nodes=2)
        rnd = random.Random(3)
        plans = [[rnd.choice((128, 256)) for _ in range(6)] for _ in range(16)]
        acked, refused = hammer(worlds, plans)
        assert len(acked) == 96 and refused == 0
        snap = first.snapshot()
        snap.check()  # no MAC, address or claim twice
        found = macs(first)
        assert len(found) == 96 and all(m.startswith(PREFIX + ":") for m in found)
        assert (counter(first) or 0) > max(ipam.mac_suffix(m) for m in found)
    finally:
        for w in worlds:
            w.close()


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, ipam.MAC_SUFFIXES - 1])
def test_mac_of_and_mac_suffix_agree(n: int) -> None:
    mac = ipam.mac_of("02:aa:bb", n)
    assert len(mac) == 17 and mac.startswith("02:aa:bb:")
    assert ipam.mac_suffix(mac) == n
    assert ipam.mac_of("02:aa:bb", n + ipam.MAC_SUFFIXES) == mac  # past the last: again
