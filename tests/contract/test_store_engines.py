"""The store contract, on SQLite and on a real PostgreSQL (tests/pg.py): every behaviour
of the service that rests on the database engine holds on both.

Each test gets a store of its own at head: a new SQLite file, or a PostgreSQL database
copied from a migrated template (``pg_head``). Migrations themselves start from empty.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, Table, create_engine, insert, inspect, select, text
from sqlalchemy import exc as sa_exc

from tests.conftest import db_name
from tests.contract.store_world import OWNER, Snapshot, World
from tests.contract.test_store_migrations import ROWS
from tests.pg import PgServer
from workspace import callctx
from workspace.domain.states import Op
from workspace.edge.workspaces import WorkspacesServicer
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from workspace.node.v1 import nodes_pb2
from workspace.ops import blob_access, group_commit, order_size, site_events
from workspace.ops.unit import UnitOfWork
from workspace.store import (
    Base,
    Blob,
    ConsoleLog,
    IpAllocation,
    Node,
    Store,
    Workspace,
    migrations,
)
from workspace.store.engines import normalize_url
from workspace.store.models import Audit
from workspace.store.site_events import EventRow
from workspace.v1 import clusters_pb2, workspaces_pb2

ENGINES = ["sqlite", "postgresql"]

# A store URL for a test: fresh (empty) or at head.
MakeUrl = Callable[..., str]


@pytest.fixture(params=ENGINES)
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeUrl]:
    made: list[str] = []
    if request.param == "sqlite":

        def sqlite(empty: bool = False) -> str:
            made.append(f"store{len(made)}.db")
            return f"sqlite:///{tmp_path / made[-1]}"

        yield sqlite
        return
    server: PgServer = request.getfixturevalue("pg_server")
    head: str = request.getfixturevalue("pg_head")

    def postgresql(empty: bool = False) -> str:
        name = db_name(request.node.name)
        made.append(name)
        return server.database(name, template="" if empty else head)

    yield postgresql
    for name in made:
        server.drop(name)


@pytest.fixture
def world(make_url: MakeUrl, tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "w", make_url())
    try:
        yield w
    finally:
        w.close()


def standard(w: World, subnet: str = "10.20.0.0/24", nodes: int = 1, memory: int = 65536) -> None:
    w.network(subnet)
    w.image()
    for i in range(nodes):
        w.node(f"n{i}", cpus=64, memory_mib=memory, networks=("default",))


# -- migrations ------------------------------------------------------------------------------


def test_migrations_from_empty_to_head_match_the_models(make_url: MakeUrl) -> None:
    store = Store(make_url(empty=True))
    try:
        with store.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        store.close()


def dump(store: Store) -> dict[str, Any]:
    """Every table's columns and rows."""
    out: dict[str, Any] = {}
    with store.engine.connect() as conn:
        insp = inspect(conn)
        for table in sorted(insp.get_table_names()):
            cols = [(c["name"], str(c["type"])) for c in insp.get_columns(table)]
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            out[table] = (cols, sorted(map(repr, rows)))
    return out


def test_a_migration_run_twice_is_a_no_op(world: World) -> None:
    standard(world)
    world.create("a", networks=["default"])
    before = dump(world.store)
    assert migrations.upgrade(world.store.engine) == []
    assert dump(world.store) == before
    world.store.close()
    world.store = Store(world.url)  # a service starting again on it
    assert dump(world.store) == before


