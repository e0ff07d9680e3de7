"""Group commit: creates that arrive while another create's transaction runs are committed
together, in one transaction and one durable commit (one fsync).

The first create to arrive while none runs leads: it takes every create waiting (at most
``MAX_BATCH``) into one write transaction (ops/unit.py), runs each in a SAVEPOINT of its
own, in its caller's context (who asked, the request id: what the site events and the
logs carry), commits once and publishes the events; then it hands the lead to the oldest
create still waiting, if any. Each caller is answered only after the commit that holds
its create: an acknowledgement stays durable.

A create refused (a validation, a quota, no capacity) or failing otherwise rolls back to
its SAVEPOINT: its rows, claims, addresses and site events are gone and the others of
the batch go on; its refusal is recorded as a site event after the batch (ops/refusals.py),
as a lone create's is. If the transaction itself fails (the commit, or the database going
away, even in the middle of one create), every create of the batch gets that error
(UNAVAILABLE for the database): nothing of it is acknowledged.

Placement stays exactly-once: the batch is one serialised write transaction like any
other (the store's write lock, and PostgreSQL's advisory lock), and each create in it
sees what the ones before it placed.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import text

from workspace.domain.events import SiteEvent
from workspace.errors import Unavailable, WorkspaceError
from workspace.ops import admission, order_size, placement, refusals, trust
from workspace.ops.unit import Env, UnitOfWork
from workspace.store import Store, engines, journal
from workspace.store.prepared import Prepared

R = TypeVar("R")

# Creates per transaction at most: bounds how long the first of them waits for the rest.
MAX_BATCH = 64


class _Item(Generic[R]):
    """One create waiting for (or in) a batch."""

    def __init__(self, fn: Callable[[UnitOfWork], Callable[[], R]]) -> None:
        self.fn = fn
        self.ctx = contextvars.copy_context()  # the caller's: who, request id, ...
        self.wake = threading.Event()
        self.lead = False
        self.done = False
        self.finish: Callable[[], R] | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """The creates of one service process (one per ``Env``)."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Item[object]] = []
        self._busy = False
        # Batches run (their transactions tried) and creates committed (for tests).
        self.batches = 0
        self.committed = 0

    def waiting(self) -> int:
        """Creates waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def run(self, env: Env, fn: Callable[[UnitOfWork], Callable[[], R]]) -> R:
        """Run ``fn(u)`` in a SAVEPOINT of the next batch's unit of work; after that batch
        committed, return what the callable ``fn`` returned returns (it runs in the
        caller's thread: reading views of the unit of work, logging)."""
        item: _Item[R] = _Item(fn)
        with self._lock:
            self._queue.append(item)  # type: ignore[arg-type]
            if not self._busy:
                self._busy = True
                item.lead = True
        while not item.done:
            if not item.lead:
                item.wake.wait()
            if item.lead and not item.done:
                self._lead(env, item)
        # What the create noted in its context while the leader ran it (its workspace id).
        for var, value in item.ctx.items():
            var.set(value)
        if item.error is not None:
            raise item.error
        assert item.finish is not None
        return item.finish()

    def _lead(self, env: Env, me: _Item[R]) -> None:
        try:
            while not me.done:
                with self._lock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                self._batch(env, batch)
        finally:
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._busy = False

    def _batch(self, env: Env, batch: list[_Item[object]]) -> None:
        refused: list[SiteEvent] = []
        self.batches += 1
        with env.store.write_lock:  # published in commit order, as ops/unit.py ``write``
            self._run(env, batch, refused)

    def _run(self, env: Env, batch: list[_Item[object]], refused: list[SiteEvent]) -> None:
        try:
            with env.store.write() as s:
                engines.open_transaction(s)  # the SAVEPOINTs below must not commit
                placement.keep_node_views(s)  # read the nodes once per batch
                admission.keep_waiting(s)  # and the requests waiting
                order_size.keep_totals(s)  # and each node's orders' size
                u = UnitOfWork(s, env.clock)
                for item in batch:
                    item.ctx.run(_one, env, u, item, refused)
                u.seal()
            order_size.remember(s)  # the nodes' bounds at the generation just committed
            placement.remember_node_views(s)  # and the nodes as the scheduler sees them
            placement.remember_addresses(s)  # and the networks' address counts
            self.committed += sum(1 for i in batch if i.error is None)
        except BaseException as exc:
            # The database away: each create is told so in its own words (whether a
            # retry with its request id is safe depends on its having one).
            cause = exc.__cause__ if isinstance(exc, Unavailable) else exc
            away = cause is not None and engines.unavailable(cause)
            for item in batch:  # nothing of the batch was committed
                item.error = item.error or (item.ctx.run(engines.away) if away else exc)
        else:
            u.publish(env.notifier)
        finally:
            if refused:
                refusals.record(env.store, env.notifier, refused)
            for item in batch:
                item.done = True
                item.wake.set()


_SAVEPOINT = Prepared(text("SAVEPOINT ws_create"))
_RELEASE = Prepared(text("RELEASE SAVEPOINT ws_create"))
_ROLLBACK_TO = Prepared(text("ROLLBACK TO SAVEPOINT ws_create"))


def _one(env: Env, u: UnitOfWork, item: _Item[object], refused: list[SiteEvent]) -> None:
    """One create of a batch in its SAVEPOINT (run in its caller's context)."""
    at = u.mark()
    audited = trust.audit_mark(u.s)
    before = {w.id for w in journal.created(u.s)}
    # The SAVEPOINT is plain SQL on the batch's connection, not the ORM's begin_nested
    # (whose bookkeeping cost a create about 6 % of its CPU): a create writes its rows
    # through Core (store/mapping.py) and leaves nothing for the ORM to undo but what
    # the refusal below expunges and expires.
    u.s.flush()  # what came before belongs to the batch, not to this create
    conn = u.s.connection()
    _SAVEPOINT.write(conn, {})
    try:
        with env.store.translated():
            item.finish = item.fn(u)
            u.s.flush()
            _RELEASE.write(conn, {})
    except Unavailable:
        # The database went away: the batch's transaction is gone with it, so the batch
        # ends here and every create of it gets this error (``_batch``).
        raise
    except Exception as exc:
        if not u.s.is_active:  # a failed ORM flush rolled the whole transaction back
            raise
        made = [w for w in journal.created(u.s) if w.id not in before]
        made += [w for w in u.rows() if w.id not in at[0] and w not in made]
        if isinstance(exc, WorkspaceError):
            # Read before the rollback expires the rows (as ops/unit.py ``write`` does).
            refused.extend(refusals.refused(exc, made, env.clock()))
        _ROLLBACK_TO.write(conn, {})
        _RELEASE.write(conn, {})
        for obj in list(u.s.new):  # added by this create, never written
            u.s.expunge(obj)
        u.s.expire_all()  # what it changed in loaded rows reads again from the database
        for w in made:  # rows inserted without the ORM (store/mapping.py) leave too
            if w in u.s:
                u.s.expunge(w)
        trust.restore_audit(u.s, audited)  # its trust decisions stay recorded
        u.rewind(at)
        placement.forget_node_views(u.s)  # its claims were rolled back
        admission.forget_waiting(u.s)
        order_size.keep_totals(u.s)
        item.error = exc


_groups: weakref.WeakKeyDictionary[Store, GroupCommit] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def of(env: Env) -> GroupCommit:
    """The group commit of ``env``'s store (one per store: one per service process)."""
    with _groups_lock:
        group = _groups.get(env.store)
        if group is None:
            group = _groups[env.store] = GroupCommit()
        return group
