"""Turning placements into claims: capacity, addresses and node assignment in one transaction.

Used by single creates, clusters and the capacity queue. ``place_rows`` takes
workspace rows that are PENDING (no node, no addresses), asks the scheduler for
an all-or-nothing placement of the whole group on a fresh node snapshot, then
claims capacity and allocates every NIC. Any failure raises, and the caller's
transaction rolls back: nothing is half-placed.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import cast

import netaddr
from sqlalchemy import Connection, Table, bindparam, case, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from workspace import ipam, scheduler
from workspace.config import SchedulerConfig, ServiceConfig
from workspace.domain.states import NodeState, State
from workspace.errors import ResourceExhausted
from workspace.ops import netpolicy, seeds
from workspace.ops.order_size import OrdersTooLarge, check_orders_fit
from workspace.store import IpAllocation, Network, Node, Workspace, macs, orders_gen
from workspace.store.held import held
from workspace.store.mapping import (
    bound_spec,
    condition_labels,
    insert_allocation,
    insert_workspace,
    set_reason,
)
from workspace.store.prepared import Prepared

log = logging.getLogger("workspace.ops.placement")


class NoPlacement(ResourceExhausted):
    """The group does not fit now (it may later)."""


class OrdersFull(NoPlacement):
    """The orders of ``node`` have no room for what was placed there (ops/order_size.py)."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node


# Why a node whose orders are at their size bound is not used (counted with the
# filters' reasons in a refusal).
ORDERS_FULL = "have no room left in their orders (limits.max_node_orders_bytes)"
# Nodes found at that bound for one request before it is refused: each costs another
# placement (a site whose every node is at its bound refuses in bounded time).
MAX_ORDERS_FULL = 16


# MACs drawn for one NIC at most before giving up: only MACs taken outside the counter
# (store/macs.py) are skipped.
MAC_TRIES = 1000

# s.info key: the transaction's node views, kept while it places (ops/group_commit.py
# turns it on for a batch of creates, whose only node changes are place_rows' claims).
NODES_KEY = "placement.node_views"


# s.info key, with NODES_KEY: the scheduler's snapshot of the kept views, consumed by
# each placement as its claims are made (``_schedule``); dropped with the views.
SNAPSHOT_KEY = "placement.snapshot"

# s.info key, with NODES_KEY: what the transaction's allocations left of each network:
# ("used", network) → addresses held; (network, first, last) → (count, highest) of its
# range while the range is dense from its start (``lowest_free``).
ADDRESSES_KEY = "placement.addresses"


def keep_node_views(s: Session) -> None:
    """Read the nodes once for the rest of ``s``'s transaction: ``place_rows`` keeps the
    views up to date with its claims (and the networks' use with its allocations). Only
    for a transaction that changes nodes and addresses through ``place_rows`` alone;
    ``forget_node_views`` after rolling back to a SAVEPOINT."""
    s.info.setdefault(NODES_KEY, None)
    s.info.setdefault(ADDRESSES_KEY, {})


def forget_node_views(s: Session) -> None:
    """After a rollback to a SAVEPOINT, or anything changing the nodes' capacity but
    ``place_rows``: the kept views (and snapshot) are read again when next needed."""
    if NODES_KEY in s.info:
        s.info[NODES_KEY] = None
        s.info[ADDRESSES_KEY] = {}
        s.info.pop(SNAPSHOT_KEY, None)
        s.info.pop(VIEWS_GEN_KEY, None)


def node_views(s: Session) -> list[scheduler.NodeView]:
    """Every node as the scheduler sees it (the transaction's kept views, if it keeps them)."""
    if NODES_KEY not in s.info:
        return _read_node_views(s)
    return list(_kept_views(s).values())


def _kept_views(s: Session) -> dict[str, scheduler.NodeView]:
    """The transaction's kept views by name (``keep_node_views``), read when first needed."""
    kept: dict[str, scheduler.NodeView] | None = s.info[NODES_KEY]
    if kept is None:
        kept = s.info[NODES_KEY] = _cached_node_views(s)
    return kept


