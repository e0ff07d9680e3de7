# ruff: noqa: F811 - the fixtures imported from test_store_engines are parameters here
"""What a create reuses across transactions stays right when anything else writes: a
node's orders bound (ops/order_size.py, validated by ``Node.orders_gen``,
store/orders_gen.py), the trust policy (ops/trust.py, validated by its version), the
networks and images (store/held.py, validated by the catalog generation). On
both engines; the "other replica" is a second store (engine) on the same database."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.contract.store_world import OWNER, World
from tests.contract.test_store_engines import (  # noqa: F401 - fixtures
    batched,
    make_url,
    standard,
    world,
)
from workspace.domain.states import Op
from workspace.errors import AlreadyExists, NotFound, ResourceExhausted
from workspace.ops import order_size, placement, trust, trust_admin
from workspace.store import Node, Workspace, orders_gen
from workspace.store.models import Image, ImageSignature, Network

SHA = "sha256:" + "ab" * 32


@pytest.fixture
def other(world: World) -> Iterator[World]:
    o = world.replica("other")
    try:
        yield o
    finally:
        o.close()


def bound(w: World, node: str = "n0") -> tuple[int, int]:
    """(the bound as a create sees it, possibly cached; the bound summed afresh)."""
    with w.store.read() as s:
        return order_size.node_bound(s, node), order_size.node_orders_bytes(s, node)


def test_a_create_leaves_the_node_s_bound_cached_at_its_new_generation(world: World) -> None:
    standard(world)
    world.create("a", memory_mib=128)
    world.create("b", memory_mib=128)
    with world.store.read() as s:
        gen = s.execute(select(Node.orders_gen).where(Node.name == "n0")).scalar_one()
        fresh = order_size.node_orders_bytes(s, "n0")
    cached = order_size._cached_for(world.store.engine)
    hits = [v for k, v in cached.items() if k[0] == "n0"]
    assert hits and hits[0][0] == gen
    assert hits[0][1] >= fresh  # the running total: an upper bound, as summed afresh
    assert bound(world)[0] == hits[0][1]  # reused, not summed again


def test_another_replica_s_writes_invalidate_the_cached_bound(world: World, other: World) -> None:
    """A create, a change of a workspace (any module's ORM write), a signature and a
    destroy made through another store: the next create's bound is the fresh one."""
    standard(world)
    world.create("a", memory_mib=128)
    before, _ = bound(world)
    other.create("b", memory_mib=128)
    got, fresh = bound(world)
    assert got == fresh and got > before
    with other.store.write() as s:
        ws = s.execute(select(Workspace).where(Workspace.name == "b")).scalar_one()
        ws.name = "b" * 60
    got, fresh = bound(world)
    assert got == fresh and got > before
    with other.store.write() as s:
        s.add(ImageSignature(image="img", envelope="e" * 4000))
    got2, fresh = bound(world)
    assert got2 == fresh and got2 >= got + 2 * 4000  # both workspaces carry it
    with other.store.write() as s:
        for ws in s.execute(select(Workspace)).scalars():
            ws.state = "TERMINATED"
    got, fresh = bound(world)
    assert got == fresh and got < got2


def test_a_batch_with_a_refused_create_caches_what_was_committed(world: World) -> None:
    """A create refused in a batch (its SAVEPOINT rolled back) leaves the others' total
    right: the cached bound is the committed one's upper bound, and the limit holds."""
    standard(world, "10.41.0.0/24", nodes=1)
    world.create("first", memory_mib=128)
    one = bound(world)[1]
    cfg = world.env.cfg
    limits = dataclasses.replace(cfg.limits, max_node_orders_bytes=one * 3 + one // 2)
    world.core.env = dataclasses.replace(world.env, cfg=dataclasses.replace(cfg, limits=limits))
    got = batched(world, {"huge": {"memory_mib": 200_000}, "y0": {"memory_mib": 128}})
    assert isinstance(got["huge"], ResourceExhausted)
    cached, fresh = bound(world)
    assert fresh <= cached <= fresh + 64  # running totals vs one sum: the same order
    with pytest.raises(ResourceExhausted):  # "first", "lead", "y0": no room for a 4th
        world.create("z", memory_mib=128)


def test_another_replica_s_trust_change_reaches_the_cached_policy(
    world: World, other: World
) -> None:
    standard(world)
    with world.store.read() as s:
        first = trust.policy(s)
        assert trust.policy(s) is first  # cached at its version
    trust_admin.revoke_digest(other.env, SHA)
    with world.store.read() as s:
        now = trust.policy(s)
    assert SHA in now.revoked_digests and now.version == first.version + 1
    trust_admin.set_mode(other.env, enforce=True, stop_on_revoke=False)
    with world.store.read() as s:
        assert trust.policy(s).enforce


def test_networks_and_images_a_create_keeps_follow_any_writer(world: World, other: World) -> None:
    """The network and image rows a service keeps between creates (store/held.py): a
    change made through another replica, or through this one, reaches the next create."""
    standard(world, "10.42.0.0/24")
    first = world.create("a")
    assert ipaddress.ip_address(first.nics[0].ip) < ipaddress.ip_address("10.42.0.100")
    with other.store.write() as s:  # another replica narrows the pool
        net = s.get(Network, "default")
        assert net is not None
        net.range_start = "10.42.0.100"
    assert world.create("b").nics[0].ip == "10.42.0.100"
    with world.store.write() as s:  # and this one, again
        net = s.get(Network, "default")
        assert net is not None
        net.range_start = "10.42.0.200"
    assert world.create("c").nics[0].ip == "10.42.0.200"
    with other.store.write() as s:  # the image goes
        image = s.get(Image, "img")
        assert image is not None
        s.delete(image)
    with pytest.raises(NotFound, match="image 'img' not found"):
        world.create("d")
    world.image()  # imported again
    assert world.create("e").image == "img"


def test_a_kept_row_survives_a_transaction_that_rolled_back(world: World) -> None:
    """A create refused after it read the network and the image leaves them usable."""
    standard(world, "10.43.0.0/24")
    world.create("a")
    with pytest.raises(AlreadyExists):
        world.create("a", request_id="again")  # the name is taken: rolled back
    assert world.create("b").nics[0].ip.startswith("10.43.0.")


def test_node_views_follow_another_replica_s_nodes_and_claims(world: World, other: World) -> None:
    """The node views a batch reuses (ops/placement.py, validated by the nodes
    generation): a node another replica registers is used at once, and its claims are
    never double-booked."""
    standard(world, "10.42.0.0/24", nodes=1, memory=4000)
    world.create("a", memory_mib=1024)
    world.create("b", memory_mib=128)  # its views came from the cache
    other.node("n1", cpus=64, memory_mib=4000, networks=("default",))
    assert world.create("big", memory_mib=3500).node == "n1"
    assert other.create("c", memory_mib=2000).node == "n0"
    # n0 has 4000 - 1024 - 128 - 2000 = 848 left, n1 500: only a replica that saw
    # "c" knows neither fits
    with pytest.raises(ResourceExhausted):
        world.create("d", memory_mib=1000)
    world.snapshot().check()


def test_the_scheduler_snapshot_a_batch_leaves_is_the_next_one_s(world: World) -> None:
    """A batch places on one scheduler snapshot; the next batch of the same replica takes
    it over while the nodes generation is the one it left (ops/placement.py): it counts
    every claim made since. A batch with a refused create builds the next one afresh."""
    standard(world, "10.45.0.0/24", nodes=1, memory=4000)
    engine = world.store.engine

    def used() -> tuple[int, int]:
        """(what the remembered snapshot counts as used, what the node's row holds)."""
        with world.store.read() as s:
            row = s.execute(select(Node.used_memory_mib)).scalar_one()
        return placement._snapshots[engine][1].by_name["n0"].used_memory_mib, row

    world.create("a", memory_mib=1024)
    first = placement._snapshots[engine][1]
    world.create("b", memory_mib=1024)
    world.create("c", memory_mib=1024)
    assert placement._snapshots[engine][1] is first  # taken over, not built again
    counted, row = used()
    assert counted == row > 3 * 1024
    with pytest.raises(ResourceExhausted):
        world.create("huge", memory_mib=3000)
    with pytest.raises(ResourceExhausted):  # a fourth GiB (and its overhead) does not fit
        world.create("d", memory_mib=1024)
    world.create("e", memory_mib=128)
    assert placement._snapshots[engine][1] is not first
    counted, row = used()
    assert counted == row
    world.snapshot().check()


def test_a_batch_hands_out_addresses_lowest_first_once_each(world: World) -> None:
    """A batch keeps each network's count and highest address in step with its own
    allocations (one aggregate per batch); a hole left by a destroyed workspace is
    filled first, a refused create's address is handed out again, none twice."""
    standard(world, "10.43.0.0/24", nodes=1, memory=8000)
    made = [world.create(f"p{i}", memory_mib=128) for i in range(3)]
    world.core.operate(OWNER, made[1].id, Op.DESTROY)
    world.absent("n0", made[1].id)
    got = batched(
        world,
        {
            "a": {"memory_mib": 128},
            "huge": {"memory_mib": 100_000},
            "b": {"memory_mib": 128},
            "c": {"memory_mib": 128},
        },
    )
    assert isinstance(got["huge"], ResourceExhausted)
    ips = sorted(
        int(ipaddress.ip_address(w.nics[0].ip))
        for n, w in got.items()
        if not isinstance(w, Exception)
    )
    held = {int(ipaddress.ip_address(m.nics[0].ip)) for m in (made[0], made[2])}
    assert len(set(ips)) == 4 and not held & set(ips)
    assert int(ipaddress.ip_address(made[1].nics[0].ip)) in ips  # the hole, filled
    world.snapshot().check()


def test_a_create_queued_in_a_batch_keeps_its_turn_in_that_batch(world: World) -> None:
    """The waiting requests are read once per batch, and again once one of its creates
    queues: a later create of the same batch may not take the capacity it waits for."""
    standard(world, "10.44.0.0/24", nodes=1, memory=4000)
    got = batched(
        world,
        {
            "before": {"memory_mib": 128},
            "big": {"memory_mib": 3900, "wait_for_capacity_s": 60},
            "small": {"memory_mib": 128},
        },
    )
    assert not isinstance(got["before"], Exception) and got["before"].node == "n0"
    assert not isinstance(got["big"], Exception) and not got["big"].node  # waits
    assert isinstance(got["small"], ResourceExhausted)
    assert "held for the request waiting at the head of the capacity queue" in str(got["small"])


def _ip(w: object) -> int:
    return int(ipaddress.ip_address(w.nics[0].ip))  # type: ignore[attr-defined]


def test_address_counts_a_create_keeps_follow_any_writer(world: World, other: World) -> None:
    """Each network's address counts a batch of creates leaves (ops/placement.py,
    validated by the addresses generation) start the next batch: an address another
    replica allocates or releases, or this one releases, is seen by the next create."""
    standard(world, "10.46.0.0/24", nodes=1, memory=8000)
    engine = world.store.engine
    a = world.create("a", memory_mib=128)
    gen = placement._counts[engine][0]
    b = world.create("b", memory_mib=128)  # from the counts "a" left
    assert _ip(b) == _ip(a) + 1
    assert placement._counts[engine][0] != gen  # kept again, at the new generation
    c = other.create("c", memory_mib=128)  # another replica allocates
    assert _ip(c) == _ip(b) + 1
    d = world.create("d", memory_mib=128)  # not the address "c" holds
    assert _ip(d) == _ip(c) + 1
    other.core.operate(OWNER, b.id, Op.DESTROY)  # another replica releases one
    other.absent("n0", b.id)
    assert _ip(world.create("e", memory_mib=128)) == _ip(b)  # the hole, filled first
    world.core.operate(OWNER, d.id, Op.DESTROY)  # and this one
    world.absent("n0", d.id)
    assert _ip(world.create("f", memory_mib=128)) == _ip(d)
    world.snapshot().check()


def test_a_batch_with_a_refused_create_keeps_the_committed_address_counts(world: World) -> None:
    """A batch in which a create was refused (its SAVEPOINT rolled back, the batch's
    counts read again) leaves the counts of what it committed: the next create, started
    from them, gets the next address."""
    standard(world, "10.47.0.0/24", nodes=1, memory=8000)
    a = world.create("a", memory_mib=128)
    got = batched(
        world,
        {"x": {"memory_mib": 128}, "x2": {"memory_mib": 128, "name": "x", "request_id": "x2"}},
    )
    assert isinstance(got["x2"], AlreadyExists)
    assert not isinstance(got["x"], Exception) and _ip(got["x"]) == _ip(a) + 2  # after "lead"
    with world.store.read() as s:
        gen = orders_gen.addresses_generation(s)
    assert placement._counts[world.store.engine][0] == gen  # what the next batch starts from
    assert _ip(world.create("b", memory_mib=128)) == _ip(a) + 3
    world.snapshot().check()
