"""A node whose orders are at their size bound (limits.max_node_orders_bytes) is no place
for a new workspace, but the other nodes are: the create goes to one of them rather
than being refused (a real SQLite store, the operations; no gRPC)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.netpolicy import Connectivity
from workspace.errors import ResourceExhausted
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_scale, clusters, create, order_size
from workspace.ops.unit import Env
from workspace.scheduler import Affinity


def site_of(tmp_path: Path) -> Site:
    site = build_site(tmp_path, register=False)
    for name, memory in (("n1", 4096), ("n2", 8192)):
        site.nodes.register(
            nodes_pb2.RegisterRequest(
                node=name, hypervisor="fake", cpus=4, memory_mib=memory, networks=["default"]
            )
        )
    return site


def bounded(site: Site, budget: int) -> Env:
    env = site.core.env
    limits = dataclasses.replace(env.cfg.limits, max_node_orders_bytes=budget)
    return dataclasses.replace(env, cfg=dataclasses.replace(env.cfg, limits=limits))


def make(env: Env, name: str) -> str:
    spec = CreateSpec(image="img", name=name)
    return create.create(env, "alice", CreateRequest(spec)).node


def full_n1(site: Site) -> Env:
    """n1 (the one pack fills first) holds one workspace and has no room in its orders
    for another alike; n2 is empty."""
    assert make(site.core.env, "first") == "n1"
    with site.store.read() as s:
        bound = order_size.node_bound(s, "n1")
    return bounded(site, bound + bound // 2)


def test_a_create_skips_a_node_whose_orders_are_full(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    env = full_n1(site)
    assert make(env, "second") == "n2"


def test_a_cluster_skips_a_node_whose_orders_are_full(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    env = full_n1(site)
    member = MemberSpec("m", "img", cpus=1, memory_mib=512, count=1)
    view = clusters.create(env, "alice", ClusterRequest(name="c", members=(member,)))
    assert [m.node for m in view.members] == ["n2"]


def test_when_every_node_is_full_the_refusal_says_so(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    env = full_n1(site)
    assert make(env, "second") == "n2"
    with pytest.raises(ResourceExhausted) as refused:
        make(env, "third")
    assert "2 node(s) have no room left in their orders" in refused.value.message
    assert "use a smaller user-data" in refused.value.message


def test_a_cluster_grow_keeps_the_orders_of_its_members_nodes_within_bound(
    tmp_path: Path,
) -> None:
    """A CLUSTER member's order lists every member's address: a new member placed on
    another node grows the orders of the nodes its older members are on too."""
    site = site_of(tmp_path)
    member = MemberSpec("m", "img", cpus=1, memory_mib=512, count=1, networks=("default",))
    req = ClusterRequest(
        name="c",
        members=(member,),
        affinity=Affinity.HARD_ANTI,
        connectivity=Connectivity.CLUSTER,
    )
    assert [m.node for m in clusters.create(site.core.env, "alice", req).members] == ["n1"]
    assert make(site.core.env, "plain") == "n1"  # n2 has room for any one order
    with site.store.read() as s:
        bound = order_size.node_bound(s, "n1")
    env = bounded(site, bound + 8)  # no room on n1 for one more peer
    with pytest.raises(ResourceExhausted, match="n1"):
        cluster_scale.scale(env, "alice", "c", "m", 2)
    with site.store.read() as s:
        assert order_size.node_orders_bytes(s, "n1") <= bound + 8


def test_a_preemption_skips_a_node_whose_orders_are_full(tmp_path: Path) -> None:
    """The fewest victims are on n1, but n1's orders have no room for one more: the
    preemption takes its victim on n2 instead of refusing the create."""
    site = site_of(tmp_path)
    env = site.core.env

    def made(name: str, memory_mib: int, preemptible: bool) -> str:
        spec = CreateSpec(image="img", name=name, memory_mib=memory_mib, preemptible=preemptible)
        return create.create(env, "alice", CreateRequest(spec)).node

    assert made("p", 3230, True) == "n1"
    assert made("r", 512, False) == "n1"
    assert made("q", 7680, True) == "n2"
    with site.store.read() as s:
        one = order_size.node_bound(s, "n2")
    got = create.create(
        bounded(site, 2 * one + 100), "alice", CreateRequest(CreateSpec(image="img", name="new"))
    )
    assert got.node == "n2"
    assert [w.name for w in site.workspaces() if w.preempted_by and w.preemptible] == ["q"]
