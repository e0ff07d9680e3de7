"""Which service replicas are alive, on PostgreSQL (docs/design/replicas.md).

Each replica has a row in ``replicas`` (its id, host, pid, addresses, when it started)
and, on a connection of its own, holds the session-level advisory lock ``(REPLICA_CLASS,
seq)`` of that row for as long as it lives: the database's own liveness. A process that
dies, even by kill -9, loses its session and so its lock at once. A replica whose session
stays open while it does not run (stopped, frozen, cut off without the server noticing)
is caught by its lease: every ``CHECK_S`` its loop reads the registry on that connection,
which renews the session's ``query_start``; a replica that finds another's older than
``fence_s`` ends that session (``pg_terminate_backend``), as a candidate does to a hung
leader (service/replicas.py).

A row whose lock has been free for ``GONE_S`` (a replica reconnecting after a blip or a
database restart takes it again within a second or two) is a replica that is gone:
the leader clears the save marks it left (``on_gone``: ops/save.py ``clear_gone``) and
deletes the row; the task relay stops waiting for an answer from it
(``gone``: service/task_relay.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from workspace.domain.replicas import ReplicaView
from workspace.log import Outage
from workspace.service.replicas import CHECK_S, FENCE_S, LEADER_LOCK, connect
from workspace.store.engines import LOCK_CLASS, away, reason

__all__ = ["GONE_S", "REPLICA_CLASS", "Registry", "ReplicaView"]

log = logging.getLogger("workspace.service.registry")

# The replicas' locks: (REPLICA_CLASS, seq of the replica's row). The store's are 0x5753.
REPLICA_CLASS = 0x5754
# How long a replica's lock must stay free before it is taken for gone.
GONE_S = 5.0

# Every replica's row, whether it leads (the session its row names holds the leader lock
# now: service/replicas.py), the database session holding its own lock (NULL: none) and
# how long ago that session last renewed its lease (its last statement started).
_PICTURE = """
SELECT r.replica_id, r.host, r.pid, r.listen, r.node_listen, r.started_at,
       r.metrics_listen,
       EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted
         AND k.classid = %(leader_class)s AND k.objid = %(leader_lock)s AND k.objsubid = 2
         AND k.pid = r.leader_session
         AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())),
       l.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.query_start)
FROM replicas r
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.classid = %(cls)s
  AND l.objid::bigint = r.seq AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
