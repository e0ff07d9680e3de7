"""Capacity accounting through the operations (a real SQLite store, the fake node's
reports; no gRPC, no VM): after every step of a random sequence of creates, clusters,
destroys, stops, starts, resizes, drains and nodes going DOWN and coming back, each
node's claims are exactly the sum of its workspaces' claims, never more than it may
hold, and the scheduler's cached views of the nodes are the store's rows."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace import scheduler
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import NodeState, Op, State
from workspace.errors import FailedPrecondition, NotFound, ResourceExhausted
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_scale, clusters, create, nodes, operate, placement, queue
from workspace.ops.unit import Env
from workspace.scheduler.snapshot import capacity
from workspace.store import Cluster, Node, Workspace
from workspace.v1 import workspaces_pb2

OBSERVED = {
    State.RUNNING.value: nodes_pb2.OBSERVED_STATE_RUNNING,
    State.STOPPED.value: nodes_pb2.OBSERVED_STATE_STOPPED,
}
NODES = ("n1", "n2", "n3")
SIZES = {"n1": (2, 4096), "n2": (4, 8192), "n3": (1, 2048)}


@dataclass
class World:
    site: Site
    down: set[str]
    removed: set[str]

    @property
    def env(self) -> Env:
        return self.site.core.env


def build(tmp: Path) -> World:
    site = build_site(tmp, register=False)
    for name in NODES:
        cpus, memory = SIZES[name]
        site.nodes.register(
            nodes_pb2.RegisterRequest(
                node=name, hypervisor="fake", cpus=cpus, memory_mib=memory, networks=["default"]
            )
        )
    return World(site, set(), set())


def heartbeat(w: World, name: str) -> None:
    """A full report from ``name``: every workspace placed there is as it is meant to be."""
    with w.site.store.read() as s:
        rows = list(s.scalars(select(Workspace).where(Workspace.node == name)))
    observed = []
    for ws in rows:
        want = ws.desired_state
        if ws.state == State.TERMINATED.value or want == State.TERMINATED.value:
            continue  # gone: a full report without it says so
        state = OBSERVED.get(want)
        if state is not None:
            observed.append(nodes_pb2.ObservedWorkspace(workspace_id=ws.id, state=state))
    w.site.nodes.report(nodes_pb2.ReportStatusRequest(node=name, full=True, workspaces=observed))


def live(w: World) -> list[Workspace]:
    with w.site.store.read() as s:
        return list(
            s.scalars(
                select(Workspace)
                .where(Workspace.state.not_in((State.TERMINATED.value, State.FAILED.value)))
                .order_by(Workspace.name)
            )
        )


def pick(rows: list[Workspace], i: int) -> Workspace | None:
    return rows[i % len(rows)] if rows else None


def placed(w: World) -> tuple[dict[str, str], dict[str, str]]:
    """Each workspace's node ("" if none) and each node's state."""
    with w.site.store.read() as s:
        where = {wid: node for wid, node in s.execute(select(Workspace.id, Workspace.node))}
        states = {name: state for name, state in s.execute(select(Node.name, Node.state))}
    return where, states


def step(w: World, op: tuple[str, int, int, int], n: int) -> None:
    """``op``, then: whatever it placed went to a node that was READY."""
    before, states = placed(w)
    act(w, op, n)
    after, _ = placed(w)
    for wid, node in after.items():
        if node and not before.get(wid):
            assert states.get(node) == NodeState.READY.value, (op, node, states)


def act(w: World, op: tuple[str, int, int, int], n: int) -> None:
    kind, a, b, c = op
    env = w.env
    try:
        if kind == "create":
            spec = CreateSpec(
                image="img", name=f"w{n}", cpus=a, memory_mib=256 * b, preemptible=c % 2 == 1
            )
            create.create(env, "alice", CreateRequest(spec, wait_for_capacity_s=c // 2 * 600))
        elif kind == "cluster":
            affinity = list(scheduler.Affinity)[c % len(scheduler.Affinity)]
            req = ClusterRequest(
                name=f"c{n}",
                members=(MemberSpec("m", "img", cpus=a, memory_mib=256 * b, count=1 + c % 3),),
                affinity=affinity,
            )
            clusters.create(env, "alice", req)
        elif kind in ("stop", "start", "destroy"):
            ws = pick(live(w), a)
            if ws is not None:
                operate.operate(env, "alice", ws.id, Op(kind))
        elif kind == "resize":
            ws = pick(live(w), a)
            if ws is not None:
                w.site.core.update(
                    "alice",
                    workspaces_pb2.UpdateWorkspaceRequest(
                        id=ws.id, cpus=1 + b % 4, memory_mib=256 * (1 + c % 8)
                    ),
                )
        elif kind == "drain":
            nodes.set_drained(env, NODES[a % 3], bool(b % 2))
        elif kind == "down":
            name = NODES[a % 3]
            w.site.clock.now += env.cfg.node_grace_s + 1
            for other in NODES:
                if other != name and other not in w.down | w.removed:
                    heartbeat(w, other)
            w.down.update(w.site.nodes.check_liveness())
        elif kind == "up":
            name = NODES[a % 3]
            if name not in w.removed:
                w.down.discard(name)
                heartbeat(w, name)
        elif kind == "report":
            for name in NODES:
                if name not in w.down | w.removed:
                    heartbeat(w, name)
        elif kind == "queue":
            queue.process(env)
        elif kind in ("fail", "vanish"):
            ws = pick([r for r in live(w) if r.node and r.node not in w.down | w.removed], a)
            if ws is not None:
                state = nodes_pb2.OBSERVED_STATE_FAILED
                if kind == "vanish":
                    state = nodes_pb2.OBSERVED_STATE_ABSENT
                observed = nodes_pb2.ObservedWorkspace(workspace_id=ws.id, state=state)
                w.site.nodes.report(
                    nodes_pb2.ReportStatusRequest(node=ws.node, workspaces=[observed])
                )
        elif kind == "scale":
            with w.site.store.read() as s:
                names = sorted(s.scalars(select(Cluster.name)))
            if names:
                cluster_scale.scale(env, "alice", names[a % len(names)], "m", 1 + b % 4, c * 300)
        elif kind == "remove":
            nodes.remove(env, NODES[a % 3])
            w.removed.add(NODES[a % 3])
        elif kind == "register":
            name = NODES[a % 3]
            cpus, memory = SIZES[name]
            w.site.nodes.register(
                nodes_pb2.RegisterRequest(
                    node=name,
                    hypervisor="fake",
                    cpus=cpus,
                    memory_mib=memory,
                    networks=["default"],
                )
            )
            w.removed.discard(name)
            w.down.discard(name)
    except (ResourceExhausted, FailedPrecondition, NotFound):
        pass


def check(w: World) -> None:
    cfg = w.env.cfg.scheduler
    with w.site.store.read() as s:
        rows = {n.name: n for n in s.scalars(select(Node))}
        claims: dict[str, list[int]] = {name: [0, 0] for name in rows}
        # preempted workspaces keep their claims until they are gone: the node is
        # over-claimed by them meanwhile (docs/design/preemption.md)
        going: dict[str, list[int]] = {name: [0, 0] for name in rows}
        for ws in s.scalars(select(Workspace)):
            if ws.preempted_by and ws.preemptible and ws.node in going:
                going[ws.node][0] += ws.claimed_cpus
                going[ws.node][1] += ws.claimed_memory_mib
            if ws.claimed_cpus or ws.claimed_memory_mib:
                assert ws.node in claims, f"{ws.name} claims on {ws.node!r}"
                assert ws.state != State.PENDING.value or ws.node, ws.name
                claims[ws.node][0] += ws.claimed_cpus
                claims[ws.node][1] += ws.claimed_memory_mib
            if ws.state in (State.PENDING.value, State.FAILED.value) and not ws.node:
                assert (ws.claimed_cpus, ws.claimed_memory_mib) == (0, 0), ws.name
        for name, node in rows.items():
            assert [node.used_cpus, node.used_memory_mib] == claims[name], name
            most_cpus, most_memory = capacity(node.cpus, node.memory_mib, cfg)
            assert node.used_cpus - going[name][0] <= most_cpus, name
            assert node.used_memory_mib - going[name][1] <= most_memory, name
        # affinity holds for every cluster's placed members, also after a scale
        for cluster in s.scalars(select(Cluster)):
            on = [
                m.node
                for m in s.scalars(select(Workspace).where(Workspace.cluster == cluster.id))
                if m.node
                and m.desired_state != State.TERMINATED.value
                and m.state != State.TERMINATED.value
            ]
            if cluster.affinity == scheduler.Affinity.HARD_ANTI.name:
                assert len(on) == len(set(on)), (cluster.name, on)
            if cluster.affinity == scheduler.Affinity.HARD.name:
                assert len(set(on)) <= 1, (cluster.name, on)
        placement.keep_node_views(s)  # the views a batch of creates starts from (cached)
        views = {v.name: v for v in placement.node_views(s)}
        assert set(views) == set(rows)
        for name, node in rows.items():
            v = views[name]
            assert (v.used_cpus, v.used_memory_mib, v.state, v.cpus, v.memory_mib) == (
                node.used_cpus,
                node.used_memory_mib,
                node.state,
                node.cpus,
                node.memory_mib,
            ), name


OPS = st.tuples(
    st.sampled_from(
        [
            "create",
            "create",
            "cluster",
            "stop",
            "start",
            "destroy",
            "resize",
            "drain",
            "down",
            "up",
            "report",
            "report",
            "queue",
            "scale",
            "remove",
            "register",
            "fail",
            "vanish",
        ]
    ),
    st.integers(1, 4),
    st.integers(1, 12),
    st.integers(0, 5),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(OPS, min_size=1, max_size=25))
def test_claims_add_up_after_every_step(ops: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = build(Path(tmp))
        check(w)
        for n, op in enumerate(ops):
            step(w, op, n)
            check(w)
