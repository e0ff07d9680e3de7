"""MAC addresses drawn from a counter per MAC prefix, not at random and checked.

A NIC's MAC is its network's prefix (3 octets) and a 24-bit suffix: the prefix's counter
(table ``mac_counters``), taken in order. A transaction reads the counter once, at its
first draw of that prefix, keeps it in the session and writes the value it reached once,
when it commits (a ``before_commit`` listener on the store's sessions): a batch of creates
(ops/group_commit.py) draws all its MACs with one read and one write, and no query asks
whether a MAC is free. A SAVEPOINT rolled back leaves the counter where it got (its MACs
are skipped: a gap, never a repeat).

A prefix without a row starts right above the highest MAC of that prefix already handed
out (random ones from before the counter, or fixed ones put there by hand), so upgrading
a site repeats none. Networks sharing a prefix share its counter (MACs are unique across
networks). Past the last suffix the counter goes on and its MACs start again from the
first (``ipam.mac_of``).

Uniqueness remains the store's: ``ip_allocations.mac`` is unique, and an allocation is
inserted with ON CONFLICT DO NOTHING (``store/mapping.py`` ``insert_allocation``), so a
MAC that is taken anyway (after a wrap, or a random one of an upgraded site) is skipped
and the next drawn (ops/placement.py ``allocate``). Writers are serialised (the store's
write lock; on PostgreSQL the advisory lock every write transaction takes first), so the
replicas of a site never draw from the same counter value.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from workspace import ipam
from workspace.store.models import IpAllocation, MacCounter
from workspace.store.prepared import Prepared

# s.info key: prefix → the next suffix this transaction draws.
KEPT = "macs.next"

_counters = cast(Table, MacCounter.__table__)
_READ = Prepared(select(_counters.c.next).where(_counters.c.prefix == bindparam("prefix")))
# The highest MAC of a prefix (fixed-width lowercase hex: string order is numeric order;
# a range over the unique index on mac).
_HIGHEST = Prepared(
    select(func.max(IpAllocation.mac)).where(
        IpAllocation.mac >= bindparam("low"), IpAllocation.mac <= bindparam("high")
    )
)
_WRITE = Prepared(
    update(_counters).where(_counters.c.prefix == bindparam("p")).values(next=bindparam("n"))
)
_ADD = Prepared(insert(_counters))


def install(sessions: sessionmaker[Session]) -> None:
    event.listen(sessions, "before_commit", _before_commit)


def draw(s: Session, prefix: str) -> str:
    """The next MAC of ``prefix`` (3 lowercase hex octets) in ``s``'s transaction."""
    kept: dict[str, int] = s.info.setdefault(KEPT, {})
    n = kept.get(prefix)
    if n is None:
        n = _start(s, prefix)
    kept[prefix] = n + 1
    return ipam.mac_of(prefix, n)


def _start(s: Session, prefix: str) -> int:
    conn = s.connection()
    n = _READ.scalar(conn, {"prefix": prefix})
    if n is not None:
        return int(n)
    top = _HIGHEST.scalar(conn, {"low": f"{prefix}:00:00:00", "high": f"{prefix}:ff:ff:ff"})
    return ipam.mac_suffix(top) + 1 if top else 0


def _before_commit(s: Session) -> None:
    if s.in_nested_transaction():  # a SAVEPOINT: the counter is written at the end
        return
    kept: dict[str, int] = s.info.pop(KEPT, {})
    if not kept:
        return
    conn = s.connection()
    for prefix, n in sorted(kept.items()):
        # A row added by a SAVEPOINT that rolled back is gone: add it again.
        if not _WRITE.write(conn, {"p": prefix, "n": n}):
            _ADD.write(conn, {"prefix": prefix, "next": n})
