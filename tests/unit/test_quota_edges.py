"""Quotas and leases read as a user trying to get more than their share, on both engines
(a real SQLite store, or PostgreSQL through ``pg_server``; the operations, no gRPC):
many creates, cluster creates and grows at once, from two service processes' stores on
one PostgreSQL database too, never take a project over its quota; a quota its column
cannot hold is refused; a create that gave up waiting for capacity cannot be started or
stopped into a state no node ever leaves."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import db_name
from tests.unit.test_request_validation import Site, build_site
from workspace.config import ServiceConfig, load
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import Op, State
from workspace.domain.tenancy import ProjectSpec, Quota
from workspace.errors import FailedPrecondition, InvalidArgument, WorkspaceError
from workspace.identity import Identity, Kind
from workspace.ops import cluster_scale, clusters, create, leases, operate, projects, queue
from workspace.ops.events import Notifier
from workspace.ops.unit import Env
from workspace.store import Store, Workspace

HOUR = 3600


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "" (SQLite in the test's directory), or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield ""
        return
    server = request.getfixturevalue("pg_server")
    name = db_name(request.node.name)
    yield server.database(name, template=request.getfixturevalue("pg_head"))
    server.drop(name)


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    s = build_site(tmp_path, cpus=64, memory_mib=65536, database_url=database_url)
    yield s
    s.store.close()


def member(user: str) -> Identity:
    return Identity(Kind.USER, user, projects=("p",))


def in_p(name: str, cpus: int = 1, wait_s: int = 0, memory_mib: int = 256) -> CreateRequest:
    return CreateRequest(
        CreateSpec(image="img", name=name, cpus=cpus, memory_mib=memory_mib),
        project="p",
        wait_for_capacity_s=wait_s,
    )


def live_in_p(site: Site) -> list[Workspace]:
    with site.store.read() as s:
        q = select(Workspace).where(
            Workspace.project == "p", Workspace.state != State.TERMINATED.value
        )
        return list(s.execute(q).scalars())


# -- quotas under concurrency -----------------------------------------------------------


def test_creates_clusters_and_grows_at_once_never_exceed_the_quota(
    site: Site, tmp_path: Path, database_url: str
) -> None:
    """Three users of one project, each request in its own thread, half of them (on
    PostgreSQL) through a second replica's store on the same database: lone creates
    (some waiting for capacity, which counts too), cluster creates and a cluster's grow.
    The project never holds more than its quota, and every request refused was refused
    for the quota."""
    env = site.core.env
    projects.create_project(env, ProjectSpec("p", Quota(instances=7, vcpus=9)))
    # The cluster to grow, made before: 2 instances and 2 vCPUs of the quota.
    seed = ClusterRequest("seed", (MemberSpec(role="w", image="img", count=2, memory_mib=256),))
    clusters.create(env, member("carol"), in_project(seed))
    # PostgreSQL: a second replica's store. SQLite has one service process (sole.py).
    other_store = Store(database_url) if database_url else None
    other = env
    if other_store is not None:
        cfg = load(ServiceConfig, None, data_dir=str(tmp_path))
        other = Env.of(cfg, other_store, Notifier(), clock=site.clock)
    calls: list[Callable[[], object]] = []
    for i in range(12):
        e = env if i % 2 else other
        who = member(f"u{i % 3}")
        if i % 4 == 3:
            req = ClusterRequest(
                f"c{i}", (MemberSpec(role="w", image="img", count=2, memory_mib=256),)
            )
            calls.append(lambda e=e, who=who, req=req: clusters.create(e, who, in_project(req)))
        else:
            asked = in_p(f"w{i}", cpus=1 + i % 2, wait_s=60 * (i % 3 == 0))
            calls.append(lambda e=e, who=who, asked=asked: create.create(e, who, asked))
    calls.append(lambda: cluster_scale.scale(other, member("carol"), "seed", "w", 4))
    refused: list[str] = []
    others: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except WorkspaceError as exc:
            refused.append(exc.message)
        except BaseException as exc:  # (the assertion below shows it)
            others.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if other_store is not None:
        other_store.close()
    assert others == []
    assert refused, "the requests ask for more than the quota: some must be refused"
    assert all("quota of project p would be exceeded" in why for why in refused), refused
    held = live_in_p(site)
    assert len(held) <= 7
    assert sum(w.cpus for w in held) <= 9
    shown = projects.quotas(env, member("u0"))[0].used
    assert (shown.instances, shown.vcpus) == (len(held), sum(w.cpus for w in held))


def in_project(req: ClusterRequest) -> ClusterRequest:
    return replace(req, project="p")


# -- quota values -------------------------------------------------------------------------


def test_a_quota_its_column_cannot_hold_is_refused(site: Site) -> None:
    """`ws-admin project create p --quota vcpus=3000000000` (the CLI takes up to 2^63-1)
    was an internal error on PostgreSQL, whose INTEGER column holds 2^31-1: "integer out
    of range" after every check. It is refused as the admin's mistake, on both engines,
    and the 64-bit quotas take 64-bit values."""
    env = site.core.env
    for quota in (
        Quota(instances=2**31),
        Quota(vcpus=3_000_000_000),
        Quota(preemptible_instances=2**31),
        Quota(preemptible_vcpus=2**40),
    ):
        with pytest.raises(InvalidArgument, match="is too large: at most 2147483647"):
            projects.create_project(env, ProjectSpec("p", quota))
    assert projects.list_projects(env) == []
    big = Quota(instances=2**31 - 1, vcpus=2**31 - 1, memory_mib=2**62, image_bytes=2**63 - 1)
    made = projects.create_project(env, ProjectSpec("p", big))
    assert made.quota == big
    with pytest.raises(InvalidArgument, match="quota vcpus 2147483648 is too large"):
        projects.set_defaults(env, "p", None, quota=Quota(vcpus=2**31))
    with pytest.raises(InvalidArgument, match="preemptible-vcpus"):
        projects.set_defaults(env, "p", None, Quota(preemptible_vcpus=2**31))
    assert projects.list_projects(env)[0].quota == big


# -- a create that gave up waiting --------------------------------------------------------


def gave_up(site: Site) -> str:
    """A workspace of project p that waited for capacity in vain: FAILED, no node."""
    env = site.core.env
    alice = member("alice")
    create.create(env, alice, in_p("big", memory_mib=60000))  # most of the node's memory
    wid = create.create(env, alice, in_p("late", wait_s=60, memory_mib=8192)).id
    site.clock.now += 120
    queue.process(env)
    with site.store.read() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None and (ws.state, ws.node) == (State.FAILED.value, "")
    return wid


def test_a_create_that_gave_up_waiting_is_not_started_nor_stopped_into_nowhere(
    site: Site,
) -> None:
    """`ws start` of a workspace whose wait for capacity ran out was accepted: it showed
    STARTING for ever, on no node (the queue places only requests still waiting), and a
    `ws stop` left it STOPPING for ever, which a start then refused. Both are refused,
    saying what to do; a destroy ends it."""
    env = site.core.env
    projects.create_project(env, ProjectSpec("p"))
    wid = gave_up(site)
    for op in (Op.START, Op.STOP):
        with pytest.raises(FailedPrecondition, match="never placed on a node"):
            operate.operate(env, member("alice"), wid, op)
    row = next(w for w in live_in_p(site) if w.id == wid)
    assert (row.state, row.node) == (State.FAILED.value, "")
    operate.operate(env, member("alice"), wid, Op.DESTROY)
    assert wid not in {w.id for w in live_in_p(site)}


def test_a_cluster_that_gave_up_waiting_is_not_started(site: Site) -> None:
    env = site.core.env
    projects.create_project(env, ProjectSpec("p"))
    create.create(env, member("alice"), in_p("big", memory_mib=60000))
    req = ClusterRequest(
        "late",
        (MemberSpec(role="w", image="img", count=2, memory_mib=4096),),
        wait_for_capacity_s=60,
    )
    clusters.create(env, member("alice"), in_project(req))
    site.clock.now += 120
    queue.process(env)
    with pytest.raises(FailedPrecondition, match="never placed on a node"):
        clusters.operate(env, member("alice"), "late", Op.START)
    assert {w.state for w in live_in_p(site) if w.cluster} == {State.FAILED.value}


def test_the_lease_end_of_a_create_that_gave_up_waiting_destroys_it(site: Site) -> None:
    """A project whose expiry stops: the lease pass stopped a workspace that waited in
    vain into STOPPING for ever (no node to confirm it), still counted against the
    project's quota, and tried nothing more. It never ran: it is destroyed, as one still
    waiting is."""
    env = site.core.env
    projects.create_project(env, ProjectSpec("p", max_lease_s=2 * HOUR))
    wid = gave_up(site)
    site.clock.now += 3 * HOUR
    assert wid in leases.check(env).expired
    assert wid not in {w.id for w in live_in_p(site)}
    assert projects.quotas(env, member("alice"))[0].used.instances == 1  # "big" only