# The node views last read or committed, per database (engine), with the nodes
# generation they are at (store/orders_gen.py: any change to a node as the scheduler sees
# it, in any replica, gives it a new random value). NodeViews are immutable.
# By name (the scheduler's snapshot puts them in name order); a transaction takes a copy (a
# dict's copy costs a fraction of building it: 1,000 nodes pay it once per batch).
_views: weakref.WeakKeyDictionary[Engine, tuple[int, dict[str, scheduler.NodeView]]] = (
    weakref.WeakKeyDictionary()
)
_views_lock = threading.Lock()
# With them, the scheduler's snapshot a batch of creates left (``remember_node_views``):
# the next batch takes it (exclusively: it consumes it) instead of building one, if the
# views it keeps are the cached ones of the same generation.
_snapshots: weakref.WeakKeyDictionary[Engine, tuple[int, scheduler.Snapshot]] = (
    weakref.WeakKeyDictionary()
)
# s.info key: the nodes generation of the cached views the transaction keeps.
VIEWS_GEN_KEY = "placement.views_gen"


def _engine(s: Session) -> Engine:
    bind = s.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _cached_node_views(s: Session) -> dict[str, scheduler.NodeView]:
    """The node views by name, the transaction's own copy: the cached ones while the
    nodes generation is theirs (one read), else read (and cached, unless this
    transaction changed a node already)."""
    gen = orders_gen.nodes_generation(s)  # autoflushes first
    fresh = gen is not None and not orders_gen.nodes_pending(s)
    engine = _engine(s)
    if fresh:
        with _views_lock:
            hit = _views.get(engine)
        if hit is not None and hit[0] == gen:
            s.info[VIEWS_GEN_KEY] = gen
            return dict(hit[1])
    views = {n.name: n for n in _read_node_views(s)}
    if fresh and gen is not None:
        with _views_lock:
            _views[engine] = (gen, dict(views))
    return views


def remember_node_views(s: Session) -> None:
    """After ``s`` committed a transaction that kept its node views (``keep_node_views``)
    and changed nodes only by placing: its views are the nodes at the new generation."""
    after = s.info.get(orders_gen.NODES_AFTER)
    kept: dict[str, scheduler.NodeView] | None = s.info.get(NODES_KEY)
    if after is None or kept is None:
        return
    gen, claims_only = after
    if claims_only:
        snapshot: scheduler.Snapshot | None = s.info.get(SNAPSHOT_KEY)
        with _views_lock:
            _views[_engine(s)] = (gen, dict(kept))
            if snapshot is not None:
                _snapshots[_engine(s)] = (gen, snapshot)


# s.info key, with ADDRESSES_KEY: the kept counts were started (from the cache, if it
# held), and the addresses generation they were started at.
ADDRESSES_GEN_KEY = "placement.addresses_gen"

# The networks' address counts (ADDRESSES_KEY's entries) a batch of creates committed,
# per database (engine), with the addresses generation they are at (store/orders_gen.py:
# any address allocated or released, in any replica, gives it a new random value). The
# next batch starts from them while the generation holds: no aggregate over a network's
# addresses, whose cost grows with the network.
_counts: weakref.WeakKeyDictionary[Engine, tuple[int, dict[tuple[object, ...], object]]] = (
    weakref.WeakKeyDictionary()
)


def _addresses(s: Session) -> dict[tuple[object, ...], object] | None:
    """The transaction's kept address counts (None: it keeps none). The first time in a
    transaction that changed no address yet: the counts the last batch committed, if
    the addresses generation is still theirs."""
    kept: dict[tuple[object, ...], object] | None = s.info.get(ADDRESSES_KEY)
    if kept is None or ADDRESSES_GEN_KEY in s.info:
        return kept
    s.info[ADDRESSES_GEN_KEY] = None
    if orders_gen.addresses_pending(s):
        return kept
    gen = orders_gen.addresses_generation(s)
    s.info[ADDRESSES_GEN_KEY] = gen
    with _views_lock:
        hit = _counts.get(_engine(s))
    if gen is not None and hit is not None and hit[0] == gen:
        kept.update(hit[1])
    return kept


def remember_addresses(s: Session) -> None:
    """After ``s`` committed a transaction that kept its address counts and changed
    addresses only by placing (``allocate``): its counts are the networks' at the new
    addresses generation."""
    after = s.info.get(orders_gen.ADDRESSES_AFTER)
    kept: dict[tuple[object, ...], object] | None = s.info.get(ADDRESSES_KEY)
    if after is None or kept is None or not after[1]:
        return
    with _views_lock:
        _counts[_engine(s)] = (after[0], dict(kept))


