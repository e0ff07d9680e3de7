"""The service's operations on workspaces and nodes, one store transaction each.

Servicers (workspace/service/api.py) are thin: they translate messages and call
these methods. Placement, IP allocation and the capacity claim of a create happen
in one serialised write transaction, so two requests can never get the same
address or the same last MiB of a node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from images.manifest import MAX_PARTITIONS, PARTITION_NAME_RE
from workspace import ipam, scheduler
from workspace.config import LimitsConfig, ServiceConfig
from workspace.domain.states import Desired, Op, State, apply_op
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from workspace.node.v1 import nodes_pb2
from workspace.service import convert
from workspace.service.notify import Notifier
from workspace.service.placement import NoPlacement, allocations, place_rows
from workspace.store import Cluster, IpAllocation, Network, Node, Store, Workspace
from workspace.v1 import common_pb2, workspaces_pb2

if TYPE_CHECKING:
    from workspace.service.trust import TrustStore

log = logging.getLogger("workspace.service")

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_MEMORY_MIB = 512
LIVE = (State.TERMINATED.value,)


def _observed_name(value: int) -> str:
    return nodes_pb2.ObservedState.Name(value).removeprefix("OBSERVED_STATE_")  # type: ignore[arg-type]


Owned = TypeVar("Owned", Workspace, Cluster)


def resolve_owned(
    s: Session, model: type[Owned], owner: str, ref: str, what: str, list_cmd: str
) -> Owned:
    """The caller's ``model`` row named by id or by name; by name, a live one before the
    newest terminated one."""
    if not ref:
        raise InvalidArgument(f"give a {what} id or name")
    row = s.get(model, ref)
    if row is not None and row.owner == owner:
        return row
    rows = list(
        s.execute(
            select(model)
            .where(model.owner == owner, model.name == ref)
            .order_by(model.created_at.desc())
        ).scalars()
    )
    live = [r for r in rows if r.state != State.TERMINATED.value]
    if live or rows:
        return (live or rows)[0]
    raise NotFound(f"no {what} {ref!r}; `{list_cmd}` shows yours")


def blank_spec(p: common_pb2.Partition, what: str, size: int) -> dict[str, object]:
    """The stored form of a blank partition of ``size`` bytes (the caller checked the size's
    range): the rules an image's blanks and a create's extra blanks share."""
    if size % 512:
        raise InvalidArgument(f"{what}: {size} bytes is not a multiple of 512")
    if p.format not in ("", "raw", "qcow2"):
        raise InvalidArgument(f"{what}: format {p.format!r} is not raw or qcow2")
    if p.ext4 and p.format == "qcow2":
        raise InvalidArgument(f"{what}: an ext4 blank partition is a raw file; drop format")
    return {
        "name": p.name,
        "digest": "",
        "size_bytes": size,
        "format": "raw" if p.ext4 else (p.format or "qcow2"),
        "mode": "BLANK",
        "virtual_size_bytes": size,
        "ext4": bool(p.ext4),
    }


def disk_layout(
    image: str,
    partitions: Sequence[Mapping[str, Any]],
    extra: Sequence[common_pb2.Partition],
    grow: Mapping[str, int],
    lim: LimitsConfig,
) -> list[dict[str, Any]]:
    """The partitions of one workspace: the image's, cow ones grown, extra blank ones added.

    Each is a dict like the image's (name, digest, size_bytes, format, mode,
    virtual_size_bytes, ext4); it is what the agent is told to build.
    """
    out = [dict(p) for p in partitions]
    by_name = {str(p["name"]): p for p in out}
    for name, new_size in sorted(grow.items()):
        what = f"grow {name!r}"
        p = by_name.get(name)
        if p is None:
            have = ", ".join(sorted(by_name)) or "none"
            raise InvalidArgument(f"{what}: image {image} has no such partition (it has: {have})")
        mode = str(p.get("mode", "COW"))
        if mode != "COW":
            raise InvalidArgument(
                f"{what}: the partition is {mode.lower()}; only cow partitions can grow"
            )
        fmt = str(p.get("format", "raw"))
        base = int(p.get("virtual_size_bytes") or (p.get("size_bytes", 0) if fmt == "raw" else 0))
        if base <= 0:
            raise InvalidArgument(
                f"{what}: image {image} does not record the partition's virtual size; "
                "re-import the image to grow it"
            )
        if new_size < base:
            raise InvalidArgument(
                f"{what}: {new_size} bytes is smaller than the image's {base} bytes; "
                "partitions can grow, not shrink"
            )
        if new_size > lim.max_grow_bytes:
            raise InvalidArgument(
                f"{what}: {new_size} bytes is more than the limit of {lim.max_grow_bytes}"
            )
        if new_size % 512:
            raise InvalidArgument(f"{what}: {new_size} bytes is not a multiple of 512")
        p["virtual_size_bytes"] = new_size
    if len(extra) > lim.max_extra_partitions:
        raise InvalidArgument(
            f"at most {lim.max_extra_partitions} extra partitions per workspace, got {len(extra)}"
        )
    for x in extra:
        what = f"extra partition {x.name!r}"
        if not PARTITION_NAME_RE.match(x.name):
            raise InvalidArgument(
                f"{what}: invalid name (1-32 of a-z, 0-9, '_', '-'; first a-z or 0-9)"
            )
        if x.name in by_name:
            raise InvalidArgument(f"{what}: the image (or another extra) already has that name")
        if x.mode not in (common_pb2.PARTITION_MODE_UNSPECIFIED, common_pb2.PARTITION_MODE_BLANK):
            raise InvalidArgument(
                f"{what}: only blank partitions can be added (cow and readonly ones come "
                "from the image)"
            )
        if x.digest:
            raise InvalidArgument(f"{what}: a blank partition has no content (no digest)")
        size = x.virtual_size_bytes or x.size_bytes
        if size <= 0:
            raise InvalidArgument(f"{what}: give its size in bytes (size_bytes)")
        if size > lim.max_grow_bytes:
            raise InvalidArgument(
                f"{what}: {size} bytes is more than the limit of {lim.max_grow_bytes}"
            )
        p = blank_spec(x, what, size)
        out.append(p)
        by_name[x.name] = p
    if len(out) > MAX_PARTITIONS:
        raise InvalidArgument(
            f"a workspace has at most {MAX_PARTITIONS} partitions; this one would have {len(out)}"
        )
    return out


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
        # The site's image trust policy (workspace/service/trust.py), set by the Service;
        # None: no signature checks (cores built directly, e.g. in unit tests).
        self.trust: TrustStore | None = None

    # -- helpers -----------------------------------------------------------------------

    def _nics(self, s: Session, ids: Sequence[str]) -> dict[str, list[common_pb2.Nic]]:
        return {
            wid: [
                common_pb2.Nic(
                    network=net.name,
                    ip=alloc.ip,
                    mac=alloc.mac,
                    prefix_len=ipam.Pool(net.subnet, net.gateway, "", "", "").prefix_len,
                    gateway=net.gateway,
                )
                for alloc, net in pairs
            ]
            for wid, pairs in allocations(s, ids).items()
        }

    def _protos(self, s: Session, rows: Sequence[Workspace]) -> list[common_pb2.Workspace]:
        nics = self._nics(s, [w.id for w in rows])
        return [convert.workspace(w, nics[w.id]) for w in rows]

    def _resolve(self, s: Session, owner: str, ref: str) -> Workspace:
        return resolve_owned(s, Workspace, owner, ref, "workspace", "ws list")

    def _publish(self, protos: Iterable[common_pb2.Workspace], nodes: Iterable[str]) -> None:
        freed = False
        for p in protos:
            self.notifier.workspace_changed(p)
            freed = freed or p.state == common_pb2.WORKSPACE_STATE_TERMINATED
        self.notifier.node_changed(*nodes)
        if freed:
            self.notifier.capacity_changed()

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
        fields: list[object] = [
            req.name,
            req.image,
            req.cpus,
            req.memory_mib,
            list(req.networks),
            hashlib.sha256(req.user_data).hexdigest(),
            sorted(req.requirements.items()),
            req.wait_for_capacity_s,
        ]
        if req.extra_partitions or req.grow_bytes:
            # Only when used, so the hashes of requests without them stay as they were.
            extra = [
                [x.name, x.mode, x.size_bytes, x.virtual_size_bytes, x.format, x.ext4]
                for x in req.extra_partitions
            ]
            fields += [extra, sorted(req.grow_bytes.items())]
        canon = json.dumps(fields)
        return hashlib.sha256(canon.encode()).hexdigest()

    def create(
        self, owner: str, req: workspaces_pb2.CreateWorkspaceRequest
    ) -> common_pb2.Workspace:
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
            if req.wait_for_capacity_s < 0:
                raise InvalidArgument("wait_for_capacity_s must not be negative")
            cpus, memory, networks = self._validate_create(s, owner, req)
            wid = uuid.uuid4().hex[:12]
            name = req.name or f"ws-{wid[:8]}"
            ws = self.new_row(
                s,
                owner,
                wid,
                name,
                req.image,
                cpus,
                memory,
                networks,
                dict(req.requirements),
                req.user_data,
                req.request_id or uuid.uuid4().hex,
                request_hash,
                extra_partitions=req.extra_partitions,
                grow_bytes=req.grow_bytes,
            )
            touched = self.admit(s, [ws], scheduler.Affinity.NONE, req.wait_for_capacity_s, name)
            proto = self._protos(s, [ws])[0]
        if touched:
            log.info("workspace %s (%s) scheduled on node %s", wid, name, ws.node)
        else:
            log.info("workspace %s (%s) waits for capacity: %s", wid, name, ws.reason)
        self._publish([proto], touched)
        return proto

    def new_row(
        self,
        s: Session,
        owner: str,
        wid: str,
        name: str,
        image_name: str,
        cpus: int,
        memory_mib: int,
        networks: list[str],
        requirements: dict[str, str],
        user_data: bytes,
        request_id: str,
        request_hash: str,
        cluster: str = "",
        role: str = "",
        extra_partitions: Sequence[common_pb2.Partition] = (),
        grow_bytes: Mapping[str, int] | None = None,
    ) -> Workspace:
        """A PENDING workspace row (not placed yet); validates the image, the name and
        the request's disk options (extra blank partitions, grown cow ones)."""
        from workspace.store import Image

        image = s.get(Image, image_name)
        if image is None:
            raise NotFound(f"image {image_name!r} not found; `ws image list` shows them")
        if self.trust is not None:
            self.trust.check_launch(s, owner, image, "create", workspace_id=wid)
        partitions = disk_layout(
            image.name, image.partitions, extra_partitions, grow_bytes or {}, self.cfg.limits
        )
        clash = s.execute(
            select(Workspace.id).where(
                Workspace.owner == owner,
                Workspace.name == name,
                Workspace.state != State.TERMINATED.value,
            )
        ).first()
        if clash is not None:
            raise AlreadyExists(f"you already have a workspace named {name!r} ({clash[0]})")
        now = self.clock()
        ws = Workspace(
            id=wid,
            name=name,
            owner=owner,
            request_id=request_id,
            request_hash=request_hash,
            image=image.name,
            image_spec={
                "partitions": partitions,
                "kernel_digest": image.kernel_digest,
                "initrd_digest": image.initrd_digest,
                "cmdline": image.cmdline,
            },
            cpus=cpus,
            memory_mib=memory_mib,
            claimed_cpus=0,
            claimed_memory_mib=0,
            node="",
            state=State.PENDING.value,
            desired_state=Desired.RUNNING.value,
            reason="",
            stop_timeout_s=self.cfg.default_stop_timeout_s,
            user_data=user_data,
            networks=networks,
            requirements=requirements,
            wait_deadline=0.0,
            cluster=cluster,
            role=role,
            created_at=now,
            updated_at=now,
        )
        s.add(ws)
        s.flush()
        return ws

    def admit(
        self,
        s: Session,
        rows: list[Workspace],
        affinity: scheduler.Affinity,
        wait_s: int,
        label: str,
    ) -> list[str]:
        """Place ``rows`` now, or queue them (wait_s > 0), or raise RESOURCE_EXHAUSTED.

        Requests already waiting keep their turn: a newcomer may only use nodes that the
        oldest waiting request could never use, so it cannot delay it.
        """
        from workspace.service.queue import useless_to_head

        allowed, ahead = useless_to_head(s, self.cfg, exclude={w.id for w in rows})
        try:
            return place_rows(s, self.cfg, rows, affinity, allowed)
        except NoPlacement as exc:
            why = exc.message
            if ahead:
                why += f" (without delaying the {ahead} request(s) waiting for capacity)"
            if wait_s <= 0:
                raise ResourceExhausted(f"cannot place {label}: {why}") from exc
            deadline = self.clock() + wait_s
            for w in rows:
                w.reason = f"waiting for capacity: {why}"  # queue._WAITING
                w.wait_deadline = deadline
            return []

    @staticmethod
    def image_users(s: Session, image_name: str) -> list[Workspace]:
        """Live (not TERMINATED) workspaces made from image ``image_name``."""
        return list(
            s.execute(
                select(Workspace)
                .where(Workspace.image == image_name, Workspace.state != State.TERMINATED.value)
                .order_by(Workspace.created_at, Workspace.id)
            )
            .scalars()
            .all()
        )

    # -- read --------------------------------------------------------------------------

    def get(self, owner: str, ref: str) -> common_pb2.Workspace:
        with self.store.read() as s:
            return self._protos(s, [self._resolve(s, owner, ref)])[0]

    def list(
        self,
        owner: str | None,
        include_terminated: bool,
        page_size: int = 0,
        page_token: str = "",
    ) -> list[common_pb2.Workspace]:
        """Oldest first; with page_size, at most that many after the page token's row."""
        return [*self.list_page(owner, include_terminated, page_size, page_token)[0]]

    def list_page(
        self,
        owner: str | None,
        include_terminated: bool,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[Sequence[common_pb2.Workspace], str]:
        """(one page, the token of the next page or "" after the last)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        with self.store.read() as s:
            q = select(Workspace).order_by(Workspace.created_at, Workspace.id)
            if owner is not None:
                q = q.where(Workspace.owner == owner)
            if not include_terminated:
                q = q.where(Workspace.state != State.TERMINATED.value)
            if page_token:
                created, wid = _decode_token(page_token)
                q = q.where(
                    (Workspace.created_at > created)
                    | ((Workspace.created_at == created) & (Workspace.id > wid))
                )
            if page_size:
                q = q.limit(page_size + 1)
            rows = list(s.execute(q).scalars().all())
            more = bool(page_size) and len(rows) > page_size
            rows = rows[:page_size] if page_size else rows
            token = _encode_token(rows[-1].created_at, rows[-1].id) if more else ""
            return self._protos(s, rows), token

    # -- user operations ---------------------------------------------------------------

    def operate(
        self, owner: str, ref: str, op: Op, timeout_s: int = 0, force: bool = False
    ) -> common_pb2.Workspace:
        with self.store.write() as s:
            ws = self._resolve(s, owner, ref)
            if not ws.node and op is not Op.DESTROY and ws.state == State.PENDING.value:
                raise FailedPrecondition(
                    f"workspace {ws.name} is waiting for capacity; destroy it to cancel"
                )
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
            from workspace.service.clusters import refresh

            more, nodes = refresh(self, s, {ws.cluster})
            proto = self._protos(s, [ws])[0]
            others = self._protos(s, more)
        log.info("workspace %s (%s): %s requested", ws.id, ws.name, op.value)
        self._publish([proto, *others], {ws.node} | nodes)
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


def _encode_token(created_at: float, wid: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{wid}".encode()).decode()


def _decode_token(token: str) -> tuple[float, str]:
    try:
        created, _, wid = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return float(created), wid
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not one this service gave out") from exc
