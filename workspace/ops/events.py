"""Events after commit: per-node assignment generations, the capacity counter that wakes
the queue, workspace watchers (who receive WorkspaceViews), and site events (a counter
that wakes `WatchEvents` streams, which read the journal table, and listeners such as
the service's metrics)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from workspace.domain.events import SiteEvent
from workspace.domain.model import WorkspaceView

log = logging.getLogger("workspace.ops.events")
_WATCH_QUEUE_MAX = 10_000
# A replica that has not heard the others (its LISTEN connection down: cut off from the
# database) for this long lets go of its agents' task streams (edge/nodes.py Tasks): the
# others cannot forward an exec, a console or a save to it meanwhile.
DEAF_S = 10.0


@dataclass(frozen=True)
class Change:
    """What one local publish changed, as other replicas need it (``set_relay``): node
    names, workspace ids, whether capacity was freed, whether site events were written."""

    nodes: tuple[str, ...] = ()
    workspaces: tuple[str, ...] = ()
    capacity: bool = False
    site_events: bool = False


@dataclass(eq=False)
class Watcher:
    accepts: Callable[[WorkspaceView], bool]
    events: queue.Queue[WorkspaceView | None] = field(
        default_factory=lambda: queue.Queue(_WATCH_QUEUE_MAX)
    )
    overflowed: bool = False


class Notifier:
    def __init__(self) -> None:
        # One lock; a condition per thing waited for, so a change wakes only the threads
        # waiting for it: a node's agent stream waits on its node's own condition (with a
        # thousand agents connected, one shared condition woke all of them for each
        # create), the capacity queue on capacity, event streams on site events.
        self._lock = threading.Lock()
        self._capacity_cond = threading.Condition(self._lock)
        self._events_cond = threading.Condition(self._lock)
        self._node_conds: dict[str, threading.Condition] = {}
        self._generations: dict[str, int] = {}
        self._capacity = 0
        self._watchers: set[Watcher] = set()
        self._wlock = threading.Lock()
        self._closed = False
        self._site_events = 0
        self._event_listeners: list[Callable[[Sequence[SiteEvent]], None]] = []
        # Added to every node's generation: ``resync`` moves them all at once.
        self._epoch = 0
        self._relay: Callable[[Change], None] | None = None
        # Since when (monotonic) this replica has not heard the others; None: it hears.
        self._deaf_since: float | None = None

    # -- other replicas (service/replicas.py) --------------------------------------------

    def hearing(self, ok: bool) -> None:
        """The relay's listener is connected (``ok``) or not (from its first failure)."""
        with self._lock:
            if ok:
                self._deaf_since = None
            elif self._deaf_since is None:
                self._deaf_since = time.monotonic()

    def deaf_for(self) -> float:
        """How long this replica has not heard the other replicas (0: it hears them, or
        there are none: SQLite)."""
        with self._lock:
            since = self._deaf_since
        return 0.0 if since is None else time.monotonic() - since

    def set_relay(self, relay: Callable[[Change], None] | None) -> None:
        """Hand every local change to ``relay`` too (PostgreSQL: a NOTIFY to the other
        replicas). Changes applied with ``remote=True`` are not relayed again."""
        self._relay = relay

    def _out(self, change: Change) -> None:
        relay = self._relay
        if relay is not None:
            try:
                relay(change)
            except Exception:
                log.exception("relaying a change to the other replicas failed")

    def resync(self) -> None:
        """Wake every stream as if everything had changed (a missed notification, a
        reconnected listener): node streams resend their whole state, the queue runs, site
        event streams re-read the journal."""
        with self._lock:
            self._epoch += 1
            self._capacity += 1
            self._site_events += 1
            self._wake_all()

    def _wake_all(self) -> None:
        """Every waiting thread (the lock held)."""
        self._capacity_cond.notify_all()
        self._events_cond.notify_all()
        for cond in self._node_conds.values():
            cond.notify_all()

    # -- nodes -------------------------------------------------------------------------

    def node_changed(self, *nodes: str, remote: bool = False) -> None:
        with self._lock:
            for n in nodes:
                if n:
                    self._generations[n] = self._generations.get(n, 0) + 1
                    cond = self._node_conds.get(n)
                    if cond is not None:
                        cond.notify_all()
        if not remote and any(nodes):
            self._out(Change(nodes=tuple(n for n in nodes if n)))

    def generation(self, node: str) -> int:
        with self._lock:
            return self._generations.get(node, 0) + self._epoch

    def wait_node(self, node: str, seen: int, timeout_s: float) -> int:
        """Block until the node's generation moves past ``seen`` (or timeout/close)."""
        with self._lock:
            cond = self._node_conds.get(node)
            if cond is None:
                cond = self._node_conds[node] = threading.Condition(self._lock)
            cond.wait_for(
                lambda: self._closed or self._generations.get(node, 0) + self._epoch != seen,
                timeout_s,
            )
            return self._generations.get(node, 0) + self._epoch

    # -- capacity (wakes the queue) -----------------------------------------------------

    def capacity_changed(self, remote: bool = False) -> None:
        with self._capacity_cond:
            self._capacity += 1
            self._capacity_cond.notify_all()
        if not remote:
            self._out(Change(capacity=True))

    def wait_capacity(self, seen: int, timeout_s: float) -> int:
        with self._capacity_cond:
            self._capacity_cond.wait_for(lambda: self._closed or self._capacity != seen, timeout_s)
            return self._capacity

    # -- site events (ops/site_events.py) --------------------------------------------------

    def on_site_events(self, listener: Callable[[Sequence[SiteEvent]], None]) -> None:
        """Call ``listener`` with the events of every commit that wrote some."""
        self._event_listeners.append(listener)

    def site_events(self, events: Sequence[SiteEvent]) -> None:
        if not events:
            return
        with self._lock:
            self._site_events += 1
            self._events_cond.notify_all()
        for listener in self._event_listeners:
            try:
                listener(events)
            except Exception:
                log.exception("a site-event listener failed")
        self._out(Change(site_events=True))

    def site_events_elsewhere(self) -> None:
        """Another replica wrote site events: wake the streams (listeners such as the
        metrics count only this replica's own)."""
        with self._lock:
            self._site_events += 1
            self._events_cond.notify_all()

    def site_event_generation(self) -> int:
        with self._lock:
            return self._site_events

    def wait_site_events(self, seen: int, timeout_s: float) -> int:
        with self._lock:
            self._events_cond.wait_for(lambda: self._closed or self._site_events != seen, timeout_s)
            return self._site_events

    # -- workspace watchers ------------------------------------------------------------

    def subscribe(self, accepts: Callable[[WorkspaceView], bool]) -> Watcher:
        w = Watcher(accepts)
        with self._wlock:
            self._watchers.add(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        with self._wlock:
            self._watchers.discard(w)

    def end(self, w: Watcher) -> None:
        """End ``w``'s stream now (its client went): it is woken with the None that ends a
        stream, rather than notice at its next poll (its thread and its place among the
        caller's ``max_streams_per_caller`` held meanwhile)."""
        with contextlib.suppress(queue.Full):  # a full queue wakes it as well
            w.events.put_nowait(None)

    def watching(self) -> bool:
        """Whether any workspace stream is open (else remote changes need no reading)."""
        with self._wlock:
            return bool(self._watchers)

    def workspace_changed(self, ws: WorkspaceView, remote: bool = False) -> None:
        with self._wlock:
            watchers = list(self._watchers)
        for w in watchers:
            if w.accepts(ws):
                try:
                    w.events.put_nowait(ws)
                except queue.Full:
                    w.overflowed = True
        if not remote:
            self._out(Change(workspaces=(ws.id,)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_all()
        with self._wlock:
            for w in self._watchers:
                with contextlib.suppress(queue.Full):
                    w.events.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._closed
