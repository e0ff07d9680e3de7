"""The unit of work of an operation: one store transaction and the events it causes.

An operation opens ``write(env)``, changes rows through ``u.s`` and names what it
changed (``u.changed(rows)``, ``u.nodes(names)``). When the block ends the changed
workspaces' usage intervals are recorded (ops/metering.py) and they are read back as
views, inside the transaction (one NIC query for all); the transaction commits, and only
then are the events published: watchers see the views, the nodes' assignment streams
wake, the queue wakes if capacity was freed, the site events the transaction wrote
(store/journal.py) reach `WatchEvents` streams and the metrics.
A failed operation publishes nothing, but a refusal (no capacity, a quota, trust) is
recorded as a site event of its own (ops/refusals.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.config import ServiceConfig
from workspace.domain.events import SiteEvent
from workspace.domain.model import WorkspaceView
from workspace.domain.states import State
from workspace.errors import WorkspaceError
from workspace.grants import Signer as GrantSigner
from workspace.log import Throttle
from workspace.ops import metering, refusals
from workspace.ops.events import Notifier
from workspace.ops.sent_orders import SentOrders
from workspace.store import Store, Workspace, journal
from workspace.store.mapping import workspace_views

# s.info key: workspaces an operation changed below its unit of work (ops/preempt.py:
# the victims of a placement), named changed when the unit is sealed.
ALSO_CHANGED = "unit.also_changed"


def note_changed(s: Session, *rows: Workspace) -> None:
    s.info.setdefault(ALSO_CHANGED, {}).update((w.id, w) for w in rows)


# A cluster member's addresses appear (placed) or go (terminated) in these states.
_PEERS_MOVE = (State.SCHEDULED.value, State.TERMINATED.value)


@dataclass(frozen=True)
class Env:
    """What every operation runs against."""

    cfg: ServiceConfig
    store: Store
    notifier: Notifier
    clock: Callable[[], float] = time.time
    # The site's image trust policy applies: checked at create, sent with every node's
    # orders, nodes' decisions audited (False: none of it, e.g. unit tests of other things).
    check_trust: bool = False
    # When the service started: nodes get a grace period after it (ops/liveness.py).
    started_at: float = 0.0
    # Warnings that would repeat at every call, one line per key and five minutes
    # (warn mode's untrusted launches, ops/trust.py).
    warned: Throttle = field(default_factory=lambda: Throttle(300.0), compare=False)
    # Node name -> (when, why, bound) this replica last refused an agent its name
    # (ops/node_refusals.py), ``bound`` the certificate serial the node was bound to when
    # the refusal was for another certificate: a node that goes DOWN says that, not "no
    # heartbeat".
    refused_nodes: dict[str, tuple[float, str, str]] = field(default_factory=dict, compare=False)
    # Signs the peer grants sent with each node's orders (workspace/grants.py; None
    # without TLS: peers check nothing then).
    grant_signer: GrantSigner | None = field(default=None, compare=False)
    # This replica's id on PostgreSQL (service/registry.py; "" on SQLite): the saves it
    # runs are marked with it.
    replica_id: str = ""
    # Which workspaces each node was sent in which numbered set of its orders, so that a
    # full report built before a set is not read as saying they are gone
    # (ops/sent_orders.py).
    sent_orders: SentOrders = field(default_factory=SentOrders, compare=False)

    @classmethod
    def of(
        cls,
        cfg: ServiceConfig,
        store: Store,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
        check_trust: bool = False,
    ) -> Env:
        return cls(cfg, store, notifier, clock, check_trust, clock())


class UnitOfWork:
    """One write transaction (``s``) and what to publish after it commits."""

    def __init__(self, s: Session, clock: Callable[[], float] = time.time) -> None:
        self.s = s
        self.clock = clock
        self._rows: dict[str, Workspace] = {}
        self._nodes: set[str] = set()
        self._capacity = False
        self.views: dict[str, WorkspaceView] = {}
        # The reasons the views of some workspaces show instead of their rows': a waiting
        # one's place in the queue (ops/queue.py, which knows it without reading the queue).
        self.reasons: dict[str, str] = {}
        # The site events this transaction writes (the list grows with each flush),
        # published by ``publish`` (not by the store: in commit order, under the lock).
        self.events: list[SiteEvent] = journal.events_of(s)
        journal.owner_publishes(s)

    def changed(self, *rows: Workspace) -> None:
        for w in rows:
            self._rows[w.id] = w

    def rows(self) -> list[Workspace]:
        """The workspaces named changed so far."""
        return list(self._rows.values())

    def changed_clusters(self) -> set[str]:
        """The clusters of the changed workspaces (their state may follow)."""
        return {w.cluster for w in self._rows.values() if w.cluster}

    def nodes(self, *names: str) -> None:
        self._nodes.update(n for n in names if n)

    def capacity(self) -> None:
        """Capacity appeared (a node came or came back): wake the queue."""
        self._capacity = True

    def mark(self) -> tuple[frozenset[str], frozenset[str], tuple[int, frozenset[str]]]:
        """What was named changed so far and where the journal is: ``rewind`` returns to
        it after a SAVEPOINT begun here rolled back (ops/group_commit.py)."""
        return frozenset(self._rows), frozenset(self._nodes), journal.mark(self.s)

    def rewind(self, at: tuple[frozenset[str], frozenset[str], tuple[int, frozenset[str]]]) -> None:
        rows, nodes, journal_at = at
        for wid in set(self._rows) - rows:
            del self._rows[wid]
        self._nodes &= nodes
        journal.rewind(self.s, journal_at)

    def view(self, wid: str) -> WorkspaceView:
        return self.views[wid]

    def seal(self) -> None:
        """Record the changed workspaces' usage and read them back as views (still inside
        the transaction); the nodes of clusters whose addresses changed get new orders."""
        self.changed(*self.s.info.pop(ALSO_CHANGED, {}).values())
        rows = list(self._rows.values())
        self._peers_moved(rows)
        metering.record(self.s, rows, self.clock())
        self.views = {
            v.id: replace(v, reason=self.reasons[v.id]) if v.id in self.reasons else v
            for v in workspace_views(self.s, rows)
        }

    def _peers_moved(self, rows: list[Workspace]) -> None:
        """A cluster member placed (addresses allocated) or terminated (released): the
        CLUSTER-connectivity members' orders carry every member's addresses (Order.peers),
        so the nodes holding them are sent their orders again."""
        clusters = {w.cluster for w in rows if w.cluster and w.state in _PEERS_MOVE and w.node}
        if clusters:
            q = select(Workspace.node).where(
                Workspace.cluster.in_(sorted(clusters)),
                Workspace.node != "",
                Workspace.state != State.TERMINATED.value,
                Workspace.connectivity == "cluster",
            )
            self._nodes.update(self.s.execute(q).scalars())

    def publish(self, notifier: Notifier) -> None:
        freed = self._capacity
        for v in self.views.values():
            notifier.workspace_changed(v)
            freed = freed or v.state is State.TERMINATED
        notifier.node_changed(*sorted(self._nodes))
        if freed:
            notifier.capacity_changed()
        notifier.site_events(self.events)


@contextmanager
def write(env: Env, refused_into: list[SiteEvent] | None = None) -> Iterator[UnitOfWork]:
    """A unit of work: commit, then publish its events (nothing if it raised).
    ``refused_into``: a refusal's site events are put there for the caller to record
    or not (the autoscaler: only when its decision is news), instead of recorded."""
    refused: list[SiteEvent] = []
    # Published before the write lock is let go: watchers get one workspace's changes in
    # the order they were committed (two writers publishing after the lock could be
    # overtaken, and a watcher's last event would show the older state).
    with env.store.write_lock:
        try:
            with env.store.write() as s:
                u = UnitOfWork(s, env.clock)
                try:
                    yield u
                    u.seal()
                except WorkspaceError as exc:
                    # Read before the rollback expires the rows.
                    made = journal.created(u.s) + u.rows()
                    refused = refusals.refused(exc, made, env.clock())
                    if refused_into is not None:
                        refused_into.extend(refused)
                        refused = []
                    raise
        finally:
            if refused:
                refusals.record(env.store, env.notifier, refused)
        u.publish(env.notifier)