def _claimed(
    s: Session, name: str, cpus: int, memory_mib: int, disk_mbps: int = 0, net_mbps: int = 0
) -> None:
    """Keep the transaction's view of node ``name`` (if kept) in step with a claim."""
    kept: dict[str, scheduler.NodeView] | None = s.info.get(NODES_KEY)
    if kept is not None and name in kept:
        v = kept[name]
        kept[name] = replace(
            v,
            used_cpus=v.used_cpus + cpus,
            used_memory_mib=v.used_memory_mib + memory_mib,
            used_disk_mbps=v.used_disk_mbps + disk_mbps,
            used_net_mbps=v.used_net_mbps + net_mbps,
        )


def _read_node_views(s: Session) -> list[scheduler.NodeView]:
    # Plain columns, not ORM entities: this runs on every placement over every node.
    cols = (
        Node.name,
        Node.state,
        Node.cpus,
        Node.memory_mib,
        Node.used_cpus,
        Node.used_memory_mib,
        Node.hypervisor,
        Node.labels,
        Node.networks,
        Node.cached_digests,
        Node.disk_mbps,
        Node.net_mbps,
        Node.used_disk_mbps,
        Node.used_net_mbps,
        Node.conditions,
    )
    return [
        scheduler.NodeView(
            name=name,
            state=state,
            cpus=cpus,
            memory_mib=mem,
            used_cpus=ucpu,
            used_memory_mib=umem,
            hypervisor=hyp,
            labels=dict(labels or {}),
            networks=tuple(nets or ()),
            cached_digests=frozenset(cached or ()),
            disk_mbps=disk or 0,
            net_mbps=net or 0,
            used_disk_mbps=udisk or 0,
            used_net_mbps=unet or 0,
            conditions=condition_labels(conds),
        )
        for (
            name,
            state,
            cpus,
            mem,
            ucpu,
            umem,
            hyp,
            labels,
            nets,
            cached,
            disk,
            net,
            udisk,
            unet,
            conds,
        ) in s.execute(select(*cols).order_by(Node.name))
    ]


def request_for(ws: Workspace) -> scheduler.Request:
    """What the scheduler places for one workspace row (its partitions' blobs count for
    cache affinity)."""
    digests = tuple(p.digest for p in bound_spec(ws).partitions if p.digest)
    disk_mbps, net_mbps = netpolicy.reservation(ws)
    networks = tuple(ws.networks or ())
    return scheduler.Request(
        ws.cpus,
        ws.memory_mib,
        networks,
        digests,
        dict(ws.requirements or {}),
        member=ws.name,
        disk_mbps=disk_mbps,
        net_mbps=net_mbps,
        isolated=bool(networks) and netpolicy.restricted(ws),
    )


def place_rows(
    s: Session,
    cfg: ServiceConfig,
    rows: Sequence[Workspace],
    affinity: scheduler.Affinity = scheduler.Affinity.NONE,
    withheld: Mapping[str, str] | None = None,
    plan: scheduler.GroupPlacement | None = None,
    now: float = 0.0,
) -> list[str]:
    """Place ``rows`` all-or-nothing; returns the nodes touched. Raises NoPlacement.
    ``withheld``: nodes they may not use, each with why ("are held for ..."), which a
    refusal counts as it counts the filters' reasons. ``plan``: where they go, already
    decided (ops/preempt.py), instead of the scheduler. ``now``: the rows' new
    ``updated_at`` (0: left as it is; a new row has it already), set with their node so
    that the journal's placed event of a row that waited times its wait from it."""
    requests = [request_for(w) for w in rows]
    out = dict(withheld or {})
    full: OrdersFull | None = None  # the last node found with no room in its orders
    while True:
        if plan is not None:
            result = plan
            s.info.pop(SNAPSHOT_KEY, None)  # the kept snapshot does not count the plan's claims
        else:
            result = _schedule(s, cfg, requests, affinity, out)
        if result.placements is None:
            what = rows[0].name if len(rows) == 1 else f"member {result.failed_member}"
            why = f"{what} does not fit: {result.reason()}"
            raise NoPlacement(why if full is None else f"{why}; {full.message}")
        try:
            return _take(s, cfg, rows, requests, result.placements, now)
        except OrdersFull as exc:
            s.info.pop(SNAPSHOT_KEY, None)  # it counts placements that were not made
            # A node whose orders have no room for these is no place for them, but
            # another may be: placed again without it (nothing was claimed yet).
            if plan is not None or not exc.node or exc.node in out:
                raise  # a NoPlacement (a plan's caller may plan again without the node)
            if sum(1 for why in out.values() if why == ORDERS_FULL) >= MAX_ORDERS_FULL:
                raise
            out[exc.node], full = ORDERS_FULL, exc
        except BaseException:
            s.info.pop(SNAPSHOT_KEY, None)  # it counts placements that were not made
            raise


