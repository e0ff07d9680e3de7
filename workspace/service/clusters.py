"""Virtual clusters: members placed all-or-nothing, managed and reported as one."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace import scheduler
from workspace.domain.states import Desired, Op, State, apply_op
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    WorkspaceError,
)
from workspace.service import convert
from workspace.service.core import Core, resolve_owned
from workspace.store import Cluster, Node, Workspace
from workspace.v1 import clusters_pb2, workspaces_pb2

log = logging.getLogger("workspace.service.clusters")

CLUSTER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
ROLE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$")
MAX_MEMBERS = 1000


def affinity_name(value: int) -> str:
    return clusters_pb2.Affinity.Name(value).removeprefix("AFFINITY_")  # type: ignore[arg-type]


def cluster_state(members: list[Workspace], current: str) -> tuple[str, str]:
    """The cluster's state (and reason) from its members' states."""
    if current == "TERMINATED" or not members:
        return current, ""
    states = [State(m.state) for m in members]
    if all(s is State.TERMINATED for s in states):
        return "TERMINATED", ""
    if any(m.desired_state == Desired.TERMINATED.value for m in members):
        return "TERMINATING", ""
    bad = [m for m in members if m.state in (State.FAILED.value, State.LOST.value)]
    if bad:
        m = bad[0]
        return "FAILED", f"member {m.name} is {m.state}: {m.reason}"
    if all(s is State.PENDING for s in states):
        return "PENDING", members[0].reason
    if all(s is State.RUNNING for s in states):
        return "RUNNING", ""
    if all(s is State.STOPPED for s in states):
        return "STOPPED", ""
    if any(s is State.STOPPING for s in states):
        return "STOPPING", ""
    return "STARTING", ""


def refresh(core: Core, s: Session, cluster_ids: set[str]) -> tuple[list[Workspace], set[str]]:
    """Recompute the state of these clusters; apply TEARDOWN policies.

    Returns the member rows changed by a teardown and the nodes to notify."""
    changed: list[Workspace] = []
    nodes: set[str] = set()
    for cid in sorted(i for i in cluster_ids if i):
        c = s.get(Cluster, cid)
        if c is None:
            continue
        members = list(s.execute(select(Workspace).where(Workspace.cluster == cid)).scalars())
        state, reason = cluster_state(members, c.state)
        if state == "FAILED" and c.on_failure == "TEARDOWN":
            log.warning("cluster %s (%s) failed (%s): tearing it down", cid, c.name, reason)
            for m in members:
                if m.desired_state != Desired.TERMINATED.value and m.state != "TERMINATED":
                    _destroy_member(core, s, m, f"cluster torn down: {reason}")
                    changed.append(m)
                    nodes.add(m.node)
            state = "TERMINATING"
            reason = f"torn down after a failure: {reason}"
        if (state, reason) != (c.state, c.reason):
            if state == "FAILED":
                log.warning("cluster %s (%s) FAILED: %s", cid, c.name, reason)
            c.state, c.reason = (
                state,
                reason or (c.reason if state in ("TERMINATING", "TERMINATED") else ""),
            )
            c.updated_at = core.clock()
    return changed, nodes


def _destroy_member(core: Core, s: Session, m: Workspace, reason: str) -> None:
    m.desired_state = Desired.TERMINATED.value
    m.updated_at = core.clock()
    node = s.get(Node, m.node) if m.node else None
    if node is None or node.state == "DOWN":
        core._release(s, m, reason)
    else:
        m.state = State.STOPPING.value
        m.reason = reason


class Clusters:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.cfg = core.cfg

    # -- helpers -------------------------------------------------------------------------

    def _resolve(self, s: Session, owner: str, ref: str) -> Cluster:
        return resolve_owned(s, Cluster, owner, ref, "cluster", "ws cluster list")

    def _members(self, s: Session, cid: str) -> list[Workspace]:
        return list(
            s.execute(
                select(Workspace)
                .where(Workspace.cluster == cid)
                .order_by(Workspace.role, Workspace.name)
            ).scalars()
        )

    def _proto(self, s: Session, c: Cluster) -> clusters_pb2.Cluster:
        return clusters_pb2.Cluster(
            id=c.id,
            name=c.name,
            owner=c.owner,
            state=clusters_pb2.ClusterState.Value(f"CLUSTER_STATE_{c.state}"),
            reason=c.reason,
            members=self.core._protos(s, self._members(s, c.id)),
            affinity=clusters_pb2.Affinity.Value(f"AFFINITY_{c.affinity}"),
            on_failure=clusters_pb2.FailurePolicy.Value(f"FAILURE_POLICY_{c.on_failure}"),
            request_id=c.request_id,
            created_at=convert.ts(c.created_at),
            updated_at=convert.ts(c.updated_at),
            spec=[_member_proto(m) for m in c.spec],
        )

    # -- create --------------------------------------------------------------------------

    def create(self, owner: str, req: clusters_pb2.CreateClusterRequest) -> clusters_pb2.Cluster:
        request_hash = hashlib.sha256(req.SerializeToString(deterministic=True)).hexdigest()
        spec = self._validate(req)
        with self.store.write() as s:
            if req.request_id:
                prior = s.execute(
                    select(Cluster).where(
                        Cluster.owner == owner, Cluster.request_id == req.request_id
                    )
                ).scalar_one_or_none()
                if prior is not None:
                    if prior.request_hash != request_hash:
                        raise InvalidArgument(
                            f"request id {req.request_id!r} was already used "
                            "for a different request; use a new id"
                        )
                    return self._proto(s, prior)
            clash = s.execute(
                select(Cluster.id).where(
                    Cluster.owner == owner, Cluster.name == req.name, Cluster.state != "TERMINATED"
                )
            ).first()
            if clash is not None:
                raise AlreadyExists(f"you already have a cluster named {req.name!r}")
            cid = "c" + uuid.uuid4().hex[:11]
            now = self.core.clock()
            affinity = affinity_name(req.affinity)
            on_failure = (
                "TEARDOWN" if req.on_failure == clusters_pb2.FAILURE_POLICY_TEARDOWN else "KEEP"
            )
            c = Cluster(
                id=cid,
                name=req.name,
                owner=owner,
                request_id=req.request_id or uuid.uuid4().hex,
                request_hash=request_hash,
                state="PENDING",
                reason="",
                affinity=affinity,
                on_failure=on_failure,
                spec=spec,
                wait_deadline=0.0,
                created_at=now,
                updated_at=now,
            )
            s.add(c)
            rows: list[Workspace] = []
            for m in req.members:
                for i in range(m.count or 1):
                    name = f"{req.name}-{m.role}-{i}"
                    one = workspaces_pb2.CreateWorkspaceRequest(
                        name=name,
                        image=m.image,
                        cpus=m.cpus,
                        memory_mib=m.memory_mib,
                        networks=m.networks,
                        user_data=m.user_data,
                    )
                    try:
                        cpus, memory, networks = self.core._validate_create(s, owner, one)
                    except WorkspaceError as exc:
                        raise type(exc)(
                            f"cluster {req.name}, member {m.role}: {exc.message}"
                        ) from exc
                    rows.append(
                        self.core.new_row(
                            s,
                            owner,
                            uuid.uuid4().hex[:12],
                            name,
                            m.image,
                            cpus,
                            memory,
                            networks,
                            dict(m.requirements),
                            m.user_data,
                            uuid.uuid4().hex,
                            "",
                            cid,
                            m.role,
                        )
                    )
            touched = self.core.admit(
                s,
                rows,
                scheduler.Affinity[affinity],
                req.wait_for_capacity_s,
                f"cluster {req.name}",
            )
            c.state, c.reason = cluster_state(rows, c.state)
            if not touched:
                c.wait_deadline = rows[0].wait_deadline
            proto = self._proto(s, c)
        log.info(
            "cluster %s (%s): %d member(s) %s",
            cid,
            req.name,
            len(rows),
            f"placed on {sorted(set(touched))}" if touched else "waiting for capacity",
        )
        self.core._publish(proto.members, touched)
        return proto

    def _validate(self, req: clusters_pb2.CreateClusterRequest) -> list[dict[str, Any]]:
        if not CLUSTER_NAME_RE.match(req.name):
            raise InvalidArgument(
                f"cluster name {req.name!r} is not valid: 1-40 lowercase letters, digits and '-'"
            )
        if not req.members:
            raise InvalidArgument(f"cluster {req.name}: no members")
        if req.wait_for_capacity_s < 0:
            raise InvalidArgument("wait_for_capacity_s must not be negative")
        roles: set[str] = set()
        total = 0
        for m in req.members:
            if not ROLE_RE.match(m.role):
                raise InvalidArgument(
                    f"cluster {req.name}: role {m.role!r} is not valid: "
                    "1-16 lowercase letters, digits and '-'"
                )
            if m.role in roles:
                raise InvalidArgument(f"cluster {req.name}: role {m.role!r} is given twice")
            roles.add(m.role)
            if m.count < 0:
                raise InvalidArgument(f"cluster {req.name}, member {m.role}: count must be >= 1")
            total += m.count or 1
        if total > MAX_MEMBERS:
            raise InvalidArgument(f"cluster {req.name}: {total} members; at most {MAX_MEMBERS}")
        return [
            {
                "role": m.role,
                "image": m.image,
                "cpus": m.cpus,
                "memory_mib": m.memory_mib,
                "count": m.count or 1,
                "networks": list(m.networks),
                "requirements": dict(m.requirements),
                "user_data_hex": m.user_data.hex(),
            }
            for m in req.members
        ]

    # -- read ----------------------------------------------------------------------------

    def get(self, owner: str, ref: str) -> clusters_pb2.Cluster:
        with self.store.read() as s:
            return self._proto(s, self._resolve(s, owner, ref))

    def list(self, owner: str, include_terminated: bool) -> list[clusters_pb2.Cluster]:
        with self.store.read() as s:
            q = select(Cluster).where(Cluster.owner == owner).order_by(Cluster.created_at)
            if not include_terminated:
                q = q.where(Cluster.state != "TERMINATED")
            return [self._proto(s, c) for c in s.execute(q).scalars()]

    # -- operations ----------------------------------------------------------------------

    def operate(self, owner: str, ref: str, op: Op) -> clusters_pb2.Cluster:
        with self.store.write() as s:
            c = self._resolve(s, owner, ref)
            members = self._members(s, c.id)
            changed: list[Workspace] = []
            refusals: list[str] = []
            for m in members:
                if op is Op.DESTROY and m.desired_state == Desired.TERMINATED.value:
                    continue
                try:
                    t = apply_op(op, State(m.state), Desired(m.desired_state), m.name)
                except FailedPrecondition as exc:
                    refusals.append(exc.message)
                    continue
                if op is Op.DESTROY:
                    _destroy_member(self.core, s, m, "")
                else:
                    m.desired_state, m.state = t.desired.value, t.state.value
                    m.reason = "" if op is Op.START else m.reason
                    m.updated_at = self.core.clock()
                changed.append(m)
            if not changed:
                why = refusals[0] if refusals else "it has no member to act on"
                raise FailedPrecondition(f"cannot {op.value} cluster {c.name}: {why}")
            if op is Op.START and c.state == "FAILED":
                c.state = "STARTING"
            more, nodes = refresh(self.core, s, {c.id})
            proto = self._proto(s, c)
            protos = self.core._protos(s, changed + more)
        log.info(
            "cluster %s (%s): %s requested for %d member(s)", c.id, c.name, op.value, len(changed)
        )
        self.core._publish(protos, {m.node for m in changed} | nodes)
        return proto


def _member_proto(m: dict[str, Any]) -> clusters_pb2.ClusterMember:
    return clusters_pb2.ClusterMember(
        role=str(m["role"]),
        image=str(m["image"]),
        cpus=int(m["cpus"]),
        memory_mib=int(m["memory_mib"]),
        count=int(m["count"]),
        networks=list(m["networks"]),
        requirements=dict(m["requirements"]),
        user_data=bytes.fromhex(str(m.get("user_data_hex", ""))),
    )