def test_services_starting_together_migrate_once(make_url: MakeUrl) -> None:
    """Several services starting on one empty database at once: one migrates, the others
    wait for it and find the store at head."""
    url = make_url(empty=True)
    errors: list[BaseException] = []
    stores: list[Store] = []
    lock = threading.Lock()

    def start() -> None:
        try:
            s = Store(url)
            with lock:
                stores.append(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    # SQLite: BEGIN IMMEDIATE takes turns; PostgreSQL: the migration advisory lock
    assert not errors, errors
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
    finally:
        store.close()


# -- placement: capacity and addresses -------------------------------------------------------


@pytest.mark.parametrize("subnet", ["192.168.7.0/24", "172.16.0.0/12", "10.9.0.0/26"])
def test_creates_take_capacity_and_addresses_from_any_ipv4_pool(world: World, subnet: str) -> None:
    standard(world, subnet)
    made = [world.create(f"w{i}", networks=["default"], memory_mib=256) for i in range(5)]
    net = ipaddress.ip_network(subnet)
    ips = [w.nics[0].ip for w in made]
    assert len(set(ips)) == 5
    assert all(ipaddress.ip_address(ip) in net for ip in ips)
    snap = world.snapshot()
    snap.check()
    # ip_int is the address itself, above 2**31 for 192.168 and 172.16
    assert sorted(a.ip_int for a in snap.allocations) == sorted(
        int(ipaddress.ip_address(ip)) for ip in ips
    )
    assert snap.nodes["n0"].used_cpus == 5


def test_destroy_releases_address_and_capacity(world: World) -> None:
    standard(world, "192.168.50.0/29")  # .1 gateway, .2 - .6: 5 addresses
    made = [world.create(f"w{i}", networks=["default"], memory_mib=256) for i in range(5)]
    with pytest.raises(ResourceExhausted, match="no free address"):
        world.create("extra", networks=["default"], memory_mib=256)
    gone = made[2]
    world.core.operate(OWNER, gone.id, Op.DESTROY)
    world.absent("n0", gone.id)
    snap = world.snapshot()
    assert snap.workspaces[gone.id].state == "TERMINATED"
    snap.check()
    assert snap.nodes["n0"].used_cpus == 4
    again = world.create("again", networks=["default"], memory_mib=256)
    assert again.nics[0].ip == gone.nics[0].ip  # the lowest free address, reused
    world.snapshot().check()


def test_a_cluster_is_placed_whole_or_not_at_all(world: World) -> None:
    standard(world, "172.16.0.0/24", nodes=2, memory=2048)
    member = clusters_pb2.ClusterMember(
        role="worker", image="img", cpus=1, memory_mib=900, count=5, networks=["default"]
    )
    with pytest.raises(ResourceExhausted):
        world.clusters.create(
            OWNER, clusters_pb2.CreateClusterRequest(request_id="c1", name="big", members=[member])
        )
    snap = world.snapshot()
    assert snap.workspaces == {} and snap.allocations == []
    assert all(n.used_cpus == n.used_memory_mib == 0 for n in snap.nodes.values())
    member.count = 2
    c = world.clusters.create(
        OWNER, clusters_pb2.CreateClusterRequest(request_id="c2", name="small", members=[member])
    )
    snap = world.snapshot()
    assert len(snap.live()) == 2 and all(w.cluster == c.id for w in snap.live().values())
    snap.check()


def test_request_ids_are_idempotent(world: World) -> None:
    standard(world)
    first = world.create("a", request_id="r-1", networks=["default"])
    again = world.create("a", request_id="r-1", networks=["default"])
    assert again.id == first.id
    with pytest.raises(InvalidArgument, match="already used"):
        world.create("b", request_id="r-1", networks=["default"])
    assert len(world.snapshot().workspaces) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("request_id", "r" * 129, "request id is too long"),
        ("request_id", "r\x00x", "NUL"),
    ],
)
def test_values_that_do_not_fit_a_column_are_refused_alike(
    world: World, field: str, value: str, message: str
) -> None:
    """PostgreSQL enforces VARCHAR lengths and refuses NULs; SQLite does neither: the
    store refuses both the same way, as InvalidArgument, with nothing written."""
    standard(world)
    with pytest.raises(InvalidArgument, match=message):
        world.create("a", **{field: value})
    assert world.snapshot().workspaces == {}


def test_messages_are_cut_to_fit(world: World) -> None:
    standard(world)
    w = world.create("a")
    with world.store.write() as s:
        row = s.get(Workspace, w.id)
        assert row is not None
        row.reason = "x\x00" * 3000
    with world.store.read() as s:
        row = s.get(Workspace, w.id)
        assert row is not None
        assert len(row.reason) == 1024 and "\x00" not in row.reason and row.reason[-1] == "…"


# -- types -----------------------------------------------------------------------------------


