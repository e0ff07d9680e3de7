# ruff: noqa: F811 - the fixtures imported from test_store_engines are parameters here
"""``ws show``, ``ws list`` and a cluster's members read a workspace's view columns without
the ORM (store/mapping.py ``ViewRow``): on both engines they must show what the ORM row
shows, every column, and find and hide the same workspaces."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.contract.store_world import OWNER, World
from tests.contract.test_store_engines import (  # noqa: F401 - fixtures
    make_url,
    standard,
    world,
)
from workspace.domain.model import WorkspaceView
from workspace.domain.states import Op
from workspace.errors import NotFound
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, queries
from workspace.store import Image, Workspace
from workspace.store.mapping import workspace_views
from workspace.v1 import clusters_pb2, common_pb2, workspaces_pb2

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"


def orm_views(w: World) -> dict[str, WorkspaceView]:
    """Every workspace's view as built from its ORM row (what every write path answers)."""
    with w.store.read() as s:
        rows = list(s.execute(select(Workspace)).scalars())
        return {v.id: v for v in workspace_views(s, rows)}


def test_show_list_and_members_show_what_the_row_holds(world: World) -> None:
    standard(world, "192.168.7.0/24")
    plain = world.create("plain")
    odd = world.create(
        "odd",
        connectivity="outbound",
        allow=["tcp/22", "udp/53:10.0.0.0/8"],
        limits=common_pb2.Limits(cpu_percent=50, net_mbps=100),
        preemptible=True,
    )
    running = nodes_pb2.ObservedWorkspace(
        workspace_id=odd.id, state=nodes_pb2.OBSERVED_STATE_RUNNING, applied_reboot_count=0
    )
    world.nodes.report(nodes_pb2.ReportStatusRequest(node=odd.node, workspaces=[running]))
    world.core.operate(OWNER, odd.id, Op.REBOOT)
    with world.store.write() as s:  # what a contextualized image's workspace holds
        row = s.get(Workspace, odd.id)
        assert row is not None
        row.authorized_keys = [KEY]
        row.host_key_public = KEY
        row.login_user = "debian"
        row.lease_expires_at = 4e9
        row.saving_as = "img:saved"
        row.saving_since = 1.0
    member = clusters_pb2.ClusterMember(role="worker", image="img", memory_mib=256, count=2)
    c = world.clusters.create(
        OWNER, clusters_pb2.CreateClusterRequest(request_id="c", name="cl", members=[member])
    )
    want = orm_views(world)
    got_odd = queries.get(world.env, OWNER, odd.id)
    assert got_odd == want[odd.id]
    assert got_odd.preemptible and got_odd.allow and got_odd.limits.cpu_percent == 50
    assert got_odd.ssh_keys and got_odd.host_keys and got_odd.lease_expires_at == 4e9
    assert got_odd.saving_as == "img:saved"
    assert (got_odd.reboot_count, got_odd.applied_reboot_count) == (1, 0)
    assert queries.get(world.env, OWNER, plain.id).applied_reboot_count is None
    assert queries.get(world.env, OWNER, "plain") == want[plain.id]  # by name
    listed = queries.list_all(world.env, OWNER, include_terminated=False)
    assert {v.id: v for v in listed} == want
    shown = clusters.get(world.env, OWNER, c.id)
    assert list(shown.members) == sorted(
        (v for v in want.values() if v.cluster == c.id), key=lambda v: (v.role, v.name)
    )


def test_show_finds_and_hides_as_before(world: World) -> None:
    standard(world)
    with world.store.write() as s:  # bob may use it too
        img = s.get(Image, "img")
        assert img is not None
        img.public = True
    mine = world.create("box")
    bob = Identity(Kind.USER, "bob")
    req = workspaces_pb2.CreateWorkspaceRequest(name="box", request_id="b", image="img")
    theirs = world.core.create(bob, req)
    admin = Identity(Kind.USER, "root", admin=True)
    # By name: each user's own first; an id: only the owner (or an admin) sees it.
    assert queries.get(world.env, OWNER, "box").id == mine.id
    assert queries.get(world.env, bob, "box").id == theirs.id
    with pytest.raises(NotFound, match="no workspace 'box'"):
        queries.get(world.env, Identity(Kind.USER, "carol"), "box")
    with pytest.raises(NotFound):
        queries.get(world.env, bob, mine.id)
    assert queries.get(world.env, admin, mine.id).owner == OWNER
    # A live one before a terminated one of the same name.
    world.core.operate(OWNER, mine.id, Op.DESTROY)
    world.absent("n0", mine.id)
    again = world.create("box", request_id="box-2")
    assert queries.get(world.env, OWNER, "box").id == again.id
    assert queries.get(world.env, OWNER, mine.id).state.value == "TERMINATED"
