"""What a replica's log says while its PostgreSQL server is away (workspace/log.py
``Outage``): each of its own connections (the leader's, the replica registry's, the
listener's) says once, in one line, what fails and that it is tried again; reminds at
most every minute; and says when it works again. Each used to write psycopg's
multi-line error at every try, every second: some 180 lines a minute per replica."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc

from tests.unit.test_request_validation import build_site
from workspace.errors import Unavailable
from workspace.log import Outage
from workspace.ops import gauges
from workspace.service import registry as registry_mod
from workspace.service import replicas
from workspace.service.main import pass_failed
from workspace.service.metrics import ServiceMetrics
from workspace.service.registry import Registry
from workspace.service.replicas import Leader, Relay
from workspace.store import engines

REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection '
    "refused\n\tIs the server running on that host and accepting TCP/IP connections?"
)
TRIES = 40


class Answers:
    """A psycopg connection that answers what the loops ask."""

    closed = False

    def __init__(self, on_notifies: Any = None) -> None:
        self.info = type("Info", (), {"backend_pid": 4242})()
        self.on_notifies = on_notifies

    def execute(self, _sql: str, _args: object = None) -> Answers:
        return self

    def fetchone(self) -> tuple[object, ...]:
        return (True,)

    def fetchall(self) -> list[tuple[object, ...]]:
        return []

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def notifies(self, **_kw: object) -> list[object]:
        if self.on_notifies is not None:
            self.on_notifies()
        return []

    def close(self) -> None:
        self.closed = True


def away_then(conn: Answers, tries: int = TRIES) -> Any:
    """``connect`` that fails ``tries`` times as psycopg does with no server, then
    returns ``conn``."""
    calls = [0]

    def connect(_dsn: str, _name: str) -> Answers:
        calls[0] += 1
        if calls[0] <= tries:
            raise psycopg.OperationalError(REFUSED)
        return conn

    return connect


def said(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == logger]
    for r in caplog.records:
        assert r.exc_info is None, r.getMessage()  # no traceback
    for line in lines:
        assert "\n" not in line, line  # one line each
    return lines


def test_an_outage_is_said_once_reminded_every_minute_and_its_end_said() -> None:
    now = [1000.0]
    lines: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("test.outage")
    log.addHandler(Sink())
    log.propagate = False
    out = Outage(log, "the replica registry", 1.0, clock=lambda: now[0])
    out.answered()
    assert lines == []  # nothing failed: nothing to say
    for _ in range(60):  # a try a second for a minute
        out.failed("connection refused")
        now[0] += 1.0
    assert lines == ["the replica registry failed: connection refused; trying again every 1 s"]
    out.failed("connection refused")  # 60 s after the first
    assert lines[1] == (
        "the replica registry still fails after 60 s (61 tries): connection refused; "
        "trying again every 1 s"
    )
    now[0] += 5.0
    out.answered()
    assert lines[2] == "the replica registry works again after 65 s (61 failed tries)"
    out.answered()
    out.failed("server closed the connection")  # another outage: said at once
    assert len(lines) == 4 and lines[3].startswith("the replica registry failed: server closed")


def test_the_leader_connection(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicas, "CHECK_S", 0.0)
    monkeypatch.setattr(replicas, "connect", away_then(Answers()))
    leader = Leader(create_engine("postgresql+psycopg://ws@127.0.0.1:9/ws"))
    caplog.set_level(logging.INFO)
    leader.start()
    try:
        assert leader.wait_acting(30.0)
    finally:
        leader.close()
    lines = said(caplog, "workspace.service.replicas")
    refused = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    assert lines[0] == (
        f"the leader connection failed: connection failed: {refused}; trying again every 0 s"
    )
    assert lines[1].startswith("the leader connection works again after ")
    assert lines[1].endswith(f" s ({TRIES} failed tries)")
    assert lines[2] == "this replica is now the leader (runs the background loops)"


def test_a_leader_try_that_fails_after_connecting_does_not_flap(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate whose connection opens and takes no lock, then fails at each look for
    a stale leader (its query refused): the connection's "works again" was said at each
    try, then "failed" again, two lines a second. Only a whole try ends the outage."""
    looks = [0]
    enough = threading.Event()

    class NoFence(Answers):
        def execute(self, sql: str, _args: object = None) -> Answers:
            if "pg_try_advisory_lock" in sql:
                return Taken()
            looks[0] += 1
            if looks[0] >= TRIES:
                enough.set()
            raise psycopg.OperationalError("permission denied for view pg_stat_activity")

    class Taken(Answers):
        def fetchone(self) -> tuple[object, ...]:
            return (False,)  # another replica leads

    monkeypatch.setattr(replicas, "CHECK_S", 0.0)
    monkeypatch.setattr(replicas, "connect", lambda _dsn, _name: NoFence())
    leader = Leader(create_engine("postgresql+psycopg://ws@127.0.0.1:9/ws"))
    caplog.set_level(logging.INFO)
    leader.start()
    try:
        assert enough.wait(30.0)
    finally:
        leader.close()
    lines = said(caplog, "workspace.service.replicas")
    assert lines == [
        "the leader connection failed: permission denied for view pg_stat_activity; "
        "trying again every 0 s"
    ]


