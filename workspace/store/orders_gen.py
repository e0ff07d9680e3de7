"""Generations that validate what a create caches across transactions.

Node orders generations: ``Node.orders_gen`` takes a new random value in every
transaction that may change what a node is sent, so a bound of a node's orders computed
once (ops/order_size.py) can be reused while the node's generation is the one it was
computed at: one read of one column instead of summing the node's workspaces.

Bumped at commit, from what the session flushed (so every writer through the store's
sessions is covered, whatever module it is in, and whichever replica it runs in):

* a workspace inserted, changed or deleted: its node, and the node it left;
* a network or an image signature added, changed or deleted: every node (NIC and
  signature bounds are part of every order);

one UPDATE per transaction, all bumped nodes taking the same new value (recorded in
``s.info[AFTER]`` with the nodes bumped, None: all, for the writer to update its cache
after the commit). Bumping more than
needed only costs a recomputation. A write that bypasses the ORM (a Core UPDATE of
workspaces, raw SQL) is not seen: the store has none; keep it so (or call ``touch``).

The nodes generation (``Generation`` "nodes"): a new random value at the commit of any
transaction that flushed a node added, removed or changed in what the scheduler sees
(``VIEW``): ops/placement.py reuses its node views while it holds. ``s.info[NODES_AFTER]``
is the value it took, and whether the transaction changed nodes only in their claims
(``CLAIMS``: what placement itself keeps its views in step with).

The addresses generation (``Generation`` "addresses"): a new random value at the commit
of any transaction that added, changed or removed an address (``IpAllocation``): flushed
by the ORM, or inserted by placement's Core statement (``allocated``). ops/placement.py
keeps each network's address counts while it holds; ``s.info[ADDRESSES_AFTER]`` is the
value it took, and whether placement's allocations were the only change.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, event, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from workspace.store.models import (
    Generation,
    Image,
    ImageSignature,
    IpAllocation,
    Network,
    Node,
    Workspace,
    new_gen,
)
from workspace.store.prepared import Prepared

# s.info keys: the nodes to bump at commit; True: every node; the value they took.
NODES = "orders_gen.nodes"
ALL = "orders_gen.all"
AFTER = "orders_gen.after"
NODES_CHANGED = "orders_gen.nodes_changed"  # None | "claims" | "other"
NODES_AFTER = "orders_gen.nodes_after"
NODES_ROW = "nodes"  # the Generation row's name
CATALOG_ROW = "catalog"  # networks and images (store/held.py)
CATALOG_CHANGED = "orders_gen.catalog_changed"
ADDRESSES_ROW = "addresses"  # ip_allocations (ops/placement.py)
ADDRESSES_CHANGED = "orders_gen.addresses_changed"  # None | "allocations" | "other"
ADDRESSES_AFTER = "orders_gen.addresses_after"

# What store/held.py keeps between transactions: a change to one bumps the catalog.
KEPT = (Network, Image)
# A node's columns as the scheduler sees them (ops/placement.py ``_read_node_views``).
CLAIMS = ("used_cpus", "used_memory_mib", "used_disk_mbps", "used_net_mbps")
VIEW = (
    "name",
    "state",
    "cpus",
    "memory_mib",
    "hypervisor",
    "labels",
    "networks",
    "cached_digests",
    "disk_mbps",
    "net_mbps",
    "conditions",
    *CLAIMS,
)


def install(sessions: sessionmaker[Session]) -> None:
    # Nothing is forgotten on a rollback: a SAVEPOINT rolled back leaves the bumps of
    # the rest of the transaction due, and the store's sessions live one transaction.
    event.listen(sessions, "before_flush", _before_flush)
    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_rollback", _after_rollback)


def touch(s: Session, *nodes: str, every: bool = False) -> None:
    """Bump ``nodes`` (or every node) at ``s``'s commit."""
    s.info.setdefault(NODES, set()).update(n for n in nodes if n)
    if every:
        s.info[ALL] = True


def pending(s: Session, node: str) -> bool:
    """Whether ``s``'s transaction has flushed a change that bumps ``node`` at commit."""
    return bool(s.info.get(ALL)) or node in s.info.get(NODES, ())


_GENERATIONS = cast(Table, Generation.__table__)
_NODES = cast(Table, Node.__table__)
# Statements built once (building one costs more than running it).
# The generations rows (NODES_ROW, CATALOG_ROW, ADDRESSES_ROW): read, and one given a new
# value.
_READ_ALL = Prepared(select(_GENERATIONS.c.name, _GENERATIONS.c.value))
_BUMP_GEN = Prepared(
    update(_GENERATIONS)
    .where(_GENERATIONS.c.name == bindparam("name"))
    .values(value=bindparam("gen"))
)
_BUMP_SOME = (
    update(_NODES)
    .where(_NODES.c.name.in_(bindparam("names", expanding=True)))
    .values(orders_gen=bindparam("gen"))
)
_BUMP_ONE = Prepared(
    update(_NODES).where(_NODES.c.name == bindparam("node")).values(orders_gen=bindparam("gen"))
)
_BUMP_EVERY = Prepared(update(_NODES).values(orders_gen=bindparam("gen")))


def nodes_generation(s: Session) -> int | None:
    """The nodes generation as ``s`` sees it (None: no such row)."""
    if s.autoflush:
        s.flush()  # as the ORM's autoflush would (nothing to do: cheap)
    return _generation(s, NODES_ROW)


