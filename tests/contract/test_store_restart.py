"""Fault: the PostgreSQL server restarts under load.

Creates run in threads; the server is stopped by its pid in the middle (a fast shutdown,
or an immediate one, as a crash) and started again on the same data directory. The store
reconnects by itself (pool pre-ping); creates during the outage fail as ``Unavailable``
(UNAVAILABLE to a client: retry), never as an internal error; afterwards every create
that returned success is in the store, nothing is half-made, and a retry of a failed
create with its request id makes it at most once.

This module runs a server of its own (tests/pg.py): stopping the session's server would
disturb other modules' databases.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from tests.contract.store_world import World
from tests.functional.harness import Site
from tests.pg import PgServer, running_server
from workspace.errors import ResourceExhausted, Unavailable
from workspace.ops import liveness
from workspace.store import Node, Store


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    yield from running_server()


class Load:
    """Threads creating workspaces, each request with an id of its own, until stopped."""

    def __init__(self, world: World, threads: int = 6) -> None:
        self.world = world
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # request id -> workspace id
        self.unavailable: list[str] = []  # request ids
        self.other: list[BaseException] = []
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in range(threads)]

    def run(self, t: int) -> None:
        i = 0
        while not self.stop.is_set():
            rid = f"t{t}-{i}"
            i += 1
            try:
                got = self.world.create(rid, request_id=rid, networks=["default"], memory_mib=16)
            except Unavailable:
                with self.lock:
                    self.unavailable.append(rid)
                time.sleep(0.01)
                continue
            except BaseException as exc:
                with self.lock:
                    self.other.append(exc)
                return
            with self.lock:
                self.acked[rid] = got.id

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def wait_more(load: Load, n: int, timeout_s: float = 20.0) -> None:
    goal = load.count() + n
    deadline = time.monotonic() + timeout_s
    while load.count() < goal:
        assert not load.other, load.other
        assert time.monotonic() < deadline, f"creates stalled at {load.count()}"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["fast", "immediate"])
def test_a_restart_under_load_loses_no_acknowledged_create(
    own_pg: PgServer, tmp_path: Path, sig: int
) -> None:
    world = World(tmp_path / "w", own_pg.database(f"restart_{sig}"))
    try:
        world.network("192.168.0.0/16")
        world.image()
        world.node("n0", cpus=1024, memory_mib=1024 * 1024, networks=("default",))
        with Load(world) as load:
            wait_more(load, 5)
            own_pg.stop(sig)  # by its pid
            outage_from = len(load.unavailable)
            # Creates keep failing as Unavailable while it is down: within the store's
            # connect timeout (a loaded machine once took longer than 0.3 s here).
            deadline = time.monotonic() + 10
            while len(load.unavailable) <= outage_from:
                assert time.monotonic() < deadline, "no create saw the outage"
                assert not load.other, load.other
                time.sleep(0.05)
            own_pg.start()
            wait_more(load, 5)  # the store reconnected by itself
        assert not load.other, load.other
        snap = world.snapshot()
        for rid, wid in load.acked.items():
            assert wid in snap.workspaces, f"acknowledged create {rid} ({wid}) was lost"
        snap.check()  # nothing half-made: every stored create whole, claims add up
        # A failed create retried with its request id: made at most once.
        by_rid = {w.request_id: w.id for w in snap.workspaces.values()}
        for rid in load.unavailable[:20]:
            got = world.create(rid, request_id=rid, networks=["default"], memory_mib=16)
            assert by_rid.get(rid, got.id) == got.id
        after = world.snapshot()
        after.check()
        assert len({w.request_id for w in after.workspaces.values()}) == len(after.workspaces)
    finally:
        world.close()


def test_an_unreachable_database_is_unavailable_to_clients(
    own_pg: PgServer, tmp_path: Path
) -> None:
    """Through the service's gRPC API: UNAVAILABLE while the server is down, served again
    once it is back, with no restart of the service."""
    site = Site(tmp_path, database_url=own_pg.database("grpc_outage"))
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        site.stubs.create(name="before", request_id="before")
        own_pg.stop()
        try:
            with pytest.raises(grpc.RpcError) as err:
                site.stubs.create(name="during", request_id="during")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "try again" in (err.value.details() or "")
            assert "same request id is not done twice" in (err.value.details() or "")
            # A read is told to try again, without a word about retrying writes.
            with pytest.raises(grpc.RpcError) as err:
                site.stubs.get("before")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "try again" in (err.value.details() or "")
            assert "request id" not in (err.value.details() or "")
        finally:
            own_pg.start()
        made = site.stubs.create(name="during", request_id="during")
        assert site.stubs.get(made.id).name == "during"
        assert site.stubs.get("before").name == "before"
    finally:
        site.close()


def test_a_store_cannot_start_without_its_database(own_pg: PgServer) -> None:
    """A service starting while the database is away fails with what is wrong."""
    url = own_pg.url("no_such_database")
    with pytest.raises(Exception, match="no_such_database"):
        Store(url, migrate_in_child=True)


def test_refused_creates_during_load_are_not_unavailable(own_pg: PgServer, tmp_path: Path) -> None:
    """Capacity refusals stay RESOURCE_EXHAUSTED on PostgreSQL (not mistaken for outages)."""
    world = World(tmp_path / "w", own_pg.database("refusals"))
    try:
        world.network("172.16.0.0/30")  # one address
        world.image()
        world.node("n0", cpus=8, memory_mib=8192, networks=("default",))
        world.create("a", networks=["default"])
        with pytest.raises(ResourceExhausted):
            world.create("b", networks=["default"])
    finally:
        world.close()


def test_nodes_get_a_grace_period_after_the_database_was_away(
    own_pg: PgServer, tmp_path: Path
) -> None:
    """Agents' heartbeats could not be recorded while the database was away: liveness
    does not mark their nodes DOWN for it, until a grace period after it came back."""
    world = World(tmp_path / "w", own_pg.database("liveness"))
    try:
        world.node("n0", cpus=8, memory_mib=8192, networks=())
        with world.store.write() as s:
            node = s.get(Node, "n0")
            assert node is not None
            node.last_heartbeat = time.time() - 3600  # silent for an hour, as it seems
        later = replace(world.env, clock=lambda: time.time() + 10, started_at=0.0)
        own_pg.stop()
        try:
            with pytest.raises(Unavailable):
                liveness.check_liveness(later)
        finally:
            own_pg.start()
        assert liveness.check_liveness(later) == []  # back just now: grace
        much_later = replace(later, clock=lambda: time.time() + world.env.cfg.node_grace_s + 10)
        assert liveness.check_liveness(much_later) == ["n0"]
    finally:
        world.close()
