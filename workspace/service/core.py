"""The service's operations on workspaces and nodes, one store transaction each.

Servicers (workspace/service/api.py) are thin: they translate messages and call
these methods. Placement, IP allocation and the capacity claim of a create happen
in one serialised write transaction, so two requests can never get the same
address or the same last MiB of a node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import ipam, scheduler
from workspace.config import ServiceConfig
from workspace.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from workspace.node.v1 import nodes_pb2
from workspace.service import convert
from workspace.service.notify import Notifier
from workspace.states import Desired, Op, State, apply_op
from workspace.store import IpAllocation, Network, Node, Store, Workspace
from workspace.v1 import common_pb2, workspaces_pb2

log = logging.getLogger("workspace.service")

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_MEMORY_MIB = 512
LIVE = (State.TERMINATED.value,)


def _observed_name(value: int) -> str:
    return nodes_pb2.ObservedState.Name(value).removeprefix("OBSERVED_STATE_")  # type: ignore[arg-type]


class Core:
    def __init__(
        self,
        cfg: ServiceConfig,
        store: Store,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.started_at = clock()

    # -- helpers -----------------------------------------------------------------------

    def _nics(self, s: Session, ids: Sequence[str]) -> dict[str, list[common_pb2.Nic]]:
        out: dict[str, list[common_pb2.Nic]] = {i: [] for i in ids}
        if not ids:
            return out
        rows = s.execute(
            select(IpAllocation, Network)
            .join(Network, Network.name == IpAllocation.network)
            .where(IpAllocation.workspace_id.in_(ids))
            .order_by(IpAllocation.workspace_id, IpAllocation.nic_index)
        ).all()
        for alloc, net in rows:
            out[alloc.workspace_id].append(
                common_pb2.Nic(
                    network=net.name,
                    ip=alloc.ip,
                    mac=alloc.mac,
                    prefix_len=ipam.Pool(net.subnet, net.gateway, "", "", "").prefix_len,
                    gateway=net.gateway,
                )
            )
        return out

    def _protos(self, s: Session, rows: Sequence[Workspace]) -> list[common_pb2.Workspace]:
        nics = self._nics(s, [w.id for w in rows])
        return [convert.workspace(w, nics[w.id]) for w in rows]

    def _resolve(self, s: Session, owner: str, ref: str) -> Workspace:
        if not ref:
            raise InvalidArgument("give a workspace id or name")
        ws = s.get(Workspace, ref)
        if ws is not None and ws.owner == owner:
            return ws
        rows = (
            s.execute(
                select(Workspace)
                .where(Workspace.owner == owner, Workspace.name == ref)
                .order_by(Workspace.created_at.desc())
            )
            .scalars()
            .all()
        )
        live = [w for w in rows if w.state != State.TERMINATED.value]
        if live:
            return live[0]
        if rows:
            return rows[0]
        raise NotFound(f"no workspace {ref!r}; `ws list` shows yours")

    def _publish(self, protos: Iterable[common_pb2.Workspace], nodes: Iterable[str]) -> None:
        for p in protos:
            self.notifier.workspace_changed(p)
        self.notifier.node_changed(*nodes)

    def _release(self, s: Session, ws: Workspace, reason: str) -> None:
        """TERMINATED: addresses back to their pools, the node's claim released."""
        for alloc in s.execute(
            select(IpAllocation).where(IpAllocation.workspace_id == ws.id)
        ).scalars():
            s.delete(alloc)
        if ws.node:
            node = s.get(Node, ws.node)
            if node is not None:
                node.used_cpus = max(0, node.used_cpus - ws.claimed_cpus)
                node.used_memory_mib = max(0, node.used_memory_mib - ws.claimed_memory_mib)
        ws.claimed_cpus = 0
        ws.claimed_memory_mib = 0
        ws.state = State.TERMINATED.value
        ws.desired_state = Desired.TERMINATED.value
        ws.reason = reason
        ws.updated_at = self.clock()
        log.info("workspace %s (%s) terminated on node %s: %s", ws.id, ws.name, ws.node, reason)

    # -- create ------------------------------------------------------------------------

    def _validate_create(
        self, s: Session, owner: str, req: workspaces_pb2.CreateWorkspaceRequest
    ) -> tuple[int, int, list[str]]:
        lim = self.cfg.limits
        if req.name and not NAME_RE.match(req.name):
            raise InvalidArgument(
                f"name {req.name!r} is not valid: use 1-63 lowercase letters, digits and '-' "
                "(it becomes the VM's hostname)"
            )
        cpus = req.cpus or 1
        if not 1 <= cpus <= lim.max_cpus:
            raise InvalidArgument(f"cpus must be between 1 and {lim.max_cpus}, got {req.cpus}")
        memory = req.memory_mib or DEFAULT_MEMORY_MIB
        if not lim.min_memory_mib <= memory <= lim.max_memory_mib:
            raise InvalidArgument(
                f"memory_mib must be between {lim.min_memory_mib} and {lim.max_memory_mib}, "
                f"got {req.memory_mib}"
            )
        if len(req.user_data) > lim.max_user_data_bytes:
            raise InvalidArgument(f"user data is larger than {lim.max_user_data_bytes} bytes")
        if not req.image:
            raise InvalidArgument("an image is required (`ws image list` shows them)")
        networks = list(req.networks)
        if len(networks) > lim.max_nics:
            raise InvalidArgument(f"at most {lim.max_nics} networks per workspace")
        if len(set(networks)) != len(networks):
            raise InvalidArgument("a network is named twice")
        if not networks and s.get(Network, "default") is not None:
            networks = ["default"]
        for n in networks:
            if s.get(Network, n) is None:
                raise NotFound(f"network {n!r} does not exist; `ws-admin network list` shows them")
        return cpus, memory, networks

    @staticmethod
    def _request_hash(req: workspaces_pb2.CreateWorkspaceRequest) -> str:
        canon = json.dumps(
            [
                req.name,
                req.image,
                req.cpus,
                req.memory_mib,
                list(req.networks),
                hashlib.sha256(req.user_data).hexdigest(),
            ]
        )
        return hashlib.sha256(canon.encode()).hexdigest()

    def create(
        self, owner: str, req: workspaces_pb2.CreateWorkspaceRequest
    ) -> common_pb2.Workspace:
        from workspace.store import Image

        request_hash = self._request_hash(req)
        with self.store.write() as s:
            if req.request_id:
                prior = s.execute(
                    select(Workspace).where(
                        Workspace.owner == owner, Workspace.request_id == req.request_id
                    )
                ).scalar_one_or_none()
                if prior is not None:
                    if prior.request_hash != request_hash:
                        raise InvalidArgument(
                            f"request id {req.request_id!r} was already used for a different "
                            "request; use a new id"
                        )
                    return self._protos(s, [prior])[0]
            cpus, memory, networks = self._validate_create(s, owner, req)
            image = s.get(Image, req.image)
            if image is None:
                raise NotFound(f"image {req.image!r} not found; `ws image list` shows them")
            wid = uuid.uuid4().hex[:12]
            name = req.name or f"ws-{wid[:8]}"
            clash = s.execute(
                select(Workspace.id).where(
                    Workspace.owner == owner,
                    Workspace.name == name,
                    Workspace.state != State.TERMINATED.value,
                )
            ).first()
            if clash is not None:
                raise AlreadyExists(f"you already have a workspace named {name!r} ({clash[0]})")

            digests = [p["digest"] for p in image.partitions if p.get("digest")]
            placement = scheduler.place(
                self._node_views(s),
                scheduler.Request(cpus, memory, tuple(networks), tuple(digests)),
                self.cfg.scheduler,
            )
            if placement.node is None:
                raise ResourceExhausted(f"cannot place {name}: {placement.reason()}")
            node = s.get(Node, placement.node)
            assert node is not None
            node.used_cpus += placement.claimed_cpus
            node.used_memory_mib += placement.claimed_memory_mib
            now = self.clock()
            ws = Workspace(
                id=wid,
                name=name,
                owner=owner,
                request_id=req.request_id or uuid.uuid4().hex,
                request_hash=request_hash,
                image=image.name,
                image_spec={
                    "partitions": image.partitions,
                    "kernel_digest": image.kernel_digest,
                    "initrd_digest": image.initrd_digest,
                    "cmdline": image.cmdline,
                },
                cpus=cpus,
                memory_mib=memory,
                claimed_cpus=placement.claimed_cpus,
                claimed_memory_mib=placement.claimed_memory_mib,
                node=node.name,
                state=State.SCHEDULED.value,
                desired_state=Desired.RUNNING.value,
                reason="",
                stop_timeout_s=self.cfg.default_stop_timeout_s,
                user_data=req.user_data,
                created_at=now,
                updated_at=now,
            )
            s.add(ws)
            s.flush()
            for index, net_name in enumerate(networks):
                self._allocate(s, ws, net_name, index)
            proto = self._protos(s, [ws])[0]
        log.info("workspace %s (%s) scheduled on node %s", wid, name, node.name)
        self._publish([proto], [node.name])
        return proto

    def _allocate(self, s: Session, ws: Workspace, net_name: str, index: int) -> None:
        net = s.get(Network, net_name)
        assert net is not None
        pool = ipam.Pool(net.subnet, net.gateway, net.range_start, net.range_end, net.mac_prefix)
        used = set(
            s.execute(select(IpAllocation.ip).where(IpAllocation.network == net_name)).scalars()
        )
        ip = ipam.pick_address(pool, used)
        if ip is None:
            raise ResourceExhausted(f"network {net_name!r} has no free address left")
        for _ in range(64):
            mac = ipam.make_mac(pool.mac_prefix)
            if s.execute(select(IpAllocation.id).where(IpAllocation.mac == mac)).first() is None:
                break
        else:
            raise ResourceExhausted(f"network {net_name!r}: could not find a free MAC address")
        s.add(IpAllocation(network=net_name, ip=ip, mac=mac, workspace_id=ws.id, nic_index=index))
        s.flush()

    def _node_views(self, s: Session) -> list[scheduler.NodeView]:
        return [
            scheduler.NodeView(
                name=n.name,
                state=n.state,
                cpus=n.cpus,
                memory_mib=n.memory_mib,
                used_cpus=n.used_cpus,
                used_memory_mib=n.used_memory_mib,
                hypervisor=n.hypervisor,
                labels=dict(n.labels or {}),
                networks=tuple(n.networks or ()),
                cached_digests=frozenset(n.cached_digests or ()),
            )
            for n in s.execute(select(Node).order_by(Node.name)).scalars()
        ]

    # -- read --------------------------------------------------------------------------

    def get(self, owner: str, ref: str) -> common_pb2.Workspace:
        with self.store.read() as s:
            return self._protos(s, [self._resolve(s, owner, ref)])[0]

    def list(self, owner: str | None, include_terminated: bool) -> list[common_pb2.Workspace]:
        with self.store.read() as s:
            q = select(Workspace).order_by(Workspace.created_at, Workspace.id)
            if owner is not None:
                q = q.where(Workspace.owner == owner)
            if not include_terminated:
                q = q.where(Workspace.state != State.TERMINATED.value)
            return self._protos(s, s.execute(q).scalars().all())

    # -- user operations ---------------------------------------------------------------

    def operate(
        self, owner: str, ref: str, op: Op, timeout_s: int = 0, force: bool = False
    ) -> common_pb2.Workspace:
        with self.store.write() as s:
            ws = self._resolve(s, owner, ref)
            t = apply_op(op, State(ws.state), Desired(ws.desired_state), f"workspace {ws.name}")
            ws.desired_state = t.desired.value
            ws.state = t.state.value
            ws.updated_at = self.clock()
            if op in (Op.START, Op.DESTROY):
                ws.reason = ""
            if op is Op.STOP:
                ws.stop_timeout_s = timeout_s if timeout_s > 0 else self.cfg.default_stop_timeout_s
                ws.force_stop = force
            elif op is Op.DESTROY:
                ws.force_stop = force
            elif op is Op.REBOOT:
                ws.reboot_count += 1
            if op is Op.DESTROY:
                node = s.get(Node, ws.node) if ws.node else None
                if node is None or node.state == "DOWN":
                    self._release(s, ws, "destroyed (its node was not reachable)")
            proto = self._protos(s, [ws])[0]
        log.info("workspace %s (%s): %s requested", ws.id, ws.name, op.value)
        self._publish([proto], [ws.node])
        return proto

    # -- consoles ----------------------------------------------------------------------

    def console(self, owner: str, ref: str, tail_bytes: int) -> bytes:
        from workspace.store import ConsoleLog

        with self.store.read() as s:
            ws = self._resolve(s, owner, ref)
            row = s.get(ConsoleLog, ws.id)
            data = bytes(row.data) if row is not None else b""
        return data[-tail_bytes:] if tail_bytes > 0 else data

    def push_console(self, req: nodes_pb2.PushConsoleRequest) -> int:
        from workspace.store import ConsoleLog

        keep = self.cfg.console_keep_bytes
        with self.store.write() as s:
            ws = s.get(Workspace, req.workspace_id)
            if ws is None or ws.node != req.node:
                raise NotFound(f"workspace {req.workspace_id} is not assigned to {req.node}")
            row = s.get(ConsoleLog, ws.id)
            if row is None:
                row = ConsoleLog(workspace_id=ws.id, total_bytes=0, data=b"")
                s.add(row)
            if req.reset:
                row.total_bytes, row.data = 0, b""
            if req.offset == row.total_bytes and req.data:
                row.data = (bytes(row.data) + req.data)[-keep:]
                row.total_bytes += len(req.data)
            return row.total_bytes
