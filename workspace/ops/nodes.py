"""Administering nodes: list, drain, enable, remove; their caches; what the scheduler sees."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.domain.model import NodeCache, NodeStatus
from workspace.domain.states import NodeState, State
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.log import about_node
from workspace.ops import node_refusals, preempt
from workspace.ops.admission import head_holds
from workspace.ops.create import DEFAULT_MEMORY_MIB, check_networks, check_size
from workspace.ops.image_refs import unknown_image
from workspace.ops.lifecycle import confirm_gone, held_on
from workspace.ops.placement import node_views
from workspace.ops.unit import Env, write
from workspace.scheduler import replay
from workspace.scheduler.preempt import victims_to_dicts
from workspace.store import Image, Node, Workspace
from workspace.store.mapping import cache_records, image_spec, node_state, node_status

log = logging.getLogger("workspace.ops.nodes")


def _get(s: Session, name: str) -> Node:
    if not name:  # it was NOT_FOUND, "no node ''", as if one had been named
        raise InvalidArgument("give a node name (`ws-admin node list` shows them)")
    node = s.get(Node, name)
    if node is None:
        raise NotFound(f"no node {name!r}; `ws-admin node list` shows them")
    return node


def _status(env: Env, s: Session, node: Node) -> NodeStatus:
    count = s.execute(
        select(func.count())
        .select_from(Workspace)
        .where(Workspace.node == node.name, Workspace.state != State.TERMINATED.value)
    ).scalar_one()
    return _shown(env, node, int(count))


def _shown(env: Env, node: Node, workspaces: int) -> NodeStatus:
    """``node`` as the admin API shows it: with what the scheduler may place there."""
    cap = scheduler.capacity(node.cpus, node.memory_mib, env.cfg.scheduler)
    return node_refusals.shown(env, node_status(node, workspaces, cap), node.cert_serial)


def list_nodes(env: Env) -> list[NodeStatus]:
    with env.store.read() as s:
        counts = dict(
            s.execute(
                select(Workspace.node, func.count())
                .where(Workspace.state != State.TERMINATED.value)
                .group_by(Workspace.node)
            ).all()
        )
        return [
            _shown(env, n, int(counts.get(n.name, 0)))
            for n in s.execute(select(Node).order_by(Node.name)).scalars()
        ]


def set_drained(env: Env, name: str, drained: bool) -> NodeStatus:
    """Drain (no new work) or enable a node; enabling wakes the queue."""
    with write(env) as u:
        node = _get(u.s, name)
        node.drained = drained
        if node_state(node) is not NodeState.DOWN:
            node.state = (NodeState.DRAINING if drained else NodeState.READY).value
        shown = _status(env, u.s, node)
        if not drained:
            u.capacity()
    log.info(
        "node %s %s",
        name,
        "draining: no new work" if drained else "enabled",
        extra=about_node(name),
    )
    return shown


def remove(env: Env, name: str) -> NodeStatus:
    """Forget node ``name`` (it must hold no live workspace). In a unit of work like
    every other write: the workspaces whose addresses it held are published released
    (their watchers see it at once; the queue wakes for what they freed)."""
    with write(env) as u:
        s = u.s
        node = _get(s, name)
        shown = _status(env, s, node)
        if shown.workspaces and node_state(node) is NodeState.DOWN:
            raise FailedPrecondition(
                f"node {name} is DOWN and still holds {shown.workspaces} workspace(s) "
                "(LOST); destroy them first (`ws list --all-users` shows them; a destroy "
                "on a DOWN node finishes at once)"
            )
        if shown.workspaces:
            raise FailedPrecondition(
                f"node {name} still holds {shown.workspaces} workspace(s); drain it "
                f"(`ws-admin node drain {name}`) and destroy them first (`ws list --all-users` "
                "shows them); then stop its agent"
            )
        # The admin's word: the node and its VMs are gone for good. What workspaces
        # destroyed while it was DOWN still held goes back to the pools.
        for ws in held_on(s, name):
            confirm_gone(env, s, ws, f"node {name} was removed")
            u.changed(ws)
            preempt.terminated(u, ws)  # as when its node confirms it gone (ops/reports.py)
        s.delete(node)
    log.info("node %s removed", name, extra=about_node(name))
    return shown


def scheduler_input(
    env: Env,
    image: str,
    cpus: int,
    memory_mib: int,
    networks: Sequence[str],
    requirements: Mapping[str, str],
    preemptible: bool = False,
) -> str:
    """The scheduler's input for a hypothetical request, normal or ``preemptible``, as
    replayable JSON: the node views, and what keeps their free capacity from it (the
    nodes the capacity queue holds; workspaces preempted earlier that still hold their
    claims while they stop) and, for a normal one, what preemption could take (a
    preemptible request preempts nobody, and is kept off every held node). Its size and
    networks are checked, and defaulted, as a create's are: a size the site refuses is
    InvalidArgument, a network that does not exist NotFound, and none named is "default"
    if it exists."""
    cpus = cpus or 1
    memory_mib = memory_mib or DEFAULT_MEMORY_MIB
    check_size(cpus, memory_mib, env.cfg.limits)
    with env.store.read() as s:
        joined = check_networks(s, tuple(networks))
        digests: tuple[str, ...] = ()
        if image:
            img = s.get(Image, image)
            if img is None:
                raise NotFound(f"image {image!r} not found")
            digests = tuple(p.digest for p in image_spec(img).partitions if p.digest)
        nodes = node_views(s)
        names = [n.name for n in nodes]
        victims, _ = preempt.candidates(s, names)
        pending = preempt.in_flight(s, names)
        # What the capacity queue keeps from a new request of each class.
        held = head_holds(s, env.cfg)
        against_preemptible = head_holds(s, env.cfg, preemptible=True)
        held_preemptible = {k: v for k, v in against_preemptible.items() if k not in held}
    request = scheduler.Request(
        cpus,
        memory_mib,
        joined,
        digests,
        dict(requirements),
        member="request",
    )
    doc = replay.to_dict(nodes, [request], env.cfg.scheduler, scheduler.Affinity.NONE)
    if preemptible:
        doc["preemptible"] = True
        # Every holder keeps its nodes from a preemptible request (and says so as a live
        # preemptible create's refusal does).
        held, held_preemptible, victims = against_preemptible, {}, []
    if victims:  # what preemption could take (explain says what it would do)
        doc["victims"] = victims_to_dicts(victims)
    if pending:  # preempted earlier, still stopping: their claims count until they end
        doc["pending"] = victims_to_dicts(pending)
    if held:  # the nodes a new request may not use, and why (explain leaves them out)
        doc["held"] = dict(sorted(held.items()))
    if held_preemptible:
        doc["held_preemptible"] = dict(sorted(held_preemptible.items()))
    return json.dumps(doc, indent=1) + "\n"


def list_cache(env: Env, name: str) -> NodeCache:
    with env.store.read() as s:
        node = _get(s, name)
        rows = sorted(cache_records(node), key=lambda e: -e.last_used)
        return NodeCache(
            node=name,
            budget_bytes=node.cache_budget_bytes or 0,
            used_bytes=sum(e.size_bytes for e in rows),
            entries=tuple(rows),
        )


def preload(env: Env, image: str, names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Ask nodes (default: every READY one) to fetch an image's blobs ahead of use:
    (the nodes, the digests, those of the nodes that reported all of them cached).

    The digests go on each node's prefetch list, sent with its orders, and leave it
    once the node reports them cached."""
    if not image:
        raise InvalidArgument("an image name is required")
    with write(env) as u:
        img = u.s.get(Image, image)
        if img is None:
            raise unknown_image(u.s, image)
        digests = image_spec(img).digests()
        if names:
            nodes = [_get(u.s, name) for name in dict.fromkeys(names)]
        else:
            nodes = list(
                u.s.execute(
                    select(Node).where(Node.state == NodeState.READY.value).order_by(Node.name)
                )
                .scalars()
                .all()
            )
            if not nodes:
                raise FailedPrecondition("no node is READY to preload the image onto")
        cached = []
        for node in nodes:
            if set(digests) <= set(node.cached_digests or ()):
                cached.append(node.name)
            have = set(node.cached_digests or ()) | set(node.prefetch or ())
            add = [d for d in digests if d not in have]
            if add:
                node.prefetch = [*(node.prefetch or ()), *add]
        done = [n.name for n in nodes]
        u.nodes(*done)
    log.info("image %s: preload on %s", image, ", ".join(done))
    return done, digests, cached