def test_notifying_the_other_replicas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender wrote psycopg's multi-line error at each change it could not send, for
    as long as the database was away, and nothing when it could send again."""
    env = build_site(tmp_path).core.env
    tried = threading.Event()
    notify = away_then(Answers())

    def connect(dsn: str, name: str) -> Answers:
        if name.endswith("listen"):
            return Answers(lambda: tried.wait(0.05))  # hears nothing, slowly
        tried.set()
        return notify(dsn, name)

    monkeypatch.setattr(replicas, "RETRY_S", 0.0)
    monkeypatch.setattr(replicas, "connect", connect)
    relay = Relay(env, create_engine("postgresql+psycopg://ws@127.0.0.1:9/ws"), "r1")
    caplog.set_level(logging.INFO)
    relay.start()
    try:
        for i in range(TRIES + 1):
            tried.clear()
            relay.send(replicas.TASKS_CHANNEL, f"task {i}")
            assert tried.wait(30.0)
        # The last send's connection answered; its line follows the send, on the
        # sender's thread.
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not any(
            line.startswith("notifying the other replicas works again")
            for line in said(caplog, "workspace.service.replicas")
        ):
            time.sleep(0.01)
    finally:
        relay.close()
    lines = [
        line
        for line in said(caplog, "workspace.service.replicas")
        if not line.startswith("listening")
    ]
    assert len(lines) == 2, lines
    assert lines[0].startswith("notifying the other replicas failed: connection failed: ")
    assert lines[0].endswith(
        "Connection refused; trying again at the next change (the others see what was "
        "not sent at their next re-check, within 5 s)"
    )
    assert lines[1].startswith("notifying the other replicas works again after ")
    assert lines[1].endswith(f" s ({TRIES} failed tries)")


def test_the_replica_registry(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_mod, "connect", away_then(Answers()))
    reg = Registry("postgresql://ws@127.0.0.1:9/ws", "r1", "", "", lambda: False, lambda _g: 0)
    caplog.set_level(logging.INFO)
    for _ in range(TRIES + 1):
        reg.check()
    lines = said(caplog, "workspace.service.registry")
    assert len(lines) == 2, lines
    assert lines[0].startswith("the replica registry failed: connection failed: connection to")
    assert lines[0].endswith("Connection refused; trying again every 1 s")
    assert lines[1].endswith(f" s ({TRIES} failed tries)")
    reg.close()


class Pictured(Answers):
    """Answers, and the registry's picture is one replica, r1, that leads."""

    def fetchall(self) -> list[tuple[object, ...]]:
        return [("r1", "svc1", 7, "svc1:7070", "svc1:7071", 0.0, "", True, 4242, 0.0)]


