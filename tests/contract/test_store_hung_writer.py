"""A replica that hangs in the middle of a writing transaction (docs/design/store.md,
PostgreSQL): every write of every replica takes the store's advisory lock first, so a
process stopped (SIGSTOP, a frozen VM) while it holds that lock would stop every write of
the site -- creates, heartbeats, the leader's passes -- for as long as it hangs. The server
ends a session that sits idle inside a transaction for ``IDLE_IN_TRANSACTION_S``: the
lock is free again, and the stopped writer, resumed, finds its transaction gone
(Unavailable: a retry with its request id is safe), nothing of it committed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import select

from tests.contract.store_world import World
from tests.pg import PgServer
from workspace.domain.states import NodeState
from workspace.errors import Unavailable
from workspace.ops import liveness
from workspace.service.replicas import conninfo
from workspace.store import Network, Node, Store, engines

T = TypeVar("T")
engines_default = engines.IDLE_IN_TRANSACTION_S


def net(name: str, third: int) -> Network:
    return Network(
        name=name,
        subnet=f"10.{third}.0.0/24",
        gateway=f"10.{third}.0.1",
        range_start=f"10.{third}.0.10",
        range_end=f"10.{third}.0.200",
        bridge=f"wsbr{third}",
        mac_prefix="52:54:00",
    )


def short_limited(monkeypatch: pytest.MonkeyPatch, limit_s: float, make: Callable[[], T]) -> T:
    """What ``make`` returns, its store's pooled connection opened with an idle-in-transaction
    limit of ``limit_s``; the others keep the default. Only the writer that hangs needs the
    short limit: a healthy writer given it too could be ended itself when a busy machine
    keeps it from its next statement that long (CI saw it once)."""
    monkeypatch.setattr(engines, "IDLE_IN_TRANSACTION_S", limit_s)
    made = make()
    store = made.store if isinstance(made, World) else made
    assert isinstance(store, Store)
    with store.read() as s:
        s.execute(select(1))  # the pool's connection, made now with the short limit
    monkeypatch.setattr(engines, "IDLE_IN_TRANSACTION_S", engines_default)
    return made


def end_the_holder_once_waited_for(store: Store, waited_s: float) -> None:
    """Once another session has been waiting for the store's write lock for ``waited_s``
    (at least: the clock starts when the wait is seen), end the session holding it, as the
    server ends one idle in its transaction."""
    waiting = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
        " AND objid = %s AND NOT granted AND database ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with psycopg.connect(conninfo(store.engine), autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while not conn.execute(waiting, (engines.LOCK_CLASS, engines.WRITE_LOCK)).fetchone()[0]:
            assert time.monotonic() < deadline, "no one waited for the write lock"
            time.sleep(0.05)
        time.sleep(waited_s)  # the waiter has waited at least this long
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = %s AND objid = %s AND granted AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())",
            (engines.LOCK_CLASS, engines.WRITE_LOCK),
        )


def test_a_writer_hung_inside_its_transaction_does_not_stop_the_others(
    pg_server: PgServer, pg_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.database("hung_writer", template=pg_head)
    hung = short_limited(monkeypatch, 1.0, lambda: Store(url))
    other = Store(url)
    resume = threading.Event()
    outcome: list[BaseException | None] = []

    held = threading.Event()

    def stopped_writer() -> None:
        try:
            with hung.write() as s:
                s.add(net("half-made", 1))
                s.flush()
                held.set()
                resume.wait(60)  # stopped here, holding the site's write lock
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=stopped_writer)
    try:
        t.start()
        # It holds the lock now. (A fixed nap before was not always enough on a busy
        # machine: the other write went first, and the hung one was then let go before
        # its limit and committed.)
        assert held.wait(30)
        done = threading.Event()

        def write() -> None:
            with other.write() as s:
                s.add(net("after", 2))
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert done.wait(30), "every other write waits for the hung one"
    finally:
        resume.set()
        t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome
    with other.read() as s:
        assert sorted(s.execute(select(Network.name)).scalars()) == ["after"]
    with hung.write() as s:  # its next write works: the pool replaced the connection
        s.add(net("again", 3))
    with other.read() as s:
        assert sorted(s.execute(select(Network.name)).scalars()) == ["after", "again"]
    hung.close()
    other.close()


def test_nodes_silent_while_a_hung_writer_held_the_lock_are_not_marked_down(
    pg_server: PgServer, pg_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another replica sat in its transaction, no heartbeat could be recorded: the
    leader's liveness pass, which waited for that lock itself, judges no node on it, and
    its store counts the stall as an outage (the nodes get their grace from its end).

    The hung session is ended as the server ends it (pg_terminate_backend, what
    ``IDLE_IN_TRANSACTION_S`` does), but only once the leader has waited for the lock
    longer than ``WRITE_STALL_S``: with the server's own short limit, a leader kept from
    asking for a while on a busy machine waited less than that, and the stall was not
    counted. The short stall limit is set only after the leader's own set-up writes, which
    a busy machine could otherwise have made look stalled."""
    leader = World(tmp_path / "leader", pg_server.database("hung_liveness", template=pg_head))
    hung = leader.replica("hung")
    try:
        leader.node("n0", cpus=8, memory_mib=8192, networks=())
        with leader.store.write() as s:
            node = s.get(Node, "n0")
            assert node is not None
            node.last_heartbeat = time.time() - leader.env.cfg.node_grace_s - 1  # silent
        assert leader.store.reachable_since() == 0.0  # never away, never stalled
        monkeypatch.setattr(engines, "WRITE_STALL_S", 1.0)
        held = threading.Event()
        resume = threading.Event()

        def stopped_writer() -> None:
            with contextlib.suppress(Unavailable), hung.store.write() as s:
                s.add(net("half-made", 1))
                s.flush()
                held.set()
                resume.wait(60)

        t = threading.Thread(target=stopped_writer)
        t.start()
        ender = threading.Thread(target=end_the_holder_once_waited_for, args=(leader.store, 1.5))
        try:
            assert held.wait(30)
            before = time.time()
            ender.start()
            judged = replace(leader.env, started_at=0.0)
            assert liveness.check_liveness(judged) == []  # it waited for the lock
        finally:
            ender.join(60)
            resume.set()
            t.join(30)
        assert leader.store.reachable_since() >= before
        with leader.store.read() as s:
            assert s.get(Node, "n0").state != NodeState.DOWN.value  # type: ignore[union-attr]
        later = replace(judged, clock=lambda: time.time() + leader.env.cfg.node_grace_s + 5)
        assert liveness.check_liveness(later) == ["n0"]  # still silent after the grace
    finally:
        hung.close()
        leader.close()
