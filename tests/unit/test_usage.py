"""Usage figures from state transitions, with an injected clock (a real SQLite store,
the servicers' plain methods; no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import CreateRequest, CreateSpec
from workspace.domain.states import Op
from workspace.domain.usage import BYTES_PER_GIB, Grouping, UsageRow
from workspace.errors import InvalidArgument
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import create, usage
from workspace.store import Project, UsageInterval

HOUR = 3600.0
ROOT_BYTES = 4096  # the test image's one raw partition
RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING
STOPPED = nodes_pb2.OBSERVED_STATE_STOPPED


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path, cpus=8, memory_mib=16384)
    with s.store.write() as tx:  # the projects the certificates below name
        tx.add_all([Project(name="physics"), Project(name="chem")])
    return s


def run(site: Site, name: str, owner: str = "alice", project: str = "", cpus: int = 2) -> str:
    """A workspace of ``cpus`` vCPUs and 1 GiB, placed and RUNNING now."""
    spec = CreateSpec(image="img", name=name, cpus=cpus, memory_mib=1024)
    who = Identity(Kind.USER, owner, projects=(project,) if project else ())
    wid = create.create(site.core.env, who, CreateRequest(spec, project=project)).id
    site.report(wid, RUNNING)
    return wid


def rows(site: Site, owner: str | None = "alice", **kw: object) -> dict[str, UsageRow]:
    return {r.key: r for r in usage.report(site.core.env, owner, **kw).rows}  # type: ignore[arg-type]


def test_two_hours_of_two_vcpus_and_one_gib(site: Site) -> None:
    wid = run(site, "a")
    site.clock.now += 2 * HOUR
    site.destroy(wid)
    site.clock.now += 5 * HOUR  # nothing counts after the destroy
    r = rows(site)[wid]
    assert r.core_hours == pytest.approx(4.0)
    assert r.memory_gib_hours == pytest.approx(2.0)
    assert r.disk_gib_hours == pytest.approx(2 * ROOT_BYTES / BYTES_PER_GIB)
    assert (r.name, r.owner) == ("a", "alice")


def test_cpus_count_only_while_running_memory_while_claimed(site: Site) -> None:
    wid = run(site, "a")
    site.clock.now += HOUR
    site.core.operate("alice", wid, Op.STOP)
    site.report(wid, STOPPED)
    site.clock.now += 3 * HOUR  # stopped: the claim stays, so memory and disk count
    site.core.operate("alice", wid, Op.START)
    site.report(wid, RUNNING)
    site.clock.now += HOUR
    r = rows(site)[wid]  # still running: the open interval counts until now
    assert r.core_hours == pytest.approx(2 * 2.0)
    assert r.memory_gib_hours == pytest.approx(5.0)


def test_a_destroy_closes_every_interval(site: Site) -> None:
    wid = run(site, "a")
    site.clock.now += HOUR
    site.destroy(wid)
    with site.store.read() as s:
        open_ = s.execute(select(UsageInterval).where(UsageInterval.ended_at == 0)).all()
    assert open_ == []
    assert rows(site)[wid].memory_gib_hours == pytest.approx(1.0)


def test_clipped_to_since_and_until(site: Site) -> None:
    t0 = site.clock.now
    wid = run(site, "a")
    site.clock.now += 10 * HOUR
    r = rows(site, since=t0 + HOUR, until=t0 + 4 * HOUR)[wid]
    assert r.core_hours == pytest.approx(3 * 2.0)
    assert r.memory_gib_hours == pytest.approx(3.0)
    assert rows(site, since=t0 + 9 * HOUR)[wid].core_hours == pytest.approx(2.0)
    assert rows(site, until=t0 - 1) == {}


def test_grouped_by_user_and_project(site: Site) -> None:
    run(site, "a", "alice", "physics")
    run(site, "b", "alice", "chem", cpus=1)
    run(site, "c", "bob", "physics", cpus=1)
    site.clock.now += HOUR
    by_user = rows(site, None, by=Grouping.USER)
    assert {k: r.core_hours for k, r in by_user.items()} == pytest.approx(
        {"alice": 3.0, "bob": 1.0}
    )
    by_project = rows(site, None, by=Grouping.PROJECT)
    assert {k: r.core_hours for k, r in by_project.items()} == pytest.approx(
        {"physics": 3.0, "chem": 1.0}
    )
    assert by_project["physics"].memory_gib_hours == pytest.approx(2.0)


def test_a_user_sees_their_own_and_their_projects(site: Site) -> None:
    run(site, "a", "alice", "physics")
    run(site, "c", "bob", "physics")
    run(site, "d", "carol", "chem")
    site.clock.now += HOUR
    assert set(rows(site, "alice", by=Grouping.USER)) == {"alice"}
    assert set(rows(site, "alice", by=Grouping.USER, projects=["physics"])) == {"alice", "bob"}
    assert set(rows(site, None, by=Grouping.USER)) == {"alice", "bob", "carol"}


def test_a_workspace_waiting_for_capacity_consumes_nothing(tmp_path: Path) -> None:
    site = build_site(tmp_path, cpus=1, memory_mib=2048)
    hog = CreateSpec(image="img", name="hog", cpus=1, memory_mib=1024)
    create.create(site.core.env, "bob", CreateRequest(hog))  # (not alice's usage)
    spec = CreateSpec(image="img", name="big", cpus=1, memory_mib=1024)
    create.create(site.core.env, "alice", CreateRequest(spec, wait_for_capacity_s=3600))
    site.clock.now += HOUR
    assert rows(site) == {}


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [(-1.0, 0.0, "1970"), (100.0, 50.0, "later than since"), (100.0, 100.0, "later")],
)
def test_a_bad_window_is_refused(site: Site, since: float, until: float, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        usage.report(site.core.env, "alice", since, until)


def test_a_since_after_now_is_refused(site: Site) -> None:
    """No until is now: a since after it is a reversed window too (it was reported as an
    empty one, "usage from <later> to <now>: none")."""
    with pytest.raises(InvalidArgument, match="in the future"):
        usage.report(site.core.env, "alice", site.clock.now + HOUR)
    assert not usage.report(site.core.env, "alice", site.clock.now - HOUR).rows


def test_the_preemptible_class_is_counted_apart(site: Site) -> None:
    normal = run(site, "a")
    spec = CreateSpec(image="img", name="p", cpus=2, memory_mib=1024, preemptible=True)
    who = Identity(Kind.USER, "alice")
    pre = create.create(site.core.env, who, CreateRequest(spec)).id
    site.report(pre, RUNNING)
    site.clock.now += 2 * HOUR
    r = rows(site)
    # The normal class's figures are unchanged by the preemptible workspace ...
    assert (r[normal].core_hours, r[normal].preemptible_core_hours) == (pytest.approx(4.0), 0.0)
    assert r[normal].preemptible_memory_gib_hours == 0.0
    # ... and the preemptible one's are in their own figures only.
    assert (r[pre].core_hours, r[pre].memory_gib_hours) == (0.0, 0.0)
    assert r[pre].preemptible_core_hours == pytest.approx(4.0)
    assert r[pre].preemptible_memory_gib_hours == pytest.approx(2.0)
    assert r[pre].preemptible_disk_gib_hours == pytest.approx(2 * ROOT_BYTES / BYTES_PER_GIB)
    by_user = rows(site, by=Grouping.USER)["alice"]
    assert by_user.core_hours == pytest.approx(4.0)
    assert by_user.preemptible_core_hours == pytest.approx(4.0)
    with site.store.read() as s:
        intervals = s.execute(select(UsageInterval)).scalars()
        flags = {iv.workspace_id: iv.preemptible for iv in intervals}
    assert flags == {normal: False, pre: True}