"""

_REGISTER = """
INSERT INTO replicas (replica_id, host, pid, listen, node_listen, started_at, metrics_listen,
  leader_session)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (replica_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
  listen = EXCLUDED.listen, node_listen = EXCLUDED.node_listen,
  metrics_listen = EXCLUDED.metrics_listen, leader_session = EXCLUDED.leader_session
RETURNING seq
"""

# The session holding the leader lock for this replica (NULL: none).
_LEADING = "UPDATE replicas SET leader_session = %s WHERE replica_id = %s"

# A gone replica's row, unless its lock was taken again meanwhile.
_FORGET = """
DELETE FROM replicas r WHERE r.replica_id = %s AND NOT EXISTS (
  SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
    AND l.classid = %s AND l.objid::bigint = r.seq AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


class Registry:
    """This replica's row and lock, and what it knows of the others."""

    def __init__(
        self,
        dsn: str,
        replica_id: str,
        listen: str,
        node_listen: str,
        acting: Callable[[], bool],
        on_gone: Callable[[dict[str, str]], int],
        fence_s: float = FENCE_S,
        metrics_url: str = "",
        leader_session: Callable[[], int] = lambda: 0,
    ) -> None:
        """``acting``: whether this replica leads (only the leader clears and forgets the
        gone); ``on_gone``: clears what the replicas named (id -> description) left;
        ``leader_session``: the database session holding the leader lock for this replica
        (0: none; ``Leader.session``), written in its row for the others to see."""
        self.dsn = dsn
        self.replica_id = replica_id
        self.me = ReplicaView(
            replica_id,
            socket.gethostname(),
            os.getpid(),
            listen,
            node_listen,
            time.time(),
            metrics_url,
        )
        self.acting = acting
        self.leader_session = leader_session
        self._marked = 0  # the leader session this replica's row names
        self.on_gone = on_gone
        self.fence_s = fence_s
        self._conn: Any = None
        self._locked = False
        self._since = 0.0  # when this replica's current session began (monotonic)
        self._missing: dict[str, float] = {}  # replica id -> first seen without its lock
        self._gone: set[str] = set()
        self._live: list[ReplicaView] = []
        self._read_at = 0.0  # when the read of the last good picture began (monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._outage = Outage(log, "the replica registry", CHECK_S)
        self.passes = 0

    def start(self) -> None:
        """Register now (before this replica serves: a save it marks names a replica the
        others know), then keep the lock and the picture in a thread of its own."""
        self.check()
        threading.Thread(target=self._run, name="registry", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # the session ends: the lock is free (stopping is going)

    def live(self) -> list[ReplicaView]:
        """The replicas alive at the last check (this one first); Unavailable while the
        database cannot be read: the last picture is not what is alive now (a leader
        stops leading within seconds of losing its connection, none leads meanwhile)."""
        if self._outage.failing:
            raise away(writes=False)
        with self._lock:
            return list(self._live)

    def picture(self) -> tuple[float, list[str]]:
        """When the last good picture was read (``time.monotonic()`` as its read began:
        a replica registered before then is in it) and the ids of the replicas alive in
        it: each of them answers an offer of an exec or a console (service/offers.py)."""
        with self._lock:
            return self._read_at, [v.replica_id for v in self._live]

    def gone(self, replica_id: str) -> bool:
        """Whether ``replica_id`` is known to be gone (its lock free for ``GONE_S``, or its
        row forgotten by the leader)."""
        with self._lock:
            return replica_id in self._gone

    def _run(self) -> None:
        while not self._stop.wait(CHECK_S):
            self.check()

    def check(self) -> None:
        """One pass: hold this replica's lock, read every replica's, judge them."""
        began = time.monotonic()
        try:
            rows = self._read()
        except Exception as exc:
            if not self._stop.is_set():
                # Once, then at most every minute while it lasts (a PostgreSQL outage).
                self._outage.failed(reason(exc))
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            return
        self._outage.answered()
        now = time.monotonic()
        settled = now - self._since >= GONE_S  # this session saw the others come back
        live: list[ReplicaView] = []
        gone: dict[str, str] = {}
        for rid, host, pid, listen, node_listen, started, metrics, leads, holder, age in rows:
            view = ReplicaView(
                str(rid), str(host), int(pid), listen, node_listen, started, metrics, leads
            )
            held = holder is not None
            if held and rid != self.replica_id and age is not None and age >= self.fence_s:
                self._fence(view, int(holder), float(age))
                held = False
            if held:
                self._missing.pop(view.replica_id, None)
                live.append(view)
                continue
            first = self._missing.setdefault(view.replica_id, now)
            if settled and now - first >= GONE_S and rid != self.replica_id:
                gone[view.replica_id] = view.describe()
        seen = {str(r[0]) for r in rows}
        with self._lock:
            # A row that went away was forgotten by the leader: that replica is gone.
            self._gone |= {v.replica_id for v in self._live} - seen
            self._gone |= set(gone)
            self._gone -= {v.replica_id for v in live}
            live.sort(key=lambda v: (v.replica_id != self.replica_id, v.started_at))
            self._live = live
            self._read_at = began
        self.passes += 1
        if gone and self.acting():
            self._forget(gone)

    def _read(self) -> list[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, f"workspace-service replica {self.replica_id}")
            self._since = time.monotonic()
            self._locked = False
            self._missing.clear()
        conn = self._conn
        session = self.leader_session()
        if not self._locked:
            me = self.me
            row_values = (me.replica_id, me.host, me.pid, me.listen, me.node_listen)
            with conn.transaction():
                (seq,) = conn.execute(
                    _REGISTER,
                    (*row_values, me.started_at, me.metrics_url, session or None),
                ).fetchone()
                # Taken in the row's transaction: no one sees the row without its lock.
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (REPLICA_CLASS, seq)
                ).fetchone()
            self._locked = bool(row and row[0])
            self._marked = session
        elif session != self._marked:  # it leads now, or no longer
            conn.execute(_LEADING, (session or None, self.replica_id))
            self._marked = session
        rows = list(conn.execute(_PICTURE, self._picture_args).fetchall())
        if not any(r[0] == self.replica_id and r[8] is not None for r in rows):
            self._locked = False  # forgotten (taken for gone): register again next pass
        return rows

    _picture_args = {"cls": REPLICA_CLASS, "leader_class": LOCK_CLASS, "leader_lock": LEADER_LOCK}

    def _fence(self, view: ReplicaView, backend: int, age: float) -> None:
        log.warning(
            "replica %s has not renewed its lease for %.1f s (leader_fence_s = %g): ending "
            "its database session %d; it counts as gone",
            view.describe(),
            age,
            self.fence_s,
            backend,
        )
        try:
            self._conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        except Exception as exc:  # another role's session: a superuser must end it
            log.error("cannot end replica %s's session %d: %s", view.replica_id, backend, exc)

    def _forget(self, gone: dict[str, str]) -> None:
        """Clear what the gone replicas left, then their rows (unless one came back)."""
        try:
            self.on_gone(gone)
            for rid in gone:
                self._conn.execute(_FORGET, (rid, REPLICA_CLASS))
                self._missing.pop(rid, None)
        except Exception:
            log.exception("clearing what gone replicas left failed")
