"""Several service processes on one PostgreSQL (docs/design/replicas.md).

``Relay``: what one replica commits wakes the streams of every other. After each commit
the notifier hands the change (node names, workspace ids, capacity freed, site events
written) to the relay; a sender thread coalesces what is pending and sends it as one
``NOTIFY workspace_changes`` on a connection of its own (no statement is added to the
writer's transaction). Every replica ``LISTEN``s on another dedicated connection and
applies what others sent to its local notifier: node generations, the capacity counter,
the site-event counter, and the workspaces re-read from the store for its watchers.
Notifications can be missed (a writer killed between commit and NOTIFY, a listener
reconnecting): on reconnect every stream is woken as if everything had changed, and every
``RESYNC_S`` the workspaces updated since the last pass wake their node and watchers.

``Leader``: the background loops run on the replica that holds a session-level advisory
lock on a dedicated connection; the holder checks the connection every ``CHECK_S`` and
acts only while its last good check is younger than ``LEASE_S``, so a replica cut off
from the database (its check failing or hanging) stops acting within seconds. Each check
renews the leader's lease in the database too (its session's ``query_start``): a
candidate that finds it older than ``fence_s`` takes the leader for hung and ends its
session (``pg_terminate_backend``), which frees the lock. SQLite (one process) is always
the leader.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from workspace.log import Outage
from workspace.ops.admission import positioned
from workspace.ops.events import Change, Notifier
from workspace.ops.unit import Env
from workspace.store import Node, Workspace
from workspace.store.engines import LOCK_CLASS, reason
from workspace.store.mapping import VIEW_COLUMNS, view_rows, workspace_views
from workspace.store.models import TrustSettings

log = logging.getLogger("workspace.service.replicas")

CHANNEL = "workspace_changes"
# Tasks forwarded to the replica that holds an agent's stream (service/task_relay.py).
TASKS_CHANNEL = "workspace_tasks"
# PostgreSQL refuses payloads of 8000 bytes or more; ids are sent in batches under this.
PAYLOAD_MAX = 7000
# The fallback re-check of workspaces changed elsewhere (missed notifications).
RESYNC_S = 5.0
# The leader's lock (the store's write lock is 1, migrations 2).
LEADER_LOCK = 3
CHECK_S = 1.0
LEASE_S = 3.0
FENCE_S = 10.0  # config leader_fence_s
CONNECT_TIMEOUT_S = 3
RETRY_S = 1.0


def conninfo(engine: Engine) -> str:
    """A libpq URI for the store's database (psycopg itself, outside SQLAlchemy's pool)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def connect(dsn: str, name: str) -> Any:
    """A dedicated autocommit connection named ``name`` (pg_stat_activity), with keepalives."""
    import psycopg  # only on PostgreSQL

    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=name,
        # a peer that vanished is noticed within seconds on TCP (ignored on unix sockets)
        keepalives_idle=2,
        keepalives_interval=1,
        keepalives_count=2,
        tcp_user_timeout=int(LEASE_S * 1000),
    )