def _schedule(
    s: Session,
    cfg: ServiceConfig,
    requests: list[scheduler.Request],
    affinity: scheduler.Affinity,
    withheld: Mapping[str, str],
) -> scheduler.GroupPlacement:
    """The scheduler's placement of ``requests``: on the transaction's kept snapshot if it
    keeps its node views (a batch of creates: the snapshot is built once, its static
    answers memoised, and consumed by each placement as the claims are made), else on a
    fresh one. The ``withheld`` nodes are left out; a refusal counts them by their reason."""
    if not withheld and NODES_KEY in s.info:
        snapshot: scheduler.Snapshot | None = s.info.get(SNAPSHOT_KEY)
        if snapshot is None:
            snapshot = s.info[SNAPSHOT_KEY] = _snapshot(s, cfg)
        return scheduler.place_group_on(snapshot, requests, affinity)
    nodes = node_views(s)
    if not withheld:
        return scheduler.place_group(nodes, requests, cfg.scheduler, affinity)
    s.info.pop(SNAPSHOT_KEY, None)  # these claims are not in it
    usable = [n for n in nodes if n.name not in withheld]
    result = scheduler.place_group(usable, requests, cfg.scheduler, affinity)
    if result.placements is not None:
        return result
    rejected = Counter(result.rejected)
    rejected.update(withheld[n.name] for n in nodes if n.name in withheld)
    return replace(result, rejected=dict(rejected))


def _snapshot(s: Session, cfg: ServiceConfig) -> scheduler.Snapshot:
    """A snapshot of the kept views: the one the last batch left if they are the cached
    views of its generation (taken out of the cache: it is consumed), else a new one."""
    kept = _kept_views(s)
    gen = s.info.get(VIEWS_GEN_KEY)
    if gen is not None:
        with _views_lock:
            hit = _snapshots.pop(_engine(s), None)
        if hit is not None and hit[0] == gen and hit[1].cfg == cfg.scheduler:
            return hit[1]
    return scheduler.Snapshot(kept.values(), cfg.scheduler)


def _take(
    s: Session,
    cfg: ServiceConfig,
    rows: Sequence[Workspace],
    requests: list[scheduler.Request],
    placements: list[scheduler.MemberPlacement],
    now: float = 0.0,
) -> list[str]:
    """Claim what the scheduler placed: capacity, addresses, the node of each row.

    A group's addresses are counted once per network, not once per member: in a
    transaction that keeps no counts, they are kept while its rows get theirs (nothing
    else allocates or releases an address meanwhile). A 500-member cluster read every
    address of its network 500 times (``_use``), under the write lock."""
    own = len(rows) > 1 and ADDRESSES_KEY not in s.info
    if own:
        s.info[ADDRESSES_KEY] = {}
        s.info[ADDRESSES_GEN_KEY] = None  # these counts only, not the last batch's
    try:
        return _take_rows(s, cfg, rows, requests, placements, now)
    finally:
        if own:
            s.info.pop(ADDRESSES_KEY, None)
            s.info.pop(ADDRESSES_GEN_KEY, None)