def test_the_replica_list_while_the_database_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ws-admin replica list` answered the registry's last picture while PostgreSQL was
    away, a replica LEADER "yes" in it, though none leads then (each stops within 3 s;
    `workspace_leader` 0 on every /metrics). It is UNAVAILABLE then, as `node list` is,
    and answers again with the database."""
    conn = Pictured()
    monkeypatch.setattr(registry_mod, "connect", lambda _dsn, _name: conn)
    reg = Registry("postgresql://ws@127.0.0.1:9/ws", "r1", "", "", lambda: True, lambda _g: 0)
    reg.check()
    assert [(v.replica_id, v.leader) for v in reg.live()] == [("r1", True)]
    monkeypatch.setattr(registry_mod, "connect", away_then(conn, tries=1))
    conn.closed = True  # the server went away
    reg.check()
    with pytest.raises(Unavailable, match="the service's database cannot be reached"):
        reg.live()
    conn.closed = False
    reg.check()
    assert [(v.replica_id, v.leader) for v in reg.live()] == [("r1", True)]
    reg.close()


def test_the_listener(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = build_site(tmp_path).core.env
    heard = threading.Event()
    relay: list[Relay] = []

    def listened() -> None:
        relay[0].close()
        heard.set()

    monkeypatch.setattr(replicas, "RETRY_S", 0.0)
    monkeypatch.setattr(replicas, "connect", away_then(Answers(listened)))
    relay.append(Relay(env, create_engine("postgresql+psycopg://ws@127.0.0.1:9/ws"), "r1"))
    caplog.set_level(logging.INFO)
    relay[0].start()
    assert heard.wait(30.0)
    lines = said(caplog, "workspace.service.replicas")
    assert len(lines) == 2, lines
    assert lines[0].startswith("listening to the other replicas failed: connection failed: ")
    assert lines[1].startswith("listening to the other replicas works again after ")


def test_the_store_says_it_once_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build_site(tmp_path).store

    def no_server(_session: object) -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(REFUSED))

    monkeypatch.setattr(engines, "serialize_writes", no_server)
    caplog.set_level(logging.INFO)
    caplog.clear()  # the store's making (its schema upgraded), if a test before set INFO
    for _ in range(3):
        with pytest.raises(Unavailable), store.write():
            pass
    lines = said(caplog, "workspace.store")
    assert lines == [
        "the store's database cannot be reached: connection failed: connection to server at "
        '"127.0.0.1", port 5432 failed: Connection refused'
    ]


def test_a_background_pass_the_database_failed_is_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader's passes (queue, leases, liveness, ...) under way as the database went
    away: one line each, not a traceback; any other failure keeps its traceback."""
    caplog.set_level(logging.INFO)
    try:
        raise engines.away(writes=False) from psycopg.OperationalError(REFUSED)
    except Exception:
        pass_failed("capacity queue pass failed")
    try:
        raise KeyError("a bug")
    except Exception:
        pass_failed("lease check failed")
    first, second = [r for r in caplog.records if r.name == "workspace.service"]
    assert first.getMessage() == (
        "capacity queue pass failed: the service's database cannot be reached right now; try again"
    )
    assert first.exc_info is None and first.levelno == logging.WARNING
    assert second.getMessage() == "lease check failed" and second.exc_info is not None


def test_metrics_scrapes_while_the_database_is_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus scrapes on through the outage: the site's gauges are left out, and the
    log says so once a minute, in one line (it wrote a traceback at every scrape)."""
    metrics = ServiceMetrics(build_site(tmp_path).core.env)

    def away(_env: object) -> None:
        raise engines.away(writes=False) from psycopg.OperationalError(REFUSED)

    monkeypatch.setattr(gauges, "read", away)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        page = generate_latest(metrics.registry).decode()
        assert "workspace_workspaces" not in page and "workspace_rpc" in page
    lines = said(caplog, "workspace.service.metrics")
    assert lines == [
        "cannot read the site's gauges for metrics: the service's database cannot be reached "
        "right now; try again (0 other scrape(s) failed since the last line)"
    ]
