"""Rows ⇄ domain objects: the one place that reads and writes the JSON columns.

A workspace's ``image_spec`` is an ``ImageSpec.to_dict``; an image's ``partitions`` are
``Partition.to_dict``s; a cluster's ``spec`` are ``MemberSpec.to_dict``s. NICs are
built here, once, from the allocation rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, TypeVarTuple, cast, overload

from sqlalchemy import (
    Connection,
    CursorResult,
    Executable,
    Integer,
    Select,
    Table,
    Text,
    bindparam,
    insert,
    inspect,
    select,
)
from sqlalchemy import cast as sql_cast  # typing's cast is used here too
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.selectable import TypedReturnsRows

from images.model import ImageSpec, Partition
from workspace import ipam
from workspace.domain import sshkeys
from workspace.domain.model import (
    CacheRecord,
    ClusterView,
    MemberSpec,
    NetworkInfo,
    Nic,
    NodeCondition,
    NodeStatus,
    WorkspaceView,
)
from workspace.domain.netpolicy import AllowRule, Connectivity, Limits
from workspace.domain.states import ClusterState, Desired, FailurePolicy, NodeState, State
from workspace.scheduler.model import Affinity
from workspace.store import bounds, journal, orders_gen
from workspace.store.models import Audit, Cluster, Image, IpAllocation, Network, Node, Workspace
from workspace.store.prepared import Prepared

_Ts = TypeVarTuple("_Ts")
M = TypeVar("M")

# What the API shows before the reason a request waits for capacity.
WAITING = "waiting for capacity: "
# Column text → enum by table (a lookup per row of every list).
STATES = {s.value: s for s in State}
DESIRED = {d.value: d for d in Desired}


@overload
def run(  # type: ignore[overload-overlap]  # as Connection.execute's overloads
    s: Session, statement: TypedReturnsRows[*_Ts], params: dict[str, Any] | None = None
) -> CursorResult[*_Ts]: ...
@overload
def run(
    s: Session, statement: Executable, params: dict[str, Any] | None = None
) -> CursorResult[Any]: ...
def run(
    s: Session, statement: Executable, params: dict[str, Any] | None = None
) -> CursorResult[Any]:
    """A Core statement (columns, not entities) in ``s``'s transaction, as ``s.execute``
    runs it (pending changes flushed first, when the session autoflushes) but without
    the ORM's execution layer: half the cost of a small query. A write through it
    bypasses the flush listeners (it must call ``orders_gen.touch``/``claimed`` and the
    journal itself, as the inserts below do). Reads built once that every call of a hot
    path runs are ``Prepared`` (store/prepared.py) and run on ``flushed(s)``."""
    return flushed(s).execute(statement, params)


def flushed(s: Session) -> Connection:
    """``s``'s connection, its pending changes flushed first when it autoflushes (as
    ``s.execute`` would): what a ``Prepared`` statement that reads runs on."""
    if s.autoflush:
        s.flush()
    return s.connection()


# -- images and a workspace's copy of one ----------------------------------------------------


# A row's attribute (not a column): the spec last parsed from it, with the column value
# it was parsed from. A create asks for its image's and its workspace's spec several
# times (trust, placement, usage, the order's size), and parsing costs each time.
_SPEC_MEMO = "_ws_spec_memo"


def _memo(row: Any, source: object, key: tuple[object, ...]) -> Any:
    """What ``_remember`` kept on ``row`` for this very ``source`` object (a JSON column
    read or assigned as a whole: a new value is a new object) and ``key``."""
    memo = row.__dict__.get(_SPEC_MEMO)
    if memo is not None and memo[0] is source and memo[1] == key:
        return memo[2]
    return None


def _remember(row: Any, source: object, key: tuple[object, ...], spec: object) -> None:
    row.__dict__[_SPEC_MEMO] = (source, key, spec)


def image_spec(img: Image) -> ImageSpec:
    """The image row as the ImageSpec a signature covers and a workspace binds to."""
    key = (img.name, img.kernel_digest, img.initrd_digest, img.cmdline)
    found: ImageSpec | None = _memo(img, img.partitions, key)
    if found is None:
        found = ImageSpec(
            img.name,
            tuple(Partition.from_dict(p) for p in img.partitions or ()),
            img.kernel_digest,
            img.initrd_digest,
            img.cmdline,
        )
        _remember(img, img.partitions, key, found)
    return found


def partitions_column(parts: Iterable[Partition]) -> list[dict[str, object]]:
    """The stored form of partitions (an image row's ``partitions``)."""
    return [p.to_dict() for p in parts]


def bound_spec(ws: Workspace) -> ImageSpec:
    """The image a workspace was made from, as it was at create (the bound order)."""
    key = (ws.image,)
    found: ImageSpec | None = _memo(ws, ws.image_spec, key)
    if found is None:
        found = ImageSpec.from_dict(ws.image_spec or {}, ws.image)
        _remember(ws, ws.image_spec, key, found)
    return found


def bind_spec(ws: Workspace, spec: ImageSpec) -> None:
    ws.image_spec = spec.to_dict()


# -- queue state -----------------------------------------------------------------------------


def set_waiting(ws: Workspace, why: str, deadline: float | None = None) -> None:
    """The workspace waits for capacity because ``why``."""
    ws.wait_reason = why
    ws.reason = ""
    if deadline is not None:
        ws.wait_deadline = deadline


# workspaces.reason's width (its column is String(1024)).
REASON_MAX = 1024


def stored_reason(reason: str) -> str:
    """``reason`` as a workspace's row keeps it (cut to fit, store/bounds.py): what a
    reason to be stored is compared with the one stored."""
    return bounds.fit(reason, REASON_MAX)


def set_reason(ws: Workspace, reason: str) -> None:
    """The reason the API shows; the workspace no longer waits for capacity."""
    ws.reason = reason
    ws.wait_reason = ""


def shown_reason(ws: Workspace | ViewRow) -> str:
    return WAITING + ws.wait_reason if ws.wait_reason else ws.reason


# -- workspaces ------------------------------------------------------------------------------


_A = cast(Table, IpAllocation.__table__).c
_N = cast(Table, Network.__table__).c
# Built once (building a statement costs more than running it). The DNS servers are read
# as their JSON text, decoded once per network and call.
_NICS = (
    select(
        _A.workspace_id,
        _A.ip,
        _A.mac,
        _N.name,
        _N.gateway,
        _N.bridge,
        _N.subnet,
        sql_cast(_N.dns, Text),
        _N.vlan,
    )
    .join_from(IpAllocation.__table__, Network.__table__, _N.name == _A.network)
    .order_by(_A.workspace_id, _A.nic_index)
)
_NICS_OF = _NICS.where(_A.workspace_id.in_(bindparam("ids", expanding=True)))
_NICS_OF_ONE = Prepared(_NICS.where(_A.workspace_id == bindparam("id")))
# Up to this many ids (a create's answer, a batch's), a prepared query each costs less
# than one query of them all (store/prepared.py).
_FEW_IDS = 16


def nics(s: Session, ids: Sequence[str]) -> dict[str, tuple[Nic, ...]]:
    """The NICs of these workspaces (every id is a key), in NIC order: one query, plain
    columns (this runs for every list, event and order set)."""
    found: dict[str, list[Nic]] = {i: [] for i in ids}
    if not ids:
        return {}
    if s.autoflush:
        s.flush()  # as the ORM's autoflush would (addresses deleted count as gone)
    # Large lists read every allocation once instead of binding thousands of ids
    # (SQLite caps the number of bound parameters).
    rows: Iterable[Sequence[Any]]
    if len(ids) <= _FEW_IDS:
        conn = s.connection()
        rows = [r for i in dict.fromkeys(ids) for r in _NICS_OF_ONE.rows(conn, {"id": i})]
    elif len(ids) <= 500:  # fetched at once: a fetch per row costs more
        rows = s.connection().execute(_NICS_OF, {"ids": list(ids)}).all()
    else:
        rows = s.connection().execute(_NICS).all()
    prefix: dict[str, int] = {}
    dns: dict[str, tuple[str, ...]] = {}
    for wid, ip, mac, net, gateway, bridge, subnet, servers, vlan in rows:
        out = found.get(wid)
        if out is None:
            continue
        if net not in prefix:
            prefix[net] = ipam.prefix_len(subnet)
            dns[net] = tuple(json.loads(servers) or ()) if servers else ()
        out.append(Nic(net, ip, mac, prefix[net], gateway, bridge, subnet, dns[net], vlan or 0))
    return {wid: tuple(v) for wid, v in found.items()}


# -- network policy and limits ---------------------------------------------------------------

CONNECTIVITY = {c.value: c for c in Connectivity}


def connectivity(ws: Workspace | ViewRow) -> Connectivity:
    return CONNECTIVITY.get(ws.connectivity or "open", Connectivity.OPEN)


def allow_rules(ws: Workspace | ViewRow) -> tuple[AllowRule, ...]:
    """The stored rules (canonical texts written by ``set_policy``)."""
    return tuple(AllowRule.parse(t) for t in ws.allow or ())


def limits(ws: Workspace | ViewRow) -> Limits:
    return Limits.from_dict(ws.limits or {})


def set_policy(ws: Workspace, conn: Connectivity, rules: Iterable[AllowRule], lim: Limits) -> None:
    """Store connectivity, allow rules (canonical, sorted) and the enforced limits."""
    ws.connectivity = conn.value
    ws.allow = [str(r) for r in sorted(set(rules))]
    ws.limits = lim.as_dict()


def limits_column(lim: Limits) -> dict[str, int]:
    """The stored form of limits (a project's ``default_limits``): only the set ones."""
    return {k: v for k, v in lim.as_dict().items() if v}


# A user's few keys are in each of their workspaces: each line's fingerprint is worked
# out once (a list of thousands of workspaces would otherwise hash every one again).
_key_fingerprint = functools.lru_cache(maxsize=4096)(sshkeys.fingerprint)


def applied_reboots(ws: Workspace | ViewRow) -> int | None:
    """The reboots the node reported carried out (None: it never said)."""
    n = ws.applied_reboot_count
    return None if n is None or n < 0 else n


def set_applied_reboots(ws: Workspace, reported: int | None) -> bool:
    """Keep the count of reboots the node says it carried out; True if it changed.

    The count never goes back (a late or repeated report, from another replica's time
    say) and never exceeds the reboots asked for; None (an older agent says nothing)
    changes nothing."""
    if reported is None:
        return False
    n = min(reported, ws.reboot_count or 0)
    if n <= (ws.applied_reboot_count if ws.applied_reboot_count is not None else -1):
        return False
    ws.applied_reboot_count = n
    return True


def workspace_view(ws: Workspace | ViewRow, nics_of: tuple[Nic, ...]) -> WorkspaceView:
    return WorkspaceView(
        id=ws.id,
        name=ws.name,
        owner=ws.owner,
        image=ws.image,
        cpus=ws.cpus,
        memory_mib=ws.memory_mib,
        nics=nics_of,
        node=ws.node,
        state=STATES[ws.state],
        desired=DESIRED[ws.desired_state],
        reason=shown_reason(ws),
        request_id=ws.request_id,
        created_at=ws.created_at,
        updated_at=ws.updated_at,
        reboot_count=ws.reboot_count or 0,
        applied_reboot_count=applied_reboots(ws),
        cluster=ws.cluster or "",
        role=ws.role or "",
        waiting=bool(ws.wait_reason),
        project=ws.project or "",
        lease_expires_at=ws.lease_expires_at or 0.0,
        host_keys=(ws.host_key_public,) if ws.host_key_public else (),
        login_user=ws.login_user or "",
        ssh_keys=tuple(_key_fingerprint(k) for k in ws.authorized_keys or ()),
        connectivity=connectivity(ws),
        allow=allow_rules(ws),
        limits=limits(ws),
        preemptible=bool(ws.preemptible),
        saving_as=ws.saving_as or "",
        saving_disk=ws.saving_disk or "",
        saving_sent_bytes=ws.saving_sent or 0,
        saving_size_bytes=ws.saving_size or 0,
        saving_copied_percent=ws.saving_copied or 0.0,
        disks=_disks(ws),
    )


@functools.lru_cache(maxsize=1024)
def _disks_of_text(text: str) -> tuple[Partition, ...]:
    """The partitions of a stored ``image_spec`` read as its JSON text: workspaces made
    alike (one image, the same blank disks) share the text, so it is decoded once."""
    spec = json.loads(text)
    return tuple(Partition.from_dict(p) for p in spec.get("partitions") or ())


def _disks(ws: Workspace | ViewRow) -> tuple[Partition, ...]:
    """A workspace's disks from its bound image spec (the ORM row's decoded column, or
    a view row's text)."""
    if isinstance(ws, Workspace):
        return bound_spec(ws).partitions
    text = ws.image_spec
    return () if text is None or text in _EMPTY_JSON else _disks_of_text(text)


def workspace_views(s: Session, rows: Sequence[Workspace | ViewRow]) -> list[WorkspaceView]:
    by_id = nics(s, [w.id for w in rows])
    return [workspace_view(w, by_id[w.id]) for w in rows]


class ViewRow(NamedTuple):
    """What a workspace's view shows of its row, read without the ORM: a read that only
    answers with views (``ws show``, ``ws list``). Loading an ORM row costs about ten
    times as much (every column, seven JSON columns decoded, the identity map and its
    instance state); these are the 33 columns ``workspace_view`` reads, three of them
    JSON, decoded here, and ``image_spec`` as its JSON text (see ``_disks``)."""

    id: str
    name: str
    owner: str
    project: str
    image: str
    cpus: int
    memory_mib: int
    node: str
    state: str
    desired_state: str
    reason: str
    wait_reason: str
    request_id: str
    created_at: float
    updated_at: float
    reboot_count: int
    applied_reboot_count: int | None
    cluster: str
    role: str
    lease_expires_at: float
    host_key_public: str
    login_user: str
    authorized_keys: list[str] | None
    connectivity: str
    allow: list[str] | None
    limits: dict[str, int] | None
    preemptible: bool
    saving_as: str
    saving_disk: str
    saving_sent: int
    saving_size: int
    saving_copied: float
    image_spec: str | None  # its JSON text (``_disks`` decodes it, once per distinct text)


_WS = cast(Table, Workspace.__table__).c
# JSON read as its text and booleans as integers: columns whose types convert nothing,
# so the statements below run prepared (store/prepared.py); ``view_row`` decodes them.
_VIEW_FIELDS = tuple(ViewRow.__annotations__)
_VIEW_JSON = ("authorized_keys", "allow", "limits")
_VIEW_AT = tuple(_VIEW_FIELDS.index(f) for f in _VIEW_JSON)
_VIEW_BOOL_AT = _VIEW_FIELDS.index("preemptible")
VIEW_COLUMNS = tuple(
    sql_cast(_WS[f], Text).label(f)
    if f in _VIEW_JSON or f == "image_spec"
    else sql_cast(_WS[f], Integer).label(f)
    if f == "preemptible"
    else _WS[f]
    for f in _VIEW_FIELDS
)
_VIEW_BY_ID = Prepared(select(*VIEW_COLUMNS).where(_WS.id == bindparam("id")))
_VIEWS_BY_NAME = Prepared(
    select(*VIEW_COLUMNS).where(_WS.name == bindparam("name")).order_by(_WS.created_at.desc())
)


# Most rows' JSON columns (no rules, no limits, ...): None, as the views read them.
_EMPTY_JSON = frozenset(("[]", "{}", "null"))


def view_row(raw: Sequence[Any]) -> ViewRow:
    """A row of ``VIEW_COLUMNS`` as read, its JSON and booleans decoded (an empty JSON
    list or object as None: ``workspace_view`` reads both as nothing)."""
    values = list(raw)
    for i in _VIEW_AT:
        text = values[i]
        values[i] = None if text is None or text in _EMPTY_JSON else json.loads(text)
    values[_VIEW_BOOL_AT] = bool(values[_VIEW_BOOL_AT])
    return ViewRow(*values)


def view_rows(s: Session, statement: Select[Any]) -> list[ViewRow]:
    """``statement`` (a ``select(*VIEW_COLUMNS)`` with its conditions) run in ``s``."""
    return [view_row(r) for r in run(s, statement).all()]


def view_row_by_id(s: Session, wid: str) -> ViewRow | None:
    found = _VIEW_BY_ID.first(flushed(s), {"id": wid})
    return view_row(found) if found is not None else None


def view_rows_by_name(s: Session, name: str) -> list[ViewRow]:
    """The workspaces named ``name`` (anyone's), the newest first."""
    return [view_row(r) for r in _VIEWS_BY_NAME.rows(flushed(s), {"name": name})]


# -- clusters, nodes, networks ---------------------------------------------------------------


def member_specs(c: Cluster) -> tuple[MemberSpec, ...]:
    return tuple(MemberSpec.from_dict(m) for m in c.spec or ())


def spec_column(members: Iterable[MemberSpec]) -> list[dict[str, object]]:
    """The stored form of a cluster's members (its ``spec`` column)."""
    return [m.to_dict() for m in members]


def cluster_view(c: Cluster, members: Sequence[WorkspaceView]) -> ClusterView:
    return ClusterView(
        id=c.id,
        name=c.name,
        owner=c.owner,
        state=ClusterState(c.state),
        reason=c.reason,
        members=tuple(members),
        affinity=Affinity[c.affinity],
        on_failure=FailurePolicy(c.on_failure),
        request_id=c.request_id,
        created_at=c.created_at,
        updated_at=c.updated_at,
        spec=member_specs(c),
        project=c.project or "",
        preemptible=bool(c.preemptible),
    )


def node_state(n: Node) -> NodeState:
    return NodeState(n.state)


def node_status(n: Node, workspaces: int, capacity: tuple[int, int]) -> NodeStatus:
    """``capacity``: what the scheduler may place there, vCPUs and MiB."""
    return NodeStatus(
        name=n.name,
        hypervisor=n.hypervisor,
        cpus=n.cpus,
        memory_mib=n.memory_mib,
        disk_gib=n.disk_gib,
        used_cpus=n.used_cpus,
        used_memory_mib=n.used_memory_mib,
        state=node_state(n),
        last_heartbeat=n.last_heartbeat,
        labels=dict(n.labels or {}),
        networks=tuple(n.networks or ()),
        workspaces=workspaces,
        disk_mbps=n.disk_mbps or 0,
        net_mbps=n.net_mbps or 0,
        used_disk_mbps=n.used_disk_mbps or 0,
        used_net_mbps=n.used_net_mbps or 0,
        agent_version=n.agent_version or "",
        cpu_capacity=capacity[0],
        memory_capacity_mib=capacity[1],
        reason=n.reason or "",
        conditions=node_conditions(n),
    )


# A node's conditions as the service keeps them: at most this many, each cut to fit (an
# agent's report is never refused for its conditions).
MAX_CONDITIONS = 32
_CODE_LEN, _SUBJECT_LEN, _MESSAGE_LEN = 64, 255, 1024


def node_conditions(n: Node) -> tuple[NodeCondition, ...]:
    """The conditions ``n``'s agent last reported."""
    return tuple(_condition(c) for c in n.conditions or ())


def condition_labels(column: Iterable[Mapping[str, str]] | None) -> frozenset[str]:
    """A node's ``conditions`` column as labels (``no-isolation``, ``network-not-ready:a``),
    as the scheduler reads them."""
    return frozenset(_condition(c).label for c in column or ())


def _condition(c: Mapping[str, str]) -> NodeCondition:
    return NodeCondition(
        code=str(c.get("code", "")),
        message=str(c.get("message", "")),
        subject=str(c.get("subject", "")),
    )


def set_conditions(n: Node, found: Iterable[NodeCondition]) -> tuple[NodeCondition, ...]:
    """Replace ``n``'s conditions with ``found`` (one per label, the first; each cut to
    fit; those without a code dropped); returns them as kept."""
    kept: dict[str, NodeCondition] = {}
    for c in found:
        if len(kept) == MAX_CONDITIONS:
            break
        cut = NodeCondition(
            code=bounds.fit(c.code, _CODE_LEN),
            message=bounds.fit(c.message, _MESSAGE_LEN),
            subject=bounds.fit(c.subject, _SUBJECT_LEN),
        )
        if cut.code:
            kept.setdefault(cut.label, cut)
    column = [{"code": c.code, "subject": c.subject, "message": c.message} for c in kept.values()]
    if column != (n.conditions or []):
        n.conditions = column
    return tuple(kept.values())


def cache_records(n: Node) -> list[CacheRecord]:
    return [
        CacheRecord(
            digest=str(e["digest"]),
            size_bytes=int(e.get("size_bytes", 0)),
            last_used=float(e.get("last_used", 0)),
            pinned=bool(e.get("pinned", False)),
        )
        for e in n.cache or ()
    ]


def cache_column(entries: Iterable[CacheRecord]) -> list[dict[str, object]]:
    return [
        {
            "digest": e.digest,
            "size_bytes": e.size_bytes,
            "last_used": e.last_used,
            "pinned": e.pinned,
        }
        for e in entries
    ]


def network_info(n: Network, allocated: int) -> NetworkInfo:
    return NetworkInfo(
        name=n.name,
        subnet=n.subnet,
        gateway=n.gateway,
        range_start=n.range_start,
        range_end=n.range_end,
        bridge=n.bridge,
        mac_prefix=n.mac_prefix,
        dns=tuple(n.dns or ()),
        allocated=allocated,
        vlan=n.vlan or 0,
    )


# -- inserts of the create path --------------------------------------------------------------
# Core statements, built once: building a statement costs more than running it, and the
# ORM's flush of a new row several times more (docs/design/control-plane.md, round three).

_WORKSPACES = cast(Table, Workspace.__table__)
_INSERT_WORKSPACE = Prepared(insert(_WORKSPACES))
_ALLOCATIONS = cast(Table, IpAllocation.__table__)
# An address whose MAC (or address) is taken already is not inserted: no row returned
# (rowcount is no witness: with RETURNING psycopg gives -1).
_INSERT_ALLOCATION = {
    "sqlite": Prepared(
        sqlite.insert(_ALLOCATIONS).on_conflict_do_nothing().returning(_ALLOCATIONS.c.id)
    ),
    "postgresql": Prepared(
        postgresql.insert(_ALLOCATIONS).on_conflict_do_nothing().returning(_ALLOCATIONS.c.id)
    ),
}


_Column = tuple[str, Callable[[], Any] | None, Any]


def _defaults(model: Any) -> tuple[_Column, ...]:
    """(attribute, default factory or None, default value) of each column of ``model``."""
    out: list[_Column] = []
    for attr in inspect(model).column_attrs:
        default = attr.columns[0].default
        arg = getattr(default, "arg", None)
        if callable(arg):
            out.append((attr.key, functools.partial(arg, None), None))
        else:
            out.append((attr.key, None, arg))
    return tuple(out)


_WORKSPACE_COLUMNS = _defaults(Workspace)
_INSERT_AUDIT = Prepared(insert(cast(Table, Audit.__table__)))


_NEW_WORKSPACE = inspect(Workspace).class_manager


def new_workspace(**values: Any) -> Workspace:
    """A new row (not in a session) holding ``values``, set without the ORM's attribute
    events: a twentieth of the constructor's cost. For a row inserted by
    ``insert_workspace`` or flushed as new: both write the values the row holds."""
    ws = cast(Workspace, _NEW_WORKSPACE.new_instance())
    ws.__dict__.update(values)
    return ws


def new_row(model: type[M], **values: Any) -> M:
    """A new row of ``model`` made as ``new_workspace`` makes one: for ``insert_new``."""
    row = cast(M, inspect(model).class_manager.new_instance())
    row.__dict__.update(values)
    return row


def _values(row: Any, columns: tuple[_Column, ...]) -> dict[str, Any]:
    """The values of a new ORM object's ``columns`` as a Core INSERT takes them: one left
    unset takes its column's default, on the object too; strings checked as a flush
    checks them (store/bounds.py: a message too long is cut, on the object too)."""
    values: dict[str, Any] = {}
    held = row.__dict__  # what was set on the new object (no instrumented reads: faster)
    for key, factory, default in columns:
        value = held.get(key)
        if value is None and (factory is not None or default is not None):
            value = factory() if factory is not None else default
        values[key] = value
    bounds.check_row(inspect(type(row)), values)
    for key, value in values.items():
        if held.get(key) is not value:
            # A new row's history goes when it is inserted (make_transient_to_detached):
            # no attribute event is needed.
            held[key] = value
    return values


def insert_workspace(s: Session, ws: Workspace) -> None:
    """INSERT the new row ``ws`` (not in ``s``) in one Core statement, every column given
    (``_values``); then ``ws`` is in ``s`` as a row loaded from the database would be.
    What the ORM's flush would have done besides is done here: the created event
    (store/journal.py) and the node's orders generation (store/orders_gen.py)."""
    values = _values(ws, _WORKSPACE_COLUMNS)
    _INSERT_WORKSPACE.write(s.connection(), values)
    make_transient_to_detached(ws)
    s.add(ws)
    journal.inserted(s, ws)
    orders_gen.touch(s, ws.node)


def insert_allocation(
    s: Session, network: str, ip: str, ip_int: int, mac: str, workspace_id: str, nic_index: int
) -> bool:
    """INSERT one NIC's address in one Core statement; False (nothing inserted) if its MAC
    or its address is taken already."""
    conn = s.connection()
    values = {
        "network": network,
        "ip": ip,
        "ip_int": ip_int,
        "mac": mac,
        "workspace_id": workspace_id,
        "nic_index": nic_index,
    }
    statement = _INSERT_ALLOCATION.get(conn.dialect.name)
    if statement is None:  # no ON CONFLICT: a taken one raises
        conn.execute(insert(_ALLOCATIONS), values)
        return True
    return statement.first(conn, values) is not None


_NEW_COLUMNS: dict[type, tuple[Prepared, tuple[_Column, ...]]] = {}


def insert_new(s: Session, rows: Sequence[Any]) -> None:
    """INSERT new ORM objects of one model (not in ``s``; they stay out of it) in one
    Core statement (``_values``; an autoincremented id is left to the database). Only
    for rows nothing else follows when flushed (store/journal.py, store/orders_gen.py):
    usage intervals (ops/metering.py)."""
    if not rows:
        return
    model = type(rows[0])
    found = _NEW_COLUMNS.get(model)
    if found is None:
        table = cast(Table, model.__table__)
        auto = {c.key for c in table.primary_key.columns if c.autoincrement is True}
        found = _NEW_COLUMNS[model] = (
            Prepared(insert(table)),
            tuple(c for c in _defaults(model) if c[0] not in auto),
        )
    statement, columns = found
    statement.write(s.connection(), [_values(r, columns) for r in rows])


def insert_audits(s: Session, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """INSERT new trust decisions (an audit row's values by column, all given but its id)
    in one Core statement, with their site events as a flush would make them. Returns
    the values inserted: strings cut as a flush cuts them (store/bounds.py)."""
    values = [dict(a) for a in rows]
    if not values:
        return values
    mapper = inspect(Audit)
    for v in values:
        bounds.check_row(mapper, v)
    _INSERT_AUDIT.write(s.connection(), values)
    for v in values:
        journal.audited(s, v)
    return values