def test_json_binary_float_and_64_bit_columns_round_trip(world: World) -> None:
    standard(world)
    labels = {"rack": "b7", "ünïcode": "✓", "quote": 'it\'s "x"', "nested-ish": "[1, 2]"}
    world.nodes.register(
        nodes_pb2.RegisterRequest(
            node="labelled",
            hypervisor="fake",
            cpus=2,
            memory_mib=4096,
            labels=labels,
            networks=["default"],
        )
    )
    user_data = bytes(range(256)) * 256  # 64 KiB, every byte value (NULs too)
    w = world.create("big", requirements={"rack": "b7"})
    now = time.time()
    with world.store.write() as s:
        # Stored as given (create checks its format; the column must keep every byte).
        placed = s.get(Workspace, w.id)
        assert placed is not None
        placed.user_data = user_data
        s.add(Blob(digest="sha256:" + "f" * 64, size_bytes=5 * 2**32 + 7, created_at=now))
        s.add(ConsoleLog(workspace_id=w.id, total_bytes=3 * 2**31, data=b"\x00\xff" * 1000))
    with world.store.read() as s:
        node = s.get(Node, "labelled")
        assert node is not None and node.labels == labels
        row = s.get(Workspace, w.id)
        assert row is not None
        assert row.user_data == user_data
        assert row.requirements == {"rack": "b7"}
        assert row.node == "labelled"
        assert isinstance(row.created_at, float) and abs(row.created_at - time.time()) < 60
        blob = s.get(Blob, "sha256:" + "f" * 64)
        assert blob is not None and (blob.size_bytes, blob.created_at) == (5 * 2**32 + 7, now)
        log = s.get(ConsoleLog, w.id)
        assert log is not None and (log.total_bytes, log.data) == (3 * 2**31, b"\x00\xff" * 1000)


# -- exactly-once under concurrency ----------------------------------------------------------


def hammer(worlds: list[World], plans: list[list[int]]) -> tuple[set[str], int]:
    """Each plan runs in a thread of its own (thread i on ``worlds[i % len]``): creates of
    the given memory sizes. Returns the ids acknowledged and the number refused."""
    acked: set[str] = set()
    refused = 0
    lock = threading.Lock()
    start = threading.Barrier(len(plans))

    def run(t: int, sizes: list[int]) -> None:
        nonlocal refused
        w = worlds[t % len(worlds)]
        start.wait()
        for i, mem in enumerate(sizes):
            try:
                got = w.create(f"t{t}-{i}", networks=["default"], memory_mib=mem)
            except ResourceExhausted:
                with lock:
                    refused += 1
                continue
            with lock:
                acked.add(got.id)

    with ThreadPoolExecutor(len(plans)) as ex:
        for f in [ex.submit(run, t, p) for t, p in enumerate(plans)]:
            f.result()
    return acked, refused


def check_outcome(snap: Snapshot, acked: set[str]) -> None:
    snap.check()
    # every acknowledged create is stored, and nothing else is
    assert set(snap.workspaces) == acked
    assert all(w.node for w in snap.workspaces.values())


# Per thread: the memory sizes of its creates (a mix that runs the nodes out of memory
# and the pool out of addresses in most examples).
plans_st = st.lists(
    st.lists(st.sampled_from((128, 256, 512, 700)), min_size=2, max_size=5),
    min_size=8,
    max_size=12,
)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=plans_st)
def test_concurrent_creates_place_exactly_once(
    make_url: MakeUrl, tmp_path_factory: pytest.TempPathFactory, plans: list[list[int]]
) -> None:
    """Many threads create at once on a small pool of nodes and addresses: no address or
    MAC twice, no node over capacity, every acknowledged create stored (and nothing
    else)."""
    world = World(tmp_path_factory.mktemp("w"), make_url())
    try:
        standard(world, "192.168.3.0/27", nodes=3, memory=3000)  # 29 addresses
        acked, _refused = hammer([world], plans)
        assert acked
        check_outcome(world.snapshot(), acked)
    finally:
        world.close()