def _take_rows(
    s: Session,
    cfg: ServiceConfig,
    rows: Sequence[Workspace],
    requests: list[scheduler.Request],
    placements: list[scheduler.MemberPlacement],
    now: float,
) -> list[str]:
    _check_addresses(s, rows)
    try:  # the node's orders must still fit in one message (ops/order_size.py)
        placed = [p.node or "" for p in placements]
        check_orders_fit(s, cfg.limits, rows, placed, seeds.vendor_bytes(cfg))
    except OrdersTooLarge as exc:
        raise OrdersFull(exc.message, exc.node) from exc
    # Nothing below can fail for want of capacity: the caller's transaction stays whole.
    touched: list[str] = []
    for ws, req, p in zip(rows, requests, placements, strict=True):
        assert p.node is not None
        claim(s, p.node, p.claimed_cpus, p.claimed_memory_mib, req.disk_mbps, req.net_mbps)
        _claimed(s, p.node, p.claimed_cpus, p.claimed_memory_mib, req.disk_mbps, req.net_mbps)
        ws.claimed_disk_mbps = req.disk_mbps
        ws.claimed_net_mbps = req.net_mbps
        ws.node = p.node
        if now:
            ws.updated_at = now
        ws.claimed_cpus = p.claimed_cpus
        ws.claimed_memory_mib = p.claimed_memory_mib
        ws.state = State.SCHEDULED.value
        set_reason(ws, "")
        ws.wait_deadline = 0.0
        state = inspect(ws)
        if state.transient:  # a new row, inserted once placed (ops/create.py)
            insert_workspace(s, ws)
        elif state.pending:  # its addresses refer to it
            s.flush()
        for index, net_name in enumerate(ws.networks or ()):
            allocate(s, ws, net_name, index)
        touched.append(p.node)
    return touched


_NODES = cast(Table, Node.__table__)
_CLAIM = Prepared(
    update(_NODES)
    .where(_NODES.c.name == bindparam("node"))
    .values(
        used_cpus=_NODES.c.used_cpus + bindparam("add_cpus"),
        used_memory_mib=_NODES.c.used_memory_mib + bindparam("mem"),
        used_disk_mbps=func.coalesce(_NODES.c.used_disk_mbps, 0) + bindparam("disk"),
        used_net_mbps=func.coalesce(_NODES.c.used_net_mbps, 0) + bindparam("net"),
    )
)


def claim(s: Session, node: str, cpus: int, memory_mib: int, disk_mbps: int, net_mbps: int) -> None:
    """Add a claim to ``node``'s row: one UPDATE relative to what the row holds (the row
    is not loaded: its JSON columns are large). A copy of the row the session holds is
    expired, so it reads the new values; the nodes generation changes at the commit."""
    held = s.identity_map.get(identity_key(Node, node))
    if held is not None:
        s.flush()  # its changes first: a claim it still holds would overwrite this one
    done = _CLAIM.write(  # Core, built once: a tenth of the ORM's bulk UPDATE
        s.connection(),
        {"node": node, "add_cpus": cpus, "mem": memory_mib, "disk": disk_mbps, "net": net_mbps},
    )
    if not done:
        raise NoPlacement(f"node {node} no longer exists")
    if held is not None:
        s.expire(held, list(orders_gen.CLAIMS))
    orders_gen.claimed(s)


_ALLOCS = cast(Table, IpAllocation.__table__).c
_IN_RANGE = _ALLOCS.ip_int.between(bindparam("first"), bindparam("last"))
# A network's addresses held, and of its range how many and the highest: one scan.
_USE = Prepared(
    select(
        func.count(),
        func.coalesce(func.sum(case((_IN_RANGE, 1), else_=0)), 0),
        func.max(case((_IN_RANGE, _ALLOCS.ip_int), else_=None)),
    ).where(_ALLOCS.network == bindparam("net"))
)
_RANGE_USED = Prepared(
    select(_ALLOCS.ip_int)
    .where(_ALLOCS.network == bindparam("net"), _IN_RANGE)
    .order_by(_ALLOCS.ip_int)
)
_TAKEN = Prepared(
    select(_ALLOCS.id).where(_ALLOCS.network == bindparam("net"), _ALLOCS.ip == bindparam("ip"))
)


@functools.lru_cache(maxsize=1024)
def _range_of(range_start: str, range_end: str, gateway: str) -> tuple[int, int, int]:
    """(first, last, gateway) of a pool as integers."""
    return (
        int(netaddr.IPAddress(range_start)),
        int(netaddr.IPAddress(range_end)),
        int(netaddr.IPAddress(gateway)),
    )


