"""Create a workspace: one operation in four steps.

1. idempotency: a request id seen before returns the workspace it made (or is refused
   if the request differs);
2. argument checks (``check_spec``): what can be said without the store;
3. prerequisites (``check_networks``, ``prerequisites``): the networks and the image
   exist, the trust policy allows the image, the disk options fit it, the name is free;
4. execution (``insert_row``, then ``admission.admit``): the row (with what the image's
   context asks for: ops/seeds.py ``contextualize``, which also checks the user-data),
   placed, queued or refused in the same transaction; the events go out after the commit.

Cluster creates (ops/clusters.py) run steps 2-4 per member (``new_row`` is 3 + 4's row).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar, cast

from sqlalchemy import Table, bindparam, inspect, select
from sqlalchemy.orm import Session

from images.model import ImageSpec
from workspace import scheduler
from workspace.config import LimitsConfig
from workspace.domain.layout import disk_layout
from workspace.domain.model import CreateRequest, CreateSpec, WorkspaceView
from workspace.domain.states import Desired, State
from workspace.errors import AlreadyExists, InvalidArgument, NotFound
from workspace.identity import Identity
from workspace.log import about
from workspace.ops import group_commit, grow_rights, netpolicy, seeds, trust
from workspace.ops.admission import admit
from workspace.ops.image_refs import may_use, unknown_image
from workspace.ops.leases import lease_end
from workspace.ops.projects import (
    Scope,
    as_identity,
    check_workspace_quota,
    resolve_project,
    scope,
)
from workspace.ops.unit import Env, UnitOfWork
from workspace.store import Image, Network, Workspace
from workspace.store.held import held
from workspace.store.mapping import (
    bind_spec,
    image_spec,
    insert_workspace,
    new_workspace,
    workspace_views,
)
from workspace.store.prepared import Prepared

log = logging.getLogger("workspace.ops.create")
T = TypeVar("T")

# A workspace name becomes the VM's hostname: one DNS label (its length: limits.max_name_len).
NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
# A name resolvers read as an address (inet_aton: "123" is 0.0.0.123, "0x7f" 0.0.0.127),
# which a hostname cannot be (RFC 1123 2.1: a host name is never all-numeric).
NUMBER_RE = re.compile(r"[0-9]+|0x[0-9a-f]+")
DEFAULT_MEMORY_MIB = 512


# What the id of a workspace or a cluster looks like: a name like it is refused, since
# `ws show NAME` (any reference) would take it for another one's id.
ID_RE = re.compile(r"[0-9a-f]{12}")


def check_not_id(kind: str, name: str) -> None:
    if ID_RE.fullmatch(name):
        raise InvalidArgument(
            f"{kind} name {name!r} looks like an id (12 hexadecimal digits), and a "
            "reference to it would be taken for one; choose another name"
        )


def check_name(name: str, lim: LimitsConfig) -> None:
    if len(name) > lim.max_name_len or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"name {name!r} is not valid: use 1-{lim.max_name_len} lowercase letters, "
            "digits and '-' (it becomes the VM's hostname)"
        )
    if NUMBER_RE.fullmatch(name):
        raise InvalidArgument(
            f"name {name!r} is not valid: it becomes the VM's hostname, and resolvers read "
            "a name of digits alone (or 0x and hex digits) as an IP address; put a letter "
            f"in it (e.g. 'ws-{name}')"
        )
    check_not_id("workspace", name)


def check_wait(wait_s: int, lim: LimitsConfig) -> None:
    """A wait for capacity of 0 to ``max_wait_for_capacity_s``, or InvalidArgument."""
    if not 0 <= wait_s <= lim.max_wait_for_capacity_s:
        raise InvalidArgument(
            f"wait_for_capacity_s must be between 0 and {lim.max_wait_for_capacity_s} s "
            f"(limits.max_wait_for_capacity_s), got {wait_s}"
        )


def check_size(cpus: int, memory_mib: int, lim: LimitsConfig) -> None:
    """A workspace's size within the site's limits (at create and at a resize)."""
    if not 1 <= cpus <= lim.max_cpus:
        raise InvalidArgument(
            f"cpus must be between 1 and {lim.max_cpus}, got {cpus} (the site's limits.max_cpus)"
        )
    if not lim.min_memory_mib <= memory_mib <= lim.max_memory_mib:
        raise InvalidArgument(
            f"memory_mib must be between {lim.min_memory_mib} and {lim.max_memory_mib}, "
            f"got {memory_mib} (the site's limits.min_memory_mib and max_memory_mib)"
        )


def check_spec(spec: CreateSpec, lim: LimitsConfig) -> CreateSpec:
    """The spec with its defaults filled in, or InvalidArgument saying what is wrong."""
    if spec.name:
        check_name(spec.name, lim)
    cpus = spec.cpus or 1
    memory = spec.memory_mib or DEFAULT_MEMORY_MIB
    check_size(cpus, memory, lim)
    if len(spec.user_data) > lim.max_user_data_bytes:
        raise InvalidArgument(
            f"user-data is {len(spec.user_data)} bytes, more than the limit of "
            f"{lim.max_user_data_bytes} bytes (limits.max_user_data_bytes)"
        )
    if not spec.image:
        raise InvalidArgument("an image is required (`ws image list` shows them)")
    if len(spec.networks) > lim.max_nics:
        raise InvalidArgument(
            f"at most {lim.max_nics} networks per workspace (the site's limits.max_nics), "
            f"got {len(spec.networks)}"
        )
    twice = sorted({n for n in spec.networks if spec.networks.count(n) > 1})
    if twice:
        raise InvalidArgument(f"network {twice[0]!r} is named twice (one NIC per network)")
    spec.limits.validate()
    return replace(spec, cpus=cpus, memory_mib=memory)


def check_networks(s: Session, networks: tuple[str, ...]) -> tuple[str, ...]:
    """The networks a workspace joins ("default", if it exists and none is named); each
    must exist."""
    if not networks and held(s, Network, "default") is not None:
        networks = ("default",)
    for n in networks:
        if held(s, Network, n) is None:
            raise NotFound(f"network {n!r} does not exist; `ws-admin network list` shows them")
    return networks


def request_hash(req: CreateRequest) -> str:
    """sha256 of what was asked, to refuse a reused request id with other parameters."""
    spec = req.spec
    fields: list[object] = [
        spec.name,
        spec.image,
        spec.cpus,
        spec.memory_mib,
        list(spec.networks),
        hashlib.sha256(spec.user_data).hexdigest(),
        sorted(spec.requirements.items()),
        req.wait_for_capacity_s,
    ]
    if spec.extra_partitions or spec.grow_bytes:
        # Only when used, so the hashes of requests without them stay as they were.
        extra = [
            [x.name, x.mode.value, x.size_bytes, x.virtual_size_bytes, x.format, x.ext4]
            for x in spec.extra_partitions
        ]
        fields += [extra, sorted(spec.grow_bytes.items())]
    if req.project:
        fields += [["project", req.project]]
    if spec.lease_s:
        fields += [["lease_s", spec.lease_s]]
    if spec.connectivity is not None or spec.allow or spec.limits:
        fields += [
            [
                "policy",
                spec.connectivity.value if spec.connectivity else "",
                [str(r) for r in sorted(set(spec.allow))],
                spec.limits.as_dict(),
            ]
        ]
    if spec.preemptible:
        fields += [["preemptible"]]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


# The create path's queries, built once (building one costs more than running it).
_WS = cast(Table, Workspace.__table__).c
_PRIOR = Prepared(
    select(_WS.id, _WS.request_hash).where(
        _WS.owner == bindparam("owner"), _WS.request_id == bindparam("request_id")
    )
)
_CLASH = Prepared(
    select(_WS.id)
    .where(
        _WS.owner == bindparam("owner"),
        _WS.name == bindparam("name"),
        _WS.state != State.TERMINATED.value,
    )
    .limit(1)
)


def find_prior(s: Session, owner: str, request_id: str, hash_: str) -> Workspace | None:
    """The workspace an earlier request with this id made, if any."""
    if not request_id:
        return None
    found = _PRIOR.first(s.connection(), {"owner": owner, "request_id": request_id})
    if found is None:
        return None
    if found[1] != hash_:
        raise InvalidArgument(
            f"request id {request_id!r} was already used for a different request; use a new id"
        )
    return s.get(Workspace, found[0])


def prerequisites(env: Env, s: Session, sc: Scope, wid: str, spec: CreateSpec) -> ImageSpec:
    """What the store must allow for a checked ``spec`` whose networks exist: the image
    exists and the caller may use it, the trust policy allows it, the disk options fit
    it, the name is free. Returns the image as the workspace binds to it (its disks
    laid out)."""
    owner = sc.name
    image = held(s, Image, spec.image)
    if image is None or not may_use(sc, image):
        raise unknown_image(s, spec.image, sc)
    source = image_spec(image)
    partitions = disk_layout(
        image.name, source.partitions, spec.extra_partitions, spec.grow_bytes, env.cfg.limits
    )
    if any(isinstance(w, Workspace) for w in (*s.new, *s.dirty)):
        s.flush()  # rows of this transaction not written yet count too
    clash = _CLASH.first(s.connection(), {"owner": owner, "name": spec.name})
    if clash is not None:
        raise AlreadyExists(f"you already have a workspace named {spec.name!r} ({clash[0]})")
    # Last: a request refused for what it asked (its disks, its name) takes no trust
    # decision, which the audit would keep naming a workspace that never was.
    if env.check_trust:
        trust.check_launch(env, s, owner, image, "create", workspace_id=wid, name=spec.name)
    return replace(source, partitions=partitions)


def insert_row(
    env: Env,
    s: Session,
    owner: str,
    wid: str,
    spec: CreateSpec,
    bound: ImageSpec,
    request_id: str,
    hash_: str,
    project: str = "",
) -> Workspace:
    """The PENDING workspace row (not placed yet), flushed."""
    ws = build_row(env, s, owner, wid, spec, bound, request_id, hash_, project)
    s.add(ws)
    s.flush()
    return ws


def build_row(
    env: Env,
    s: Session,
    owner: str,
    wid: str,
    spec: CreateSpec,
    bound: ImageSpec,
    request_id: str,
    hash_: str,
    project: str = "",
) -> Workspace:
    """The PENDING workspace row (not placed yet), not in the session: placement inserts
    it once placed (ops/placement.py ``place_rows``, store/mapping.py ``insert_workspace``)."""
    now = env.clock()
    ws = new_workspace(
        id=wid,
        name=spec.name,
        owner=owner,
        project=project,
        lease_expires_at=lease_end(s, project, spec.lease_s, now, env.cfg.limits.max_lease_s),
        lease_warned=False,
        request_id=request_id,
        request_hash=hash_,
        image=bound.image,
        cpus=spec.cpus,
        memory_mib=spec.memory_mib,
        claimed_cpus=0,
        claimed_memory_mib=0,
        node="",
        state=State.PENDING.value,
        desired_state=Desired.RUNNING.value,
        reason="",
        wait_reason="",
        stop_timeout_s=env.cfg.default_stop_timeout_s,
        user_data=spec.user_data,
        networks=list(spec.networks),
        requirements=dict(spec.requirements),
        wait_deadline=0.0,
        cluster=spec.cluster,
        role=spec.role,
        preemptible=spec.preemptible,
        preempt_grace_s=-1,
        preempted_by="",
        created_at=now,
        updated_at=now,
    )
    bind_spec(ws, bound)
    netpolicy.apply(env.cfg, s, ws, spec, project)
    image = held(s, Image, bound.image)
    if image is not None:  # prerequisites found it
        seeds.contextualize(env.cfg, s, ws, image)
        if not spec.cluster:  # a member's bound needs its roster: ops/clusters.py
            seeds.set_bound(s, ws)
    return ws


def new_row(
    env: Env,
    s: Session,
    sc: Scope,
    spec: CreateSpec,
    request_id: str,
    hash_: str,
    project: str = "",
) -> Workspace:
    """Prerequisites, then the row: a checked ``spec`` (with its networks) made a PENDING
    workspace of the caller, in ``project``."""
    wid = uuid.uuid4().hex[:12]
    bound = prerequisites(env, s, sc, wid, spec)
    return insert_row(env, s, sc.name, wid, spec, bound, request_id, hash_, project)


def create(env: Env, who: Identity | str, req: CreateRequest) -> WorkspaceView:
    """Create one workspace of the caller: placed now, queued (``wait_for_capacity_s``),
    or refused (also when it would take its project over a quota).

    The argument checks run inside the transaction, after the idempotency check, so a
    retried request always gets what it got the first time. Creates arriving together
    share one transaction and one durable commit, each in a SAVEPOINT of its own
    (ops/group_commit.py); each is answered after that commit."""
    hash_ = request_hash(req)
    return group_commit.of(env).run(env, lambda u: create_in(env, u, who, req, hash_))


def batch_scope(u: UnitOfWork, who: Identity | str) -> Scope:
    """``who``'s scope, read once per transaction (creates change no memberships)."""
    ident = as_identity(who)
    scopes: dict[Identity, Scope] = u.s.info.setdefault("create.scopes", {})
    found = scopes.get(ident)
    if found is None:
        found = scopes[ident] = scope(u.s, ident)
    return found