def test_concurrent_creates_through_several_processes_place_exactly_once(
    make_url: MakeUrl, tmp_path: Path
) -> None:
    """Three stores (three services' engines and write locks) on one database: placement
    is still exactly-once, because the database serialises the writers (PostgreSQL's
    advisory lock). SQLite has one writer process by design: skipped there."""
    url = make_url()
    if url.startswith("sqlite"):
        pytest.skip("one service process per SQLite store")
    first = World(tmp_path / "r0", url)
    worlds = [first, first.replica("r1"), first.replica("r2")]
    try:
        standard(first, "172.16.8.0/26", nodes=3, memory=4000)  # 61 addresses
        rnd = random.Random(7)
        plans = [[rnd.choice((256, 512, 700)) for _ in range(4)] for _ in range(12)]
        acked, refused = hammer(worlds, plans)
        assert acked and refused
        check_outcome(first.snapshot(), acked)
    finally:
        for w in worlds:
            w.close()


def test_addresses_stored_before_0007_keep_their_values(make_url: MakeUrl) -> None:
    """A store at revision 0006 (ip_int INTEGER) with an allocation: after the upgrade its
    row is intact, and addresses above 128.0.0.0 fit."""
    from alembic import command

    url = make_url(empty=True)
    engine = create_engine(normalize_url(url))
    ws = dict(next(v for t, v in ROWS if t == "workspaces"))
    ws.update(image_spec={"partitions": []}, networks=["old"], requirements={})
    net = dict(next(v for t, v in ROWS if t == "networks"), name="old", dns=[])
    alloc = dict(next(v for t, v in ROWS if t == "ip_allocations"), network="old")
    del alloc["id"]  # from the table's sequence, as the service inserts
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.config(conn), "0006")
            # The tables as they were at 0006 (today's models have columns added since,
            # with defaults an INSERT through them would name).
            old = MetaData()
            for table, row in (("networks", net), ("workspaces", ws), ("ip_allocations", alloc)):
                conn.execute(Table(table, old, autoload_with=conn).insert(), row)
    finally:
        engine.dispose()
    store = Store(url)
    try:
        with store.read() as s:
            (a,) = s.execute(select(IpAllocation)).scalars()
            assert (a.ip, a.ip_int, a.workspace_id) == ("10.1.0.2", 167837698, "ws1")
        high = "192.168.255.254"
        with store.write() as s:
            s.add(
                IpAllocation(
                    network="old",
                    ip=high,
                    ip_int=int(ipaddress.ip_address(high)),
                    mac="52:54:00:00:00:09",
                    workspace_id="ws1",
                    nic_index=1,
                )
            )
        with store.read() as s:
            got = sorted(s.execute(select(IpAllocation.ip_int)).scalars())
        assert got == [167837698, 3232301054]
    finally:
        store.close()


def test_a_claim_sent_before_0034_is_kept_and_read_through_its_index(make_url: MakeUrl) -> None:
    """A store at 0033 holding a claim (a blob sent just before the upgrade): after the
    upgrade the claim is there as it was, the sender's claims have their index, and a
    second upgrade changes nothing."""
    from alembic import command

    url = make_url(empty=True)
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.config(conn), "0033")
            holders = Table("blob_holders", MetaData(), autoload_with=conn)
            conn.execute(
                insert(holders),
                {"digest": "sha256:" + "a" * 64, "holder": "user:alice", "created_at": 1.7e9},
            )
    finally:
        engine.dispose()
    store = Store(url)
    try:
        with store.read() as s:
            assert blob_access.held(s, "user:alice", since=1.7e9 - 60) == {"sha256:" + "a" * 64}
        with store.engine.connect() as conn:
            indexes = {
                i["name"]: i["column_names"] for i in inspect(conn).get_indexes("blob_holders")
            }
        assert indexes["ix_blob_holder_holder"] == ["holder", "created_at"]
        before = dump(store)
        assert migrations.upgrade(store.engine) == []
        assert dump(store) == before
    finally:
        store.close()