class Relay:
    """NOTIFY what this replica changed, LISTEN for what the others did."""

    def __init__(self, env: Env, engine: Engine, replica_id: str = "") -> None:
        self.env = env
        self.notifier: Notifier = env.notifier
        self.dsn = conninfo(engine)
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._pending = PendingChanges()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conns: list[Any] = []
        self.listening = threading.Event()
        self.received = 0
        # The nodes' order generations and the trust policy's version at the last
        # re-check (None: none yet).
        self._known: tuple[dict[str, int], int] | None = None
        # Messages sent as they are (not coalesced), and who handles those received.
        self._raw: queue.Queue[tuple[str, str]] = queue.Queue()
        self.on_task: Callable[[str], None] | None = None
        self._deaf = Outage(log, "listening to the other replicas", RETRY_S)
        # Tried at each change; what is not sent the others find at their re-check.
        self._mute = Outage(
            log,
            "notifying the other replicas",
            RETRY_S,
            again=(
                f"trying again at the next change (the others see what was not sent "
                f"at their next re-check, within {RESYNC_S:g} s)"
            ),
        )

    def start(self) -> None:
        self.notifier.set_relay(self.offer)
        threading.Thread(target=self._send_loop, name="notify-send", daemon=True).start()
        threading.Thread(target=self._listen_loop, name="notify-listen", daemon=True).start()

    def close(self) -> None:
        self.notifier.set_relay(None)
        self._stop.set()
        self._wake.set()
        for c in list(self._conns):
            with contextlib.suppress(Exception):
                c.close()

    # -- sending -----------------------------------------------------------------------

    def offer(self, change: Change) -> None:
        with self._lock:
            self._pending.add(change)
        self._wake.set()

    def send(self, channel: str, payload: str) -> None:
        """NOTIFY ``channel`` with ``payload`` (under 8000 bytes) from the sender thread."""
        self._raw.put((channel, payload))
        self._wake.set()

    def _take(self) -> PendingChanges | None:
        with self._lock:
            p, self._pending = self._pending, PendingChanges()
        return p if p else None

    def _send_loop(self) -> None:
        conn = None
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            pending = self._take()
            messages: list[tuple[str, str]] = []
            while not self._raw.empty():
                messages.append(self._raw.get_nowait())
            if pending is not None:
                messages += [(CHANNEL, p) for p in pending.payloads(self.replica_id)]
            if not messages:
                continue
            # A connection idle since the last batch may have died meanwhile (the server
            # restarted, or ended it): its first statement fails, having sent nothing.
            # What is left is sent again at once on a new connection; dropped only when
            # that fails too (the others find it at their next re-check).
            sent = 0
            for fresh in (conn is None or conn.closed, True):
                try:
                    if conn is None or conn.closed:
                        conn = connect(self.dsn, "workspace-service notify")
                        self._conns.append(conn)
                    for channel, payload in messages[sent:]:
                        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                        sent += 1
                    self._mute.answered()
                    break
                except Exception as exc:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        with contextlib.suppress(ValueError):
                            self._conns.remove(conn)
                    conn = None
                    if fresh or self._stop.is_set():
                        if not self._stop.is_set():
                            # Once, then at most every minute (a PostgreSQL outage).
                            self._mute.failed(reason(exc))
                        self._stop.wait(RETRY_S)
                        break

    # -- listening ---------------------------------------------------------------------

    def _listen_loop(self) -> None:
        since = self.env.clock()
        while not self._stop.is_set():
            conn = None
            try:
                conn = connect(self.dsn, "workspace-service listen")
                self._conns.append(conn)
                conn.execute(f"LISTEN {CHANNEL}")
                conn.execute(f"LISTEN {TASKS_CHANNEL}")
                # Whatever happened while not listening: every stream re-reads, and the
                # watchers get the workspaces updated since the last re-check.
                self.notifier.resync()
                since = self._recheck(since)
                self._deaf.answered()
                self.listening.set()
                self.notifier.hearing(True)
                next_check = time.monotonic() + RESYNC_S
                while not self._stop.is_set():
                    left = max(0.05, next_check - time.monotonic())
                    for n in conn.notifies(timeout=left, stop_after=64):
                        if n.channel == TASKS_CHANNEL:
                            if self.on_task is not None:
                                self.on_task(n.payload)
                        else:
                            self._apply(n.payload)
                    if time.monotonic() >= next_check:
                        since = self._recheck(since)
                        next_check = time.monotonic() + RESYNC_S
            except Exception as exc:
                if not self._stop.is_set():
                    self._deaf.failed(reason(exc))
            finally:
                self.listening.clear()
                if not self._stop.is_set():
                    self.notifier.hearing(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    with contextlib.suppress(ValueError):
                        self._conns.remove(conn)
            self._stop.wait(RETRY_S)

    def _apply(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("r") == self.replica_id:
            return  # ours: applied locally already
        self.received += 1
        nodes = [str(n) for n in msg.get("n", ())]
        if nodes:
            self.notifier.node_changed(*nodes, remote=True)
        if msg.get("c"):
            self.notifier.capacity_changed(remote=True)
        if msg.get("e"):
            self.notifier.site_events_elsewhere()
        ids = [str(i) for i in msg.get("w", ())]
        if ids and self.notifier.watching():
            with self.env.store.read() as s:
                rows = view_rows(s, select(*VIEW_COLUMNS).where(Workspace.id.in_(ids)))
                views = positioned(s, workspace_views(s, rows))
            for v in views:
                self.notifier.workspace_changed(v, remote=True)

    def _recheck(self, since: float) -> float:
        """Wake the nodes and watchers of the workspaces updated since ``since`` (minus a
        margin for the replicas' clocks), and the nodes whose orders changed otherwise (a
        network, a signature: their order generations; the trust policy: its version):
        what a missed notification would have said."""
        now = self.env.clock()
        recent = Workspace.updated_at >= since - RESYNC_S
        views = []
        with self.env.store.read() as s:
            gens = {str(n): int(g) for n, g in s.execute(select(Node.name, Node.orders_gen))}
            policy = s.execute(select(TrustSettings.version)).scalar() or 0
            # Only the nodes, unless a watcher wants the workspaces themselves: under a
            # steady stream of creates this pass covers thousands of rows, and loading
            # each whole (its JSON columns) cost a replica more than the notifications;
            # the watchers get views, read as their columns (store/mapping.py ViewRow).
            changed = list(s.execute(select(Workspace.id, Workspace.node).where(recent)))
            if changed and self.notifier.watching():
                views = positioned(
                    s, workspace_views(s, view_rows(s, select(*VIEW_COLUMNS).where(recent)))
                )
        woken = {node for _id, node in changed if node}
        if self._known is not None:
            old_gens, old_policy = self._known
            if policy != old_policy:
                woken.update(gens)
            woken.update(n for n, g in gens.items() if old_gens.get(n) != g)
        self._known = (gens, policy)
        if woken:
            self.notifier.node_changed(*sorted(woken), remote=True)
        if changed:
            self.notifier.capacity_changed(remote=True)
        for v in views:
            self.notifier.workspace_changed(v, remote=True)
        return now


class PendingChanges:
    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.workspaces: set[str] = set()
        self.capacity = False
        self.site_events = False

    def __bool__(self) -> bool:
        return bool(self.nodes or self.workspaces or self.capacity or self.site_events)

    def add(self, c: Change) -> None:
        self.nodes.update(c.nodes)
        self.workspaces.update(c.workspaces)
        self.capacity = self.capacity or c.capacity
        self.site_events = self.site_events or c.site_events

    def payloads(self, replica_id: str) -> list[str]:
        """JSON payloads under PAYLOAD_MAX: flags and nodes in the first, ids spread."""

        def dumps(value: object) -> str:
            return json.dumps(value, separators=(",", ":"))

        out: list[str] = []
        msg: dict[str, Any] = {"r": replica_id, "n": [], "w": []}
        if self.capacity:
            msg["c"] = 1
        if self.site_events:
            msg["e"] = 1
        size = len(dumps(msg))
        items = [("n", n) for n in sorted(self.nodes)] + [("w", w) for w in sorted(self.workspaces)]
        for key, value in items:
            cost = len(dumps(value)) + 1
            if size + cost > PAYLOAD_MAX:
                out.append(dumps(msg))
                msg = {"r": replica_id, "n": [], "w": []}
                size = len(dumps(msg))
            msg[key].append(value)
            size += cost
        out.append(dumps(msg))
        return out


class Leader:
    """Who runs the background loops: ``acting()`` is true while this replica holds the
    leader lock and its connection answered within ``LEASE_S``."""

    def __init__(
        self,
        engine: Engine | None,
        on_change: Callable[[bool], None] = lambda _held: None,
        fence_s: float = FENCE_S,
    ) -> None:
        """``engine`` None (SQLite): always the leader. ``fence_s``: how long the
        leader's lease may go unrenewed before a candidate ends its session."""
        self.dsn = conninfo(engine) if engine is not None else ""
        self.on_change = on_change
        self.fence_s = fence_s
        self._held = engine is None
        self._ok_at = 0.0
        self._stop = threading.Event()
        self._conn: Any = None
        self._changed = threading.Condition()
        # The database session (backend pid) holding the leader lock, while it is held
        # (0: not held); the registry writes it in this replica's row (service/registry.py).
        self.session = 0
        self._outage = Outage(log, "the leader connection", CHECK_S)

    def start(self) -> None:
        if not self.dsn:
            self.on_change(True)
            return
        threading.Thread(target=self._run, name="leader", daemon=True).start()

    def acting(self) -> bool:
        if not self.dsn:
            return True
        return self._held and time.monotonic() - self._ok_at < LEASE_S

    def wait_acting(self, timeout_s: float) -> bool:
        """Block until this replica acts as leader (or ``timeout_s``); returns acting()."""
        end = time.monotonic() + timeout_s
        with self._changed:
            while not self.acting() and not self._stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, CHECK_S))
        return self.acting()

    def close(self) -> None:
        self._stop.set()
        self._set(False)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # the session ends: the lock is free for another replica

    def _set(self, held: bool) -> None:
        if not held:
            self.session = 0
        if held == self._held:
            return
        # Said before it holds (acting() reads it) and the waiters are woken: one that then
        # reads the log finds the line.
        if held:
            log.info("this replica is now the leader (runs the background loops)")
        elif not self._stop.is_set():
            log.warning("this replica is no longer the leader")
        elif self.dsn:  # a replica stopping (on SQLite there are none: nothing to say)
            log.info("stopping: this replica is no longer the leader")
        self._held = held
        with self._changed:
            self._changed.notify_all()
        try:
            self.on_change(held)
        except Exception:
            log.exception("leader change hook failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    # The pid names the replica in pg_stat_activity: a candidate until
                    # it holds the lock, then the leader (the session ends with the lock).
                    name = f"workspace-service candidate {os.getpid()}"
                    self._conn = connect(self.dsn, name)
                if not self._held:
                    row = self._conn.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LEADER_LOCK)
                    ).fetchone()
                    if row and row[0]:
                        self._conn.execute(
                            "SELECT set_config('application_name', %s, false)",
                            (f"workspace-service leader {os.getpid()}",),
                        )
                        self._ok_at = time.monotonic()
                        self.session = int(self._conn.info.backend_pid)
                        self._outage.answered()  # (said before it leads)
                        self._set(True)
                    else:
                        self._fence_if_stale(self._conn)
                else:
                    # The lock is ours as long as this session lives; the check proves it,
                    # and renews the lease the candidates read (the session's query_start).
                    self._conn.execute("SELECT 1").fetchone()
                    self._ok_at = time.monotonic()
                # The whole try worked (a candidate's look for a stale leader too): not
                # only its connection, or a step failing after it would flap the lines.
                self._outage.answered()
            except Exception as exc:
                # Lost the connection, so the lock with it: stop acting first.
                was = self._held
                self._set(False)
                if not self._stop.is_set():
                    why = reason(exc)
                    lost = (
                        f"leader connection lost ({why}): this replica does not lead until "
                        "it takes the lock again (another replica may have ended its session "
                        f"after it did not renew its lease for {self.fence_s:g} s: "
                        "leader_fence_s)"
                    )
                    # Said once, then at most every minute while it lasts (a PostgreSQL
                    # outage): not at every try.
                    self._outage.failed(why, lost if was else "")
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._stop.wait(CHECK_S)

    def _fence_if_stale(self, conn: Any) -> None:
        """End the session of a leader that has not renewed its lease for ``fence_s``
        (hung: stopped, or its checks stuck, while its session keeps the lock); the lock
        is free once that backend is gone, and the next try takes it."""
        row = conn.execute(_STALE_LEADER, (LOCK_CLASS, LEADER_LOCK)).fetchone()
        if row is None or row[2] is None or float(row[2]) < self.fence_s:
            return
        pid, name, age = int(row[0]), str(row[1]), float(row[2])
        log.warning(
            "the leader (%s, database session %d) has not renewed its lease for %.1f s "
            "(leader_fence_s = %g): ending its session to take over",
            name or "unnamed",
            pid,
            age,
            self.fence_s,
        )
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except Exception as exc:  # another role's session: a superuser must end it
            log.error("cannot end the stale leader's session %d: %s", pid, exc)


# The session holding the leader lock in this database, and how long ago it last renewed
# its lease (its last statement started).
_STALE_LEADER = """
SELECT a.pid, a.application_name, EXTRACT(EPOCH FROM clock_timestamp() - a.query_start)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
  AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