def _flushed(s: Session) -> Connection:
    """``s``'s connection, after flushing rows it added or deleted (addresses freed by
    the ORM count as freed): the address queries below are Core, which does not flush."""
    if s.new or s.deleted:
        s.flush()
    return s.connection()


def _use(s: Session, pool: ipam.Pool, net_name: str) -> tuple[int, int, int | None]:
    """(addresses the network holds, of them in its range, the highest in its range)."""
    first, last, _gw = _range_of(pool.range_start, pool.range_end, pool.gateway)
    used, in_range, top = _USE.rows(_flushed(s), {"net": net_name, "first": first, "last": last})[0]
    kept = _addresses(s)
    if kept is not None:
        kept[("used", net_name)] = int(used)
        kept[(net_name, first, last)] = (int(in_range), top)
    return int(used), int(in_range), top


def _check_addresses(s: Session, rows: Sequence[Workspace]) -> None:
    """Refuse before anything is claimed if a network cannot address every NIC."""
    why = addresses_short(s, rows)
    if why is not None:
        raise NoPlacement(why)


def addresses_short(s: Session, rows: Sequence[Workspace]) -> str | None:
    """Why a network of ``rows`` cannot address all their NICs (which network's range is
    full, or gone); None if each can."""
    need = Counter(n for w in rows for n in (w.networks or ()))
    for net_name, count in need.items():
        net = held(s, Network, net_name)
        if net is None:
            return f"network {net_name!r} no longer exists"
        pool = ipam.Pool(net.subnet, net.gateway, net.range_start, net.range_end, "")
        kept = _addresses(s)
        used = kept.get(("used", net_name)) if kept is not None else None
        if not isinstance(used, int):
            used = _use(s, pool, net_name)[0]
        first, last, gw = _range_of(pool.range_start, pool.range_end, pool.gateway)
        size = last - first + 1 - (1 if first <= gw <= last else 0)
        free = size - used
        if free < count:
            return (
                f"network {net_name!r} has no free address left ({count} needed, {free} free: "
                f"{used} of the {size} of its range {pool.range_start}-{pool.range_end} "
                f"held; `ws-admin network set {net_name} --range` grows it)"
            )
    return None


def allocate(s: Session, ws: Workspace, net_name: str, index: int) -> None:
    net = held(s, Network, net_name)
    if net is None:
        raise NoPlacement(f"network {net_name!r} no longer exists")
    pool = ipam.Pool(net.subnet, net.gateway, net.range_start, net.range_end, net.mac_prefix)
    found = _lowest_free(s, pool, net_name)
    if found is None:
        raise NoPlacement(f"network {net_name!r} has no free address left")
    ip, ip_int = found
    # The MAC from its prefix's counter (store/macs.py); one taken anyway is skipped.
    for _ in range(MAC_TRIES):
        mac = macs.draw(s, pool.mac_prefix)
        if insert_allocation(s, net_name, ip, ip_int, mac, ws.id, index):
            orders_gen.allocated(s)
            break
        if _TAKEN.first(s.connection(), {"net": net_name, "ip": ip}) is not None:
            raise NoPlacement(f"network {net_name!r}: address {ip} is taken")
    else:
        raise NoPlacement(f"network {net_name!r}: could not find a free MAC address")
    kept = _addresses(s)
    used = kept.get(("used", net_name)) if kept is not None else None
    if kept is not None and isinstance(used, int):
        kept[("used", net_name)] = used + 1


def lowest_free(s: Session, pool: ipam.Pool, net_name: str) -> str | None:
    """The lowest free address of the network's range (``ipam.pick_address_int``)."""
    found = _lowest_free(s, pool, net_name)
    return found[0] if found is not None else None