def test_the_postgresql_ddl_can_be_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """``upgrade --sql`` (offline: no server) prints what a PostgreSQL store would get."""
    from workspace.store.migrations.__main__ import main

    assert main(["upgrade", "--url", "postgresql://ws@/ws?host=/nonexistent", "--sql"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE ip_allocations" in out
    assert "ALTER TABLE ip_allocations ALTER COLUMN ip_int TYPE BIGINT" in out


def test_postgresql_connections_are_named_and_pinged(pg_server: PgServer, pg_head: str) -> None:
    name = db_name("named")
    store = Store(pg_server.database(name, template=pg_head))
    try:
        assert store.url.startswith("postgresql+psycopg://")
        assert store.engine.pool._pre_ping  # type: ignore[attr-defined]
        with store.read() as s:
            got = s.execute(text("SELECT current_setting('application_name')")).scalar()
        assert got == f"workspace-service {os.getpid()}"  # which process, for admins
    finally:
        store.close()
        pg_server.drop(name)


# -- group commit: creates arriving together share one transaction ------------------------------


def batched(world: World, creates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run ``creates`` (name → CreateWorkspaceRequest fields) as one batch: a first create
    leads and waits for the write lock the test holds, the others queue behind it and
    are committed together in the next transaction. Returns name → workspace or error."""
    group = group_commit.of(world.env)
    out: dict[str, Any] = {}

    def one(name: str, kw: dict[str, Any]) -> None:
        try:
            out[name] = world.create(kw.pop("name", name), **kw)
        except Exception as exc:  # the outcome under test
            out[name] = exc

    batches = group.batches
    with world.store.write_lock:
        lead = threading.Thread(target=one, args=("lead", {"memory_mib": 128}))
        lead.start()
        # The leader took itself off the queue and started its batch, which waits for
        # the lock. (Not `while group.waiting()`: that is 0 before the leader queued.)
        while group.batches == batches:
            time.sleep(0.01)
        threads = [threading.Thread(target=one, args=(n, kw)) for n, kw in creates.items()]
        for queued, t in enumerate(threads, 1):  # queued in this order
            t.start()
            while group.waiting() < queued:
                time.sleep(0.005)
    for t in [lead, *threads]:
        t.join(30)
    assert group.batches == batches + 2  # the leader's, then all the others in one
    return out


def test_a_refused_create_does_not_poison_its_batch(world: World) -> None:
    """One batch: valid creates, an invalid one, one that does not fit, one whose name
    an earlier create of the same batch took, and a retry of one of them. Each refused
    create is answered with its own error and leaves nothing behind (no row, claim,
    address or created event); the others are placed, exactly once; the capacity refusal
    is a site event; the retry gets what the first made."""
    standard(world, "192.168.7.0/28", nodes=2, memory=4000)
    got = batched(
        world,
        {
            "a": {"memory_mib": 256},
            "bad": {"memory_mib": 256, "cpus": 10_000},
            "b": {"memory_mib": 256},
            "huge": {"memory_mib": 8000},
            "c": {"memory_mib": 256},
            "a-again": {"name": "a", "memory_mib": 256, "request_id": "r-again"},
            "a-retry": {"name": "a", "memory_mib": 256},
        },
    )
    assert isinstance(got["bad"], InvalidArgument)
    assert isinstance(got["huge"], ResourceExhausted)
    assert isinstance(got["a-again"], AlreadyExists)
    assert got["a-retry"] == got["a"]  # the same request id: what the first one made
    del got["a-retry"]
    placed = {n: w for n, w in got.items() if not isinstance(w, Exception)}
    assert set(placed) == {"lead", "a", "b", "c"}
    snap = world.snapshot()
    check_outcome(snap, {w.id for w in placed.values()})
    assert len({w.nics[0].ip for w in placed.values()}) == 4
    with world.store.read() as s:
        rows = s.execute(select(EventRow.kind, EventRow.workspace_name)).all()
    created = sorted(n for k, n in rows if k == "workspace.created")
    assert created == ["a", "b", "c", "lead"]
    assert [n for k, n in rows if k == "workspace.refused"] == ["huge"]


def test_a_refused_create_keeps_its_trust_decision_and_the_batch_goes_on(world: World) -> None:
    """With the trust policy on, every create records its decision (an audit row). A create
    of a batch refused after its decision (it does not fit) rolls back to its SAVEPOINT:
    its decision is put back into the batch's transaction (recorded once, not in a
    transaction of its own, which would wait for the lock the batch holds), and the batch
    commits. The refused create's decision names the workspace it asked for, not the id
    no workspace has."""
    world.env = dataclasses.replace(world.env, check_trust=True)
    world.core = WorkspacesServicer(world.env)
    standard(world, "192.168.8.0/28", nodes=1, memory=4000)
    got = batched(world, {"a": {"memory_mib": 256}, "huge": {"memory_mib": 8000}})
    assert isinstance(got["huge"], ResourceExhausted)
    assert not isinstance(got["a"], Exception)
    with world.store.read() as s:
        audited = s.execute(select(Audit.action, Audit.workspace_name, Audit.workspace_id)).all()
    assert [a for a, _, _ in audited].count("create") == 3  # lead, a, huge: once each
    assert sorted((n, w) for a, n, w in audited if a == "create") == [
        ("a", got["a"].id),
        ("huge", ""),
        ("lead", got["lead"].id),
    ]
    # ... and each decision is one site event (the refused create's too: by the name it
    # asked for, with no id, since no workspace has the one it had).
    with world.store.read() as s:
        rows = s.execute(
            select(EventRow.kind, EventRow.workspace_name, EventRow.workspace_id)
        ).all()
    decided = sorted((n, w) for k, n, w in rows if k == "trust.decision")
    assert decided == [("a", got["a"].id), ("huge", ""), ("lead", got["lead"].id)]


def test_a_batch_that_fails_to_commit_acknowledges_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's transaction fails after its creates ran (here: sealing it raises, as
    a commit that fails would): every create of the batch gets the error, nothing of
    them is stored, no capacity is claimed; the next batch works."""
    standard(world, "10.30.0.0/24", nodes=1)
    world.create("before", memory_mib=128)
    real = UnitOfWork.seal
    failing = {"on": True}

    def seal(u: UnitOfWork) -> None:
        if failing["on"] and len(u.rows()) > 1:
            raise RuntimeError("the disk went away")
        real(u)

    monkeypatch.setattr(UnitOfWork, "seal", seal)
    got = batched(world, {f"x{i}": {"memory_mib": 128} for i in range(4)})
    assert not isinstance(got["lead"], Exception)  # its own batch, before
    for i in range(4):
        assert isinstance(got[f"x{i}"], RuntimeError)
    snap = world.snapshot()
    check_outcome(snap, {w.id for w in snap.workspaces.values() if w.name in ("before", "lead")})
    assert {w.name for w in snap.workspaces.values()} == {"before", "lead"}
    failing["on"] = False
    assert world.create("after", memory_mib=128).nics


def test_a_batch_the_database_fails_tells_each_create_what_a_retry_does(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away under a batch: every create of it gets UNAVAILABLE, and
    only those sent with a request id are told that a retry with it is not done twice (a
    create without one gets a fresh id each time: a retry may make a second workspace),
    whichever create led the batch."""
    standard(world, "10.31.0.0/24", nodes=1)
    real = UnitOfWork.seal

    def seal(u: UnitOfWork) -> None:
        if len(u.rows()) > 1:
            raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
        real(u)

    monkeypatch.setattr(UnitOfWork, "seal", seal)
    create = world.create

    def as_called(name: str, request_id: str = "", **kw: Any) -> Any:
        # What the RPC wrapper does: the call's context carries the request's id.
        rid = "" if name.startswith("no-id") else request_id or name
        with callctx.bound(method="CreateWorkspace", request_id=rid):
            if rid:
                return create(name, request_id=rid, **kw)
            req = workspaces_pb2.CreateWorkspaceRequest(name=name, image="img", **kw)
            return world.core.create(OWNER, req)

    monkeypatch.setattr(world, "create", as_called)
    got = batched(world, {"with-id": {"memory_mib": 128}, "no-id": {"memory_mib": 128}})
    assert not isinstance(got["lead"], Exception)  # its own batch, before
    for name in ("with-id", "no-id"):
        assert isinstance(got[name], Unavailable), got[name]
        assert "try again" in got[name].message
    assert "same request id is not done twice" in got["with-id"].message
    assert "request id" not in got["no-id"].message


def test_a_batch_keeps_each_node_s_orders_within_their_bound(world: World) -> None:
    """Within a batch a node's orders' size is a running total (read once, then each
    create placed there adds its own): the creates that would take the node past
    limits.max_node_orders_bytes are refused, exactly as one by one."""
    standard(world, "10.40.0.0/24", nodes=1)
    world.create("first", memory_mib=128)
    with world.store.read() as s:
        one = order_size.node_orders_bytes(s, "n0")
    cfg = world.env.cfg
    limits = dataclasses.replace(cfg.limits, max_node_orders_bytes=one * 3 + one // 2)
    world.core.env = dataclasses.replace(world.env, cfg=dataclasses.replace(cfg, limits=limits))
    got = batched(world, {f"y{i}": {"memory_mib": 128} for i in range(4)})
    # "first" and the batch's leader are there: room for one more of the four
    placed = [n for n, w in got.items() if not isinstance(w, Exception)]
    assert sorted(placed) == ["lead", "y0"]
    assert all(isinstance(got[f"y{i}"], ResourceExhausted) for i in range(1, 4))
    with world.store.read() as s:
        assert order_size.node_orders_bytes(s, "n0") <= limits.max_node_orders_bytes


# -- site events: ids with gaps ---------------------------------------------------------------


class _RolledBack(Exception):
    pass


def events_of_networks(w: World, *names: str) -> list[int]:
    """The ids of the events of networks ``names`` (one letter each), made one by one."""
    for name in names:
        w.network(f"10.{ord(name)}.0.0/24", name=name)
    with w.store.read() as s:
        rows = s.execute(select(EventRow.id, EventRow.subject).order_by(EventRow.id)).all()
    return [i for i, subject in rows if subject in names]


def ids_left_unused(w: World, n: int) -> None:
    """A transaction that writes ``n`` events in a SAVEPOINT rolled back (a refused create
    of a group commit) and commits: PostgreSQL's sequence does not give their ids back
    (on SQLite a new row takes the highest id plus one, and there is no gap)."""
    with w.store.write() as s:
        try:
            with s.begin_nested():
                s.execute(insert(EventRow), [{"at": time.time(), "kind": "x"}] * n)
                raise _RolledBack
        except _RolledBack:
            pass


def test_a_resume_across_unused_ids_is_taken_one_across_deleted_events_refused(
    world: World,
) -> None:
    """`ws-admin events --after ID` after the last event before ids a rolled-back
    transaction left unused, once the retention deleted the events before that gap, was
    refused as if events after ID had been deleted (the refusal took the oldest kept id
    less one for the highest deleted); it goes on with the events kept. A resume before
    an event the retention deleted is still refused, saying to go on after the highest
    id deleted. A count retention keeps that many events across a gap."""
    before = events_of_networks(world, "a", "b", "c")
    ids_left_unused(world, 3)
    kept = events_of_networks(world, "d", "e")
    if world.store.engine.dialect.name == "postgresql":
        assert kept[0] > before[-1] + 1  # the gap this is about
    env = world.env
    by_count = dataclasses.replace(env, cfg=dataclasses.replace(env.cfg, event_retention="2"))
    assert site_events.prune(by_count) == 3

    def resumed(after_id: int) -> list[int]:
        return [e.id for e in site_events.watch(env, 0.0, False, after_id=after_id)]

    assert resumed(before[-1]) == kept
    with pytest.raises(FailedPrecondition) as refused:
        resumed(before[-2])
    assert (
        f"the events after id {before[-2]} are no longer kept up to id {before[-1]} "
        f"(event_retention deletes the oldest): the oldest kept is {kept[0]}; "
        f"--after {before[-1]} goes on from it"
    ) in refused.value.message
    ids_left_unused(world, 3)
    last = events_of_networks(world, "f")
    assert site_events.prune(by_count) == 1
    with world.store.read() as s:
        assert list(s.execute(select(EventRow.id).order_by(EventRow.id)).scalars()) == [
            kept[-1],
            *last,
        ]
    assert resumed(kept[-1]) == last
    with pytest.raises(FailedPrecondition):
        resumed(before[-1])