def create_in(
    env: Env, u: UnitOfWork, who: Identity | str, req: CreateRequest, hash_: str
) -> Callable[[], WorkspaceView]:
    """Steps 1-4 of a create in the unit of work ``u``; returns what answers the caller
    once ``u`` committed."""
    wid = uuid.uuid4().hex[:12]
    sc = batch_scope(u, who)
    owner = sc.name
    # 1. idempotency
    prior = find_prior(u.s, owner, req.request_id, hash_)
    if prior is not None:
        view = workspace_views(u.s, [prior])[0]
        return lambda: view
    # 2. arguments
    check_wait(req.wait_for_capacity_s, env.cfg.limits)
    spec = check_spec(req.spec, env.cfg.limits)
    # 3. prerequisites
    spec = replace(
        spec, name=spec.name or f"ws-{wid[:8]}", networks=check_networks(u.s, spec.networks)
    )
    project = resolve_project(
        u.s, sc.who, req.project, sc.projects, require=env.cfg.require_project
    )
    bound = prerequisites(env, u.s, sc, wid, spec)
    # 4. execution; the events go out after the commit. The row is inserted once placed
    # (one INSERT: ops/placement.py) or queued; in a project first, its quotas count it.
    ws = build_row(
        env, u.s, owner, wid, spec, bound, req.request_id or uuid.uuid4().hex, hash_, project
    )
    u.changed(ws)  # a refusal names it (ops/group_commit.py)
    if project:
        insert_workspace(u.s, ws)
        check_workspace_quota(u.s, project, f"cannot create {spec.name}", spec.preemptible, (wid,))
    touched = admit(env, u.s, [ws], scheduler.Affinity.NONE, req.wait_for_capacity_s, spec.name)
    if not touched:  # queued: placed only while its asker may make it (ops/queue.py)
        ws.asked_by = grow_rights.stored(sc.who)
    if inspect(ws).transient:  # queued
        insert_workspace(u.s, ws)
    u.nodes(*touched)

    def answer() -> WorkspaceView:
        view = u.view(wid)
        if touched:
            log.info(
                "workspace %s (%s) scheduled on node %s",
                wid,
                spec.name,
                view.node,
                extra={"node": view.node},
            )
        else:
            log.info(
                "workspace %s (%s) waits for capacity: %s",
                wid,
                spec.name,
                view.reason,
                extra=about(wid),
            )
        return view

    return answer