def _lowest_free(s: Session, pool: ipam.Pool, net_name: str) -> tuple[str, int] | None:
    """The lowest free address of the network's range, as text and integer.

    One aggregate over the network's addresses first (``_use``): when the range's used
    addresses are dense from its start (the usual case: addresses are handed out lowest
    first), the next one is right after the highest, and no address is loaded. Only
    when there is a hole (a workspace was destroyed) are the used addresses read."""
    first, last, gw = _range_of(pool.range_start, pool.range_end, pool.gateway)
    # In a transaction that keeps them (a batch of creates), the range's count and
    # highest as the previous allocation left them: it is the one that took the address
    # returned here (``allocate``; a SAVEPOINT rolled back forgets them).
    kept = _addresses(s)
    key = (net_name, first, last)
    hit = kept.pop(key, None) if kept is not None else None
    if isinstance(hit, tuple):
        count, top = hit
    else:
        _used, count, top = _use(s, pool, net_name)
        if kept is not None:
            kept.pop(key, None)
    candidate: int | None = None
    if not count:
        candidate = first + 1 if first == gw else first
    elif int(top) - first + 1 - (1 if first <= gw <= int(top) else 0) == count:
        # dense from the start: the next free one follows the highest
        candidate = int(top) + 1
        if candidate == gw:
            candidate += 1
    if candidate is not None:
        if candidate > last:
            return None
        if kept is not None:
            kept[key] = (int(count or 0) + 1, candidate)
        return str(netaddr.IPAddress(candidate)), candidate
    used = [
        r[0] for r in _RANGE_USED.rows(_flushed(s), {"net": net_name, "first": first, "last": last})
    ]
    ip = ipam.pick_address_int(pool, used)
    return (ip, int(netaddr.IPAddress(ip))) if ip is not None else None


def never_placed(s: Session, cfg: ServiceConfig, rows: Sequence[Workspace]) -> str | None:
    """Why one of ``rows`` would not fit even alone on an empty, READY node of the site (a
    drained or DOWN node may come back, as may one whose agent reports a condition):
    larger than every node, or asking for networks or labels none has. None if each
    would, or if no node is registered yet (the site is being built). A group whose VMs
    each fit somewhere but not all together is not judged here: nodes may be added to
    the site while it waits."""
    nodes = node_views(s)
    if not nodes:
        return None
    known = _never_known(s, cfg)
    emptied: list[scheduler.NodeView] | None = None
    for req in distinct([request_for(w) for w in rows]):
        key = (req.cpus, req.memory_mib, *scheduler.shape_key(req), req.disk_mbps, req.net_mbps)
        if key not in known:
            if emptied is None:
                ready, none = NodeState.READY.value, frozenset[str]()
                emptied = [
                    replace(scheduler.emptied(n), state=ready, conditions=none) for n in nodes
                ]
            result = scheduler.place_group(emptied, [req], cfg.scheduler)
            known[key] = None if result.placements is not None else result.reason()
        why = known[key]
        if why is not None:
            what = f"member {req.member}" if rows[0].cluster else req.member
            return f"{what} does not fit: {why}"
    return None


# never_placed's answers per database while the nodes are unchanged: (the nodes
# generation of the views they were judged on, the scheduler's settings, {a request's
# shape: why it fits no empty node, or None}). A queue pass asks for every blocked
# request, each over every node of the site made empty; the answer for a shape changes
# only with the nodes (an added or removed node, new labels: a new generation).
_never: weakref.WeakKeyDictionary[
    Engine, tuple[int, SchedulerConfig, dict[tuple[object, ...], str | None]]
] = weakref.WeakKeyDictionary()


def _never_known(s: Session, cfg: ServiceConfig) -> dict[tuple[object, ...], str | None]:
    """The answers kept for the transaction's node views: shared while they are the
    cached views of a generation (``_cached_node_views``), else the transaction's own."""
    gen = s.info.get(VIEWS_GEN_KEY) if NODES_KEY in s.info else None
    if gen is None:
        return {}
    engine = _engine(s)
    with _views_lock:
        hit = _never.get(engine)
        if hit is None or hit[0] != gen or hit[1] != cfg.scheduler:
            hit = _never[engine] = (gen, cfg.scheduler, {})
    return hit[2]


def distinct(requests: list[scheduler.Request]) -> list[scheduler.Request]:
    """One request per distinct shape (members of one role are alike)."""
    seen: dict[tuple[object, ...], scheduler.Request] = {}
    for r in requests:
        key = (r.cpus, r.memory_mib, *scheduler.shape_key(r))
        seen.setdefault(key, r)
    return list(seen.values())