def catalog_generation(s: Session) -> int | None:
    """The catalog generation as ``s`` sees it (None: no such row)."""
    return _generation(s, CATALOG_ROW)


def addresses_generation(s: Session) -> int | None:
    """The addresses generation as ``s`` sees it (None: no such row)."""
    return _generation(s, ADDRESSES_ROW)


def addresses_pending(s: Session) -> bool:
    """Whether ``s``'s transaction changed an address (bumped at commit), pending
    changes included."""
    return _pending(s, ADDRESSES_CHANGED, IpAllocation)


def allocated(s: Session) -> None:
    """An address was inserted without the ORM (ops/placement.py ``allocate``): the
    addresses generation changes at the commit, as for a flushed one."""
    s.info.setdefault(ADDRESSES_CHANGED, "allocations")


def _pending(s: Session, flag: str, kinds: type | tuple[type, ...]) -> bool:
    """Whether the flush listener set ``flag`` in ``s``'s transaction, or ``s`` holds an
    unflushed change to an object of ``kinds``."""
    if s.info.get(flag) is not None:
        return True
    return any(isinstance(o, kinds) for group in (s.new, s.dirty, s.deleted) for o in group)


# s.info key: every generations row as the transaction read them (once: they change only
# at commits, this one's included).
_READ = "orders_gen.read"


def _generation(s: Session, name: str) -> int | None:
    read: dict[str, int] | None = s.info.get(_READ)
    if read is None:
        read = s.info[_READ] = {n: int(v) for n, v in _READ_ALL.rows(s.connection())}
    return read.get(name)


def catalog_pending(s: Session) -> bool:
    """Whether ``s``'s transaction changed a network or an image (bumped at commit),
    pending changes included."""
    return _pending(s, CATALOG_CHANGED, KEPT)


def nodes_pending(s: Session) -> bool:
    """Whether ``s``'s transaction flushed a change to a node's view (bumped at commit)."""
    return s.info.get(NODES_CHANGED) is not None


def claimed(s: Session) -> None:
    """A claim was added to a node's row without the ORM (ops/placement.py ``claim``):
    the nodes generation changes at the commit, as for a flushed claim."""
    s.info.setdefault(NODES_CHANGED, "claims")


def _node_change(s: Session, obj: Node, new_or_deleted: bool) -> None:
    if new_or_deleted:
        s.info[NODES_CHANGED] = "other"
        return
    state = inspect(obj)
    changed = [a for a in VIEW if state.attrs[a].history.has_changes()]
    if not changed:
        return
    if any(a not in CLAIMS for a in changed):
        s.info[NODES_CHANGED] = "other"
    elif s.info.get(NODES_CHANGED) is None:
        s.info[NODES_CHANGED] = "claims"


def _before_flush(s: Session, _ctx: object, _instances: object) -> None:
    nodes: set[str] = s.info.setdefault(NODES, set())
    for group, dirty in ((s.new, False), (s.dirty, True), (s.deleted, False)):
        for obj in group:
            if isinstance(obj, Node):
                _node_change(s, obj, not dirty)
            elif isinstance(obj, Workspace):
                nodes.add(obj.node or "")
                hist = inspect(obj).attrs.node.history
                nodes.update(n for n in hist.deleted if n)
            elif isinstance(obj, Network | ImageSignature):
                s.info[ALL] = True
            elif isinstance(obj, IpAllocation):
                s.info[ADDRESSES_CHANGED] = "other"
            if isinstance(obj, KEPT):
                s.info[CATALOG_CHANGED] = True
    nodes.discard("")


def _before_commit(s: Session) -> None:
    if s.in_nested_transaction():  # a SAVEPOINT: the bumps wait for the transaction's end
        return
    s.info.pop(AFTER, None)
    s.info.pop(NODES_AFTER, None)
    s.info.pop(_READ, None)
    s.info.pop(ADDRESSES_AFTER, None)
    if s.new or s.dirty or s.deleted:
        s.flush()
    if s.info.pop(CATALOG_CHANGED, None):
        _BUMP_GEN.write(s.connection(), {"name": CATALOG_ROW, "gen": new_gen()})
    _bump_row(s, ADDRESSES_ROW, ADDRESSES_CHANGED, ADDRESSES_AFTER, "allocations")
    _bump_row(s, NODES_ROW, NODES_CHANGED, NODES_AFTER, "claims")
    nodes: set[str] = s.info.pop(NODES, set())
    every = s.info.pop(ALL, False)
    if not nodes and not every:
        return
    gen = new_gen()
    if every:
        _BUMP_EVERY.write(s.connection(), {"gen": gen})
    elif len(nodes) == 1:
        _BUMP_ONE.write(s.connection(), {"gen": gen, "node": next(iter(nodes))})
    else:
        s.connection().execute(_BUMP_SOME, {"gen": gen, "names": sorted(nodes)})
    s.info[AFTER] = (gen, None if every else frozenset(nodes))


def _bump_row(s: Session, row: str, changed_key: str, after_key: str, only: str) -> None:
    """If ``s`` changed what generations row ``row`` validates (``changed_key``), give it
    a new value; ``s.info[after_key]``: (that value, whether ``only`` was the change)."""
    changed = s.info.pop(changed_key, None)
    if changed is not None:
        value = new_gen()
        _BUMP_GEN.write(s.connection(), {"name": row, "gen": value})
        s.info[after_key] = (value, changed == only)


def _after_rollback(s: Session) -> None:
    if not s.in_nested_transaction():  # the next transaction reads the generations again
        s.info.pop(_READ, None)
