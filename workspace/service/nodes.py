"""The node side of the service: registration, desired state per node, reports, liveness."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import ipam
from workspace.codec import node as codec_node
from workspace.domain.states import Desired, State, state_from_report
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.node.v1 import nodes_pb2
from workspace.service import clusters, convert
from workspace.service.catalog import blob_digests
from workspace.service.core import Core
from workspace.service.placement import allocations
from workspace.store import Node, Workspace
from workspace.v1 import admin_pb2

log = logging.getLogger("workspace.service.nodes")

# Peers named as sources of one blob in an assignment.
MAX_SOURCES = 3


class Nodes:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.cfg = core.cfg

    def register(self, req: nodes_pb2.RegisterRequest) -> nodes_pb2.RegisterResponse:
        if not req.node or len(req.node) > 255:
            raise InvalidArgument("a node name is required")
        if req.cpus < 1 or req.memory_mib < 1:
            raise InvalidArgument(f"node {req.node}: cpus and memory_mib must be positive")
        now = self.core.clock()
        with self.store.write() as s:
            node = s.get(Node, req.node)
            if node is None:
                node = Node(name=req.node, used_cpus=0, used_memory_mib=0, state="READY")
                s.add(node)
                log.info(
                    "node %s registered (%s, %d cpus, %d MiB)",
                    req.node,
                    req.hypervisor,
                    req.cpus,
                    req.memory_mib,
                )
            elif node.state == "DOWN":
                node.state = "DRAINING" if node.drained else "READY"
                log.info("node %s is back (%s)", req.node, node.state)
            node.hypervisor = req.hypervisor or "unknown"
            node.cpus = req.cpus
            node.memory_mib = req.memory_mib
            node.disk_gib = req.disk_gib
            node.labels = dict(req.labels)
            node.networks = list(req.networks)
            node.cached_digests = list(req.cached_digests)
            node.peer_address = req.peer_address
            node.last_heartbeat = now
        self.core.notifier.node_changed(req.node)
        self.core.notifier.capacity_changed()
        return nodes_pb2.RegisterResponse(heartbeat_interval_s=self.cfg.heartbeat_interval_s)

    def assignments(self, node_name: str) -> nodes_pb2.AssignmentSet:
        with self.store.read() as s:
            node = s.get(Node, node_name)
            if node is None:
                raise NotFound(f"node {node_name} is not registered")
            rows = (
                s.execute(
                    select(Workspace)
                    .where(
                        Workspace.node == node_name,
                        Workspace.desired_state != Desired.TERMINATED.value,
                        Workspace.state != State.TERMINATED.value,
                    )
                    .order_by(Workspace.id)
                )
                .scalars()
                .all()
            )
            nets = self._nic_assignments(s, [w.id for w in rows])
            out = nodes_pb2.AssignmentSet(generation=self.core.notifier.generation(node_name))
            trust = self.core.trust
            envelopes: dict[str, list[str]] = {}
            if trust is not None:
                out.policy.CopyFrom(trust.policy_proto(s))
            for w in rows:
                spec = w.image_spec or {}
                if trust is not None and w.image not in envelopes:
                    envelopes[w.image] = trust.envelopes(w.image, s)
                out.assignments.append(
                    nodes_pb2.Assignment(
                        workspace_id=w.id,
                        name=w.name,
                        hostname=w.name,
                        desired=convert.desired_enum(w.desired_state),
                        cpus=w.cpus,
                        memory_mib=w.memory_mib,
                        disks=[
                            nodes_pb2.DiskAssignment(
                                name=str(p["name"]),
                                digest=str(p.get("digest", "")),
                                size_bytes=int(p.get("size_bytes", 0)),
                                format=str(p.get("format", "raw")),
                                mode=convert.mode_enum(str(p.get("mode", "COW"))),
                                ext4=bool(p.get("ext4", False)),
                                virtual_size_bytes=int(p.get("virtual_size_bytes", 0)),
                            )
                            for p in spec.get("partitions", [])
                        ],
                        kernel_digest=spec.get("kernel_digest", ""),
                        initrd_digest=spec.get("initrd_digest", ""),
                        cmdline=spec.get("cmdline", ""),
                        nics=nets.get(w.id, []),
                        reboot_count=w.reboot_count,
                        stop_timeout_s=w.stop_timeout_s,
                        force_stop=w.force_stop,
                        user_data=w.user_data,
                        # Bound order: what the service verified at create.
                        image=w.image,
                        envelopes_json=envelopes.get(w.image, []),
                        verified_digests=blob_digests(
                            spec.get("partitions") or [],
                            str(spec.get("kernel_digest") or ""),
                            str(spec.get("initrd_digest") or ""),
                        ),
                    )
                )
            self._fill_sources(s, node_name, out)
            cached = set(node.cached_digests or ())
            out.prefetch.extend(d for d in node.prefetch or () if d not in cached)
            return out

    @staticmethod
    def _nic_assignments(s: Session, ids: list[str]) -> dict[str, list[nodes_pb2.NicAssignment]]:
        return {
            wid: [
                nodes_pb2.NicAssignment(
                    network=net.name,
                    bridge=net.bridge,
                    mac=alloc.mac,
                    ip=alloc.ip,
                    prefix_len=ipam.Pool(net.subnet, net.gateway, "", "", "").prefix_len,
                    gateway=net.gateway,
                    dns=list(net.dns or []),
                    subnet=net.subnet,
                )
                for alloc, net in pairs
            ]
            for wid, pairs in allocations(s, ids).items()
        }

    def report(self, req: nodes_pb2.ReportStatusRequest) -> None:
        changed: list[Workspace] = []
        with self.store.write() as s:
            node = s.get(Node, req.node)
            if node is None:
                raise NotFound(f"node {req.node} is not registered; register first")
            if req.full:
                node.last_heartbeat = self.core.clock()
                if node.state == "DOWN":
                    node.state = "DRAINING" if node.drained else "READY"
                    log.info("node %s is back (%s)", req.node, node.state)
                node.cached_digests = list(req.cached_digests)
                _store_cache_report(node, req)
            seen: set[str] = set()
            for obs in req.workspaces:
                seen.add(obs.workspace_id)
                ws = s.get(Workspace, obs.workspace_id)
                if ws is None or ws.node != req.node:
                    continue
                observed = codec_node.observed_from_proto(obs.state)
                if observed is None:
                    continue
                new = state_from_report(State(ws.state), Desired(ws.desired_state), observed)
                if new is State.TERMINATED:
                    self.core._release(s, ws, "destroyed")
                    changed.append(ws)
                    continue
                reason = (
                    obs.reason if new in (State.FAILED, State.RUNNING, State.STOPPED) else ws.reason
                )
                if new is State.RUNNING and not obs.reason:
                    reason = ""
                if new is not None and (new.value != ws.state or reason != ws.reason):
                    if new is State.FAILED and ws.state != State.FAILED.value:
                        log.warning(
                            "workspace %s (%s) failed on node %s: %s",
                            ws.id,
                            ws.name,
                            req.node,
                            obs.reason,
                        )
                    ws.state = new.value
                    ws.reason = reason
                    ws.updated_at = self.core.clock()
                    changed.append(ws)
            if req.full:
                for ws in s.execute(
                    select(Workspace).where(
                        Workspace.node == req.node,
                        Workspace.desired_state == Desired.TERMINATED.value,
                        Workspace.state != State.TERMINATED.value,
                    )
                ).scalars():
                    if ws.id not in seen:
                        self.core._release(s, ws, "destroyed")
                        changed.append(ws)
            if req.audit and self.core.trust is not None:
                self.core.trust.audit(list(req.audit), s)
            more, nodes = clusters.refresh(self.core, s, {w.cluster for w in changed})
            protos = self.core._protos(s, changed + more)
        self.core._publish(protos, nodes)

    def check_liveness(self) -> list[str]:
        """Mark nodes silent for longer than the grace period DOWN; their workspaces LOST."""
        now = self.core.clock()
        cutoff = now - self.cfg.node_grace_s
        if self.core.started_at > cutoff:
            return []  # give agents a grace period after a service restart
        down: list[str] = []
        changed: list[Workspace] = []
        with self.store.write() as s:
            for node in s.execute(
                select(Node).where(Node.state != "DOWN", Node.last_heartbeat < cutoff)
            ).scalars():
                node.state = "DOWN"
                down.append(node.name)
                log.warning(
                    "node %s is DOWN: no heartbeat for %.0f s", node.name, now - node.last_heartbeat
                )
                for ws in s.execute(
                    select(Workspace).where(
                        Workspace.node == node.name, Workspace.state != State.TERMINATED.value
                    )
                ).scalars():
                    if ws.desired_state == Desired.TERMINATED.value:
                        self.core._release(s, ws, "destroyed (its node went down)")
                    else:
                        ws.state = State.LOST.value
                        ws.reason = (
                            f"node {node.name} stopped reporting; the workspace was not "
                            "restarted elsewhere"
                        )
                        ws.updated_at = now
                    changed.append(ws)
            more, nodes = clusters.refresh(self.core, s, {w.cluster for w in changed})
            protos = self.core._protos(s, changed + more)
        self.core._publish(protos, nodes)
        return down

    def list_nodes(self) -> list[admin_pb2.Node]:
        from sqlalchemy import func

        with self.store.read() as s:
            counts = dict(
                s.execute(
                    select(Workspace.node, func.count())
                    .where(Workspace.state != State.TERMINATED.value)
                    .group_by(Workspace.node)
                ).all()
            )
            return [
                convert.node(n, int(counts.get(n.name, 0)))
                for n in s.execute(select(Node).order_by(Node.name)).scalars()
            ]

    # -- admin -------------------------------------------------------------------------

    def _node_proto(self, s: Session, node: Node) -> admin_pb2.Node:
        from sqlalchemy import func

        count = s.execute(
            select(func.count())
            .select_from(Workspace)
            .where(Workspace.node == node.name, Workspace.state != State.TERMINATED.value)
        ).scalar_one()
        return convert.node(node, int(count))

    def set_drained(self, name: str, drained: bool) -> admin_pb2.Node:
        with self.store.write() as s:
            node = s.get(Node, name)
            if node is None:
                raise NotFound(f"no node {name!r}; `ws-admin node list` shows them")
            node.drained = drained
            if node.state != "DOWN":
                node.state = "DRAINING" if drained else "READY"
            proto = self._node_proto(s, node)
        log.info("node %s %s", name, "draining: no new work" if drained else "enabled")
        return proto

    def remove(self, name: str) -> admin_pb2.Node:
        with self.store.write() as s:
            node = s.get(Node, name)
            if node is None:
                raise NotFound(f"no node {name!r}; `ws-admin node list` shows them")
            proto = self._node_proto(s, node)
            if proto.workspaces:
                raise FailedPrecondition(
                    f"node {name} still holds {proto.workspaces} workspace(s); drain it and "
                    "move or destroy them first"
                )
            s.delete(node)
        log.info("node %s removed", name)
        return proto

    def scheduler_input(self, req: admin_pb2.SchedulerInputRequest) -> str:
        """The scheduler's input for a hypothetical request, as replayable JSON."""
        from workspace import scheduler
        from workspace.service.placement import node_views
        from workspace.store import Image

        with self.store.read() as s:
            digests: tuple[str, ...] = ()
            if req.image:
                img = s.get(Image, req.image)
                if img is None:
                    raise NotFound(f"image {req.image!r} not found")
                digests = tuple(str(p["digest"]) for p in img.partitions if p.get("digest"))
            nodes = node_views(s)
        request = scheduler.Request(
            req.cpus or 1,
            req.memory_mib or 512,
            tuple(req.networks),
            digests,
            dict(req.requirements),
            member="request",
        )
        return scheduler.to_json(nodes, [request], self.cfg.scheduler, scheduler.Affinity.NONE)

    # -- blob caches: reports, peer sources, preload -----------------------------------

    @staticmethod
    def _fill_sources(s: Session, node_name: str, out: nodes_pb2.AssignmentSet) -> None:
        """Name up to MAX_SOURCES peers per disk blob: nodes that serve peers and last
        reported holding it; READY ones first, the rest spread over requesters by
        rendezvous hashing (so N nodes fetching one blob do not all pick the same peer)."""
        wanted = {d.digest for a in out.assignments for d in a.disks if d.digest}
        if not wanted:
            return
        holders: dict[str, list[Node]] = {}
        for peer in s.execute(
            select(Node).where(
                Node.name != node_name, Node.peer_address != "", Node.state != "DOWN"
            )
        ).scalars():
            for digest in wanted.intersection(peer.cached_digests or ()):
                holders.setdefault(digest, []).append(peer)

        def rank(peer: Node) -> tuple[bool, str]:
            spread = hashlib.sha256(f"{node_name}/{peer.name}".encode()).hexdigest()
            return (peer.state != "READY", spread)

        chosen = {
            digest: [p.peer_address for p in sorted(peers, key=rank)[:MAX_SOURCES]]
            for digest, peers in holders.items()
        }
        for a in out.assignments:
            for disk in a.disks:
                disk.sources.extend(chosen.get(disk.digest, ()))

    def list_cache(self, name: str) -> admin_pb2.ListCacheResponse:
        with self.store.read() as s:
            node = s.get(Node, name)
            if node is None:
                raise NotFound(f"no node {name!r}; `ws-admin node list` shows them")
            rows = sorted(node.cache or (), key=lambda e: -float(e.get("last_used", 0)))
            return admin_pb2.ListCacheResponse(
                node=name,
                budget_bytes=node.cache_budget_bytes or 0,
                used_bytes=sum(int(e.get("size_bytes", 0)) for e in rows),
                entries=[
                    admin_pb2.CacheEntry(
                        digest=str(e["digest"]),
                        size_bytes=int(e.get("size_bytes", 0)),
                        last_used=convert.ts(float(e.get("last_used", 0))),
                        pinned=bool(e.get("pinned", False)),
                    )
                    for e in rows
                ],
            )

    def preload(self, image: str, names: Sequence[str]) -> admin_pb2.PreloadImageResponse:
        """Ask nodes (default: every READY one) to fetch an image's blobs ahead of use.

        The digests go on each node's prefetch list, sent in its AssignmentSet, and
        leave it once the node reports them cached."""
        from workspace.store import Image

        if not image:
            raise InvalidArgument("an image name is required")
        with self.store.write() as s:
            img = s.get(Image, image)
            if img is None:
                raise NotFound(f"image {image!r} not found; `ws image list` shows them")
            digests = list(
                dict.fromkeys(
                    d
                    for d in [str(p.get("digest", "")) for p in img.partitions]
                    + [img.kernel_digest, img.initrd_digest]
                    if d
                )
            )
            if names:
                nodes = []
                for name in dict.fromkeys(names):
                    node = s.get(Node, name)
                    if node is None:
                        raise NotFound(f"no node {name!r}; `ws-admin node list` shows them")
                    nodes.append(node)
            else:
                nodes = list(
                    s.execute(select(Node).where(Node.state == "READY").order_by(Node.name))
                    .scalars()
                    .all()
                )
                if not nodes:
                    raise FailedPrecondition("no node is READY to preload the image onto")
            for node in nodes:
                have = set(node.cached_digests or ()) | set(node.prefetch or ())
                add = [d for d in digests if d not in have]
                if add:
                    node.prefetch = [*(node.prefetch or ()), *add]
            done = [n.name for n in nodes]
        self.core.notifier.node_changed(*done)
        log.info("image %s: preload on %s", image, ", ".join(done))
        return admin_pb2.PreloadImageResponse(nodes=done, digests=digests)


def _store_cache_report(node: Node, req: nodes_pb2.ReportStatusRequest) -> None:
    """Keep a full report's cache contents on the node; drop prefetch digests now cached."""
    node.cache = [
        {
            "digest": e.digest,
            "size_bytes": e.size_bytes,
            "last_used": e.last_used.ToNanoseconds() / 1e9,
            "pinned": e.pinned,
        }
        for e in req.cache
    ]
    node.cache_budget_bytes = req.cache_budget_bytes
    if node.prefetch:
        cached = set(req.cached_digests)
        left = [d for d in node.prefetch if d not in cached]
        if left != node.prefetch:
            node.prefetch = left
