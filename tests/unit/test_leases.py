"""Leases with an injected clock: set at create from the project's policy, extended by
the owner, warned and then stopped or destroyed by the lease loop (a real SQLite store,
the operations and the servicers' plain methods; no gRPC)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import select

from tests.unit.test_request_validation import Site, build_site
from workspace.codec import v1
from workspace.config import ConfigError, ServiceConfig, load
from workspace.domain.leases import duration_text, iso_time, new_lease_end
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import Desired, Op, State
from workspace.domain.tenancy import ProjectSpec
from workspace.domain.usage import Grouping
from workspace.errors import FailedPrecondition, InvalidArgument, NotFound
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_scale, clusters, create, leases, projects, queue, save, usage
from workspace.ops.taskhub import TaskHub
from workspace.ops.unit import Env
from workspace.store import Project, Workspace
from workspace.store.site_events import EventRow
from workspace.v1 import common_pb2

HOUR = 3600
RUNNING = nodes_pb2.OBSERVED_STATE_RUNNING
STOPPED = nodes_pb2.OBSERVED_STATE_STOPPED
ABSENT = nodes_pb2.OBSERVED_STATE_ABSENT


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = build_site(tmp_path, cpus=16, memory_mib=32768)
    with s.store.write() as tx:
        tx.add(Project(name="physics", default_lease_s=8 * HOUR, max_lease_s=72 * HOUR))
        tx.add(Project(name="chem", max_lease_s=4 * HOUR, lease_action="DESTROY"))
        tx.add(Project(name="open"))
    return s


def env(site: Site) -> Env:
    return site.core.env


def member(user: str, project: str) -> Identity:
    """A user whose certificate names ``project`` (none for "")."""
    return Identity(Kind.USER, user, projects=(project,) if project else ())


def make(site: Site, name: str, project: str = "physics", lease_s: int = 0) -> str:
    spec = CreateSpec(image="img", name=name, lease_s=lease_s)
    wid = create.create(
        env(site), member("alice", project), CreateRequest(spec, project=project)
    ).id
    site.report(wid, RUNNING)
    return wid


def row(site: Site, wid: str) -> Workspace:
    with site.store.read() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None
        return ws


def test_no_project_and_a_project_without_policy_mean_no_lease(site: Site) -> None:
    for project in ("", "open"):
        wid = make(site, f"w-{project or 'none'}", project)
        assert site.core.get("alice", wid).lease_expires_at.seconds == 0
    site.clock.now += 1000 * HOUR
    assert leases.check(env(site)) == leases.Round()
    assert {w.desired_state for w in site.workspaces()} == {Desired.RUNNING.value}


def test_the_projects_default_lease(site: Site) -> None:
    wid = make(site, "a")
    assert row(site, wid).lease_expires_at == site.clock.now + 8 * HOUR
    shown = site.core.get("alice", wid)
    assert shown.lease_expires_at.seconds == int(site.clock.now + 8 * HOUR)


def test_a_maximum_without_a_default_is_the_lease(site: Site) -> None:
    wid = make(site, "a", "chem")
    assert row(site, wid).lease_expires_at == site.clock.now + 4 * HOUR


def test_a_lease_asked_for_is_kept(site: Site) -> None:
    wid = make(site, "a", lease_s=2 * HOUR)
    assert row(site, wid).lease_expires_at == site.clock.now + 2 * HOUR


def test_a_lease_over_the_maximum_is_refused_and_nothing_is_made(site: Site) -> None:
    spec = CreateSpec(image="img", name="long", lease_s=73 * HOUR)
    with pytest.raises(InvalidArgument, match="physics's maximum lease of 3d"):
        create.create(env(site), member("alice", "physics"), CreateRequest(spec, project="physics"))
    assert site.workspaces() == []
    with pytest.raises(InvalidArgument, match="negative"):
        create.create(env(site), "alice", CreateRequest(CreateSpec("img", lease_s=-1)))


def test_every_cluster_member_gets_the_lease(site: Site) -> None:
    members = (MemberSpec(role="head", image="img"), MemberSpec(role="w", image="img", count=2))
    c = clusters.create(env(site), "alice", ClusterRequest("c1", members, lease_s=HOUR))
    assert [m.lease_expires_at for m in c.members] == [site.clock.now + HOUR] * 3


def test_a_clusters_members_share_one_lease_end_when_the_clock_moves(site: Site) -> None:
    """Each member's row reads the clock; under load a second passed between two of them
    and the members' leases ended a second apart (and a grow copied the first's)."""
    start = site.clock.now

    def ticking() -> float:
        site.clock.now += 0.7
        return site.clock.now

    members = (MemberSpec(role="head", image="img"), MemberSpec(role="w", image="img", count=3))
    tick = dataclasses.replace(env(site), clock=ticking)
    c = clusters.create(tick, "alice", ClusterRequest("c1", members, lease_s=HOUR))
    ends = {m.lease_expires_at for m in c.members}
    assert site.clock.now - start > 1.0  # the clock did move while they were made
    assert len(ends) == 1 and start + HOUR < ends.pop() < site.clock.now + HOUR


def test_extend(site: Site) -> None:
    wid = make(site, "a")
    end = row(site, wid).lease_expires_at
    shown = leases.extend(env(site), "alice", "a", 4 * HOUR)
    assert shown.lease_expires_at == end + 4 * HOUR
    assert row(site, wid).lease_expires_at == end + 4 * HOUR


def test_extend_never_beyond_the_maximum_from_now(site: Site) -> None:
    wid = make(site, "a")  # 8h of a 72h maximum
    with pytest.raises(InvalidArgument, match="extended by at most 2d16h"):
        leases.extend(env(site), "alice", "a", 65 * HOUR)
    end = row(site, wid).lease_expires_at
    site.clock.now += 7 * HOUR + 27  # the room is 2d23h27s: said to the minute below
    with pytest.raises(InvalidArgument, match=r"extended by at most 2d23h$"):
        leases.extend(env(site), "alice", "a", 72 * HOUR)
    leases.extend(env(site), "alice", "a", 71 * HOUR)  # as it said: it fits
    assert row(site, wid).lease_expires_at == end + 71 * HOUR
    leases.extend(env(site), "alice", "a", 27)  # 72h from now
    assert row(site, wid).lease_expires_at == site.clock.now + 72 * HOUR


def test_extend_of_someone_elses_workspace_is_not_found(site: Site) -> None:
    make(site, "a")
    with pytest.raises(NotFound):
        leases.extend(env(site), "bob", "a", HOUR)


@pytest.mark.parametrize(
    ("project", "add_s", "message"),
    [("physics", 0, "more than 0"), ("physics", -5, "more than 0")],
)
def test_bad_extends_are_refused(site: Site, project: str, add_s: int, message: str) -> None:
    wid = make(site, "a", project)
    before = row(site, wid).lease_expires_at
    with pytest.raises(InvalidArgument, match=message):
        leases.extend(env(site), "alice", "a", add_s)
    assert row(site, wid).lease_expires_at == before


def test_extending_a_workspace_without_a_lease_is_a_failed_precondition(site: Site) -> None:
    """The request is well formed, the workspace's state refuses it: it was
    INVALID_ARGUMENT ("fix the request"), though no request could extend it."""
    wid = make(site, "a", "open")
    with pytest.raises(FailedPrecondition, match="has no lease") as refused:
        leases.extend(env(site), "alice", "a", HOUR)
    assert "ws create --lease DURATION" in refused.value.message
    assert row(site, wid).lease_expires_at == 0


def test_a_lease_over_before_any_warning_ends_without_one(site: Site) -> None:
    """A lease shorter than a pass of the lease loop: expired, and no warning after
    (one once came after the expiry, saying it had expired)."""
    wid = make(site, "a", lease_s=10)
    site.clock.now += 20
    assert leases.check(env(site)).expired == [wid]
    site.clock.now += HOUR
    assert leases.check(env(site)) == leases.Round()
    with site.store.read() as s:
        kinds = s.execute(
            select(EventRow.kind).where(EventRow.workspace_id == wid).order_by(EventRow.id)
        ).scalars()
        lease_kinds = [k for k in kinds if k.startswith("lease.")]
    assert lease_kinds == ["lease.expired"]


def test_warn_then_stop(site: Site) -> None:
    wid = make(site, "a", lease_s=2 * HOUR)
    end = row(site, wid).lease_expires_at
    watcher = env(site).notifier.subscribe(lambda v: v.id == wid)
    site.clock.now += HOUR - 1  # more than lease_warning_s (1 h) before the end
    assert leases.check(env(site)) == leases.Round()
    site.clock.now += 1
    assert leases.check(env(site)).warned == [wid]
    event = watcher.events.get_nowait()
    assert event is not None and event.reason == f"lease ends at {iso_time(end)}"
    assert event.state is State.RUNNING
    assert leases.check(env(site)) == leases.Round()  # warned once
    site.clock.now = end
    assert leases.check(env(site)).expired == [wid]
    shown = site.core.get("alice", wid)
    assert shown.reason == f"lease expired at {iso_time(end)}"
    ws = row(site, wid)
    assert (ws.desired_state, ws.state) == (Desired.STOPPED.value, State.STOPPING.value)
    # the node is told, as for a user's stop
    (order,) = site.nodes.assignments("n1").assignments
    assert order.desired == common_pb2.DESIRED_STATE_STOPPED
    site.report(wid, STOPPED)
    site.clock.now += HOUR
    assert leases.check(env(site)) == leases.Round()
    assert row(site, wid).state == State.STOPPED.value
    # Stopped, it still says why (the node's report of the stop carries no reason).
    assert site.core.get("alice", wid).reason == f"lease expired at {iso_time(end)}"


def test_an_ended_lease_must_be_extended_before_a_start(site: Site) -> None:
    wid = make(site, "a", lease_s=HOUR)
    site.clock.now += HOUR
    leases.check(env(site))
    site.report(wid, STOPPED)
    with pytest.raises(FailedPrecondition, match=r"lease ended at .*ws lease extend a"):
        site.core.operate("alice", wid, Op.START)
    leases.extend(env(site), "alice", wid, HOUR)
    site.core.operate("alice", wid, Op.START)
    assert row(site, wid).lease_expires_at == site.clock.now + HOUR


def test_a_start_of_a_running_workspace_whose_lease_just_ended_changes_nothing(
    site: Site,
) -> None:
    """Between the lease's end and the next expiry pass the workspace still runs: a start
    is already in effect (as for any running workspace), not refused for the lease; the
    pass then stops it as usual."""
    wid = make(site, "a", lease_s=HOUR)
    site.clock.now += HOUR
    site.core.operate("alice", wid, Op.START)
    assert (row(site, wid).desired_state, row(site, wid).state) == (
        Desired.RUNNING.value,
        State.RUNNING.value,
    )
    assert leases.check(env(site)).expired == [wid]


def test_warn_then_destroy(site: Site) -> None:
    wid = make(site, "a", "chem", lease_s=2 * HOUR)
    site.clock.now += HOUR
    assert leases.check(env(site)).warned == [wid]
    site.clock.now += HOUR
    assert leases.check(env(site)).expired == [wid]
    assert row(site, wid).desired_state == Desired.TERMINATED.value
    site.report(wid, ABSENT)
    ws = row(site, wid)
    assert ws.state == State.TERMINATED.value
    end = ws.lease_expires_at  # gone, it says why, not just "destroyed"
    assert site.core.get("alice", wid).reason == f"lease expired at {iso_time(end)}"
    assert site.node_usage() == (0, 0)
    # usage stopped at the expiry
    site.clock.now += 10 * HOUR
    (r,) = usage.report(env(site), "alice", by=Grouping.WORKSPACE).rows
    assert r.core_hours == pytest.approx(2.0)


def test_a_stopped_workspace_is_not_warned_when_expiry_stops(site: Site) -> None:
    wid = make(site, "a", lease_s=HOUR)
    site.core.operate("alice", wid, Op.STOP)
    site.report(wid, STOPPED)
    site.clock.now += 2 * HOUR
    assert leases.check(env(site)) == leases.Round()


def test_a_queued_workspace_is_destroyed_at_expiry(tmp_path: Path) -> None:
    site = build_site(tmp_path, cpus=1, memory_mib=1024)
    hog = CreateSpec(image="img", name="hog", memory_mib=512)
    create.create(site.core.env, "alice", CreateRequest(hog))
    spec = CreateSpec(image="img", name="big", memory_mib=512, lease_s=HOUR)
    wid = create.create(site.core.env, "alice", CreateRequest(spec, wait_for_capacity_s=9999)).id
    site.clock.now += HOUR
    assert leases.check(site.core.env).expired == [wid]
    with site.store.read() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None and ws.state == State.TERMINATED.value


def test_a_queued_workspace_whose_lease_ended_is_not_placed(tmp_path: Path) -> None:
    """Capacity frees between its lease's end and the next lease pass: the queue left it
    to wait, and the pass destroyed it as a workspace that never ran; placed, it would
    boot after its end and then only be stopped, holding its node's memory and disk."""
    site = build_site(tmp_path, cpus=1, memory_mib=1024)
    hog = CreateSpec(image="img", name="hog", memory_mib=512)
    hid = create.create(site.core.env, "alice", CreateRequest(hog)).id
    site.report(hid, RUNNING)
    spec = CreateSpec(image="img", name="big", memory_mib=512, lease_s=HOUR)
    wid = create.create(site.core.env, "alice", CreateRequest(spec, wait_for_capacity_s=9999)).id
    site.clock.now += HOUR
    site.core.operate("alice", hid, Op.DESTROY)
    site.report(hid, ABSENT)
    assert row(site, hid).state == State.TERMINATED.value  # its capacity is free
    assert queue.process(site.core.env) == 0
    assert not row(site, wid).node
    assert leases.check(site.core.env).expired == [wid]
    assert row(site, wid).state == State.TERMINATED.value


@pytest.mark.parametrize(("key", "value"), [("lease_check_interval_s", 0), ("lease_warning_s", -1)])
def test_bad_lease_config_is_refused(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=key):
        load(ServiceConfig, None, **{key: value})


def test_durations_read_well() -> None:
    assert [duration_text(s) for s in (45, 90 * 60, 36 * HOUR, 26 * HOUR + 1)] == [
        "45s",
        "1h30m",
        "36h",
        "26h1s",
    ]


def test_long_durations_read_in_days() -> None:
    """`ws create --lease 100d` over a project's maximum was refused as "a lease of 2400h
    is longer than ... 72h": days from two days up, as the user wrote them."""
    day = 24 * HOUR
    assert [duration_text(s) for s in (100 * day, 3 * day, 2 * day + 12 * HOUR, 2 * day)] == [
        "100d",
        "3d",
        "2d12h",
        "2d",
    ]
    with pytest.raises(InvalidArgument) as info:
        new_lease_end(int(100 * day), 8 * 3600, 72 * 3600, 0.0, "physics")
    assert info.value.message == (
        "a lease of 100d is longer than project physics's maximum lease of 3d"
    )


def test_a_lost_workspace_is_stopped_once_its_node_is_back(site: Site) -> None:
    wid = make(site, "a", lease_s=HOUR)
    site.clock.now += HOUR
    assert site.nodes.check_liveness() == ["n1"]
    assert row(site, wid).state == State.LOST.value
    assert leases.check(env(site)).expired == []  # LOST cannot be stopped: not yet
    site.report(wid, RUNNING, full=True)  # the node is back
    assert leases.check(env(site)).expired == [wid]
    assert row(site, wid).desired_state == Desired.STOPPED.value


def _stopped_at_its_leases_end(site: Site, role: str) -> str:
    """Cluster c1 of one member (of ``role``), stopped by the lease pass when its lease of
    an hour ended; the member's id."""
    members = (MemberSpec(role=role, image="img"),)
    c = clusters.create(env(site), "alice", ClusterRequest("c1", members, lease_s=HOUR))
    (wid,) = [m.id for m in c.members]
    site.report(wid, RUNNING)
    site.clock.now += HOUR
    assert leases.check(env(site)).expired == [wid]
    site.report(wid, STOPPED)
    return wid


def test_a_cluster_start_leaves_members_whose_lease_ended(site: Site) -> None:
    wid = _stopped_at_its_leases_end(site, "head")
    with pytest.raises(FailedPrecondition, match="lease ended at"):
        clusters.operate(env(site), "alice", "c1", Op.START)
    leases.extend(env(site), "alice", wid, HOUR)
    clusters.operate(env(site), "alice", "c1", Op.START)
    assert row(site, wid).desired_state == Desired.RUNNING.value


# -- the site's maximum lease (limits.max_lease_s) --------------------------------------------

YEAR = 365 * 24 * HOUR


def test_a_lease_beyond_the_sites_maximum_is_refused_and_nothing_is_made(site: Site) -> None:
    """Without a project maximum, a lease is still bounded: a lease of 999999999999 days
    once made a row whose end no timestamp could hold (every list failed after)."""
    for project, user in (("", "alice"), ("open", "alice")):
        spec = CreateSpec(image="img", name="forever", lease_s=999999999999 * 24 * HOUR)
        with pytest.raises(InvalidArgument, match=r"the site's maximum lease of 3650d"):
            create.create(env(site), member(user, project), CreateRequest(spec, project=project))
    assert site.workspaces() == []
    members = (MemberSpec(role="w", image="img"),)
    with pytest.raises(InvalidArgument, match=r"limits\.max_lease_s"):
        clusters.create(env(site), "alice", ClusterRequest("c1", members, lease_s=11 * YEAR))
    assert site.workspaces() == []
    # Up to it is fine; the list shows it.
    wid = make(site, "long", "open", lease_s=10 * YEAR)
    assert row(site, wid).lease_expires_at == site.clock.now + 10 * YEAR
    assert [w.name for w in site.core.list("alice", False)] == ["long"]


def test_an_extend_beyond_the_sites_maximum_is_refused(site: Site) -> None:
    wid = make(site, "a", "physics")  # the project's maximum (72h) is the tighter one
    with pytest.raises(InvalidArgument, match="physics's maximum lease of 3d"):
        leases.extend(env(site), "alice", "a", 10**12)
    short = dataclasses.replace(
        site.core.env, cfg=load(ServiceConfig, None, limits={"max_lease_s": 24 * HOUR})
    )
    with pytest.raises(InvalidArgument, match=r"site's maximum lease of 24h.*at most 16h"):
        leases.extend(short, "alice", "a", 17 * HOUR)
    before = row(site, wid).lease_expires_at
    with pytest.raises(InvalidArgument, match=r"by 1000000000000d goes beyond"):
        leases.extend(short, "alice", "a", 10**12 * 24 * HOUR)
    assert row(site, wid).lease_expires_at == before
    leases.extend(short, "alice", "a", 16 * HOUR)
    assert row(site, wid).lease_expires_at == site.clock.now + 24 * HOUR


def test_a_default_lease_beyond_a_lowered_sites_maximum_is_cut_to_it(site: Site) -> None:
    """An admin lowers limits.max_lease_s below a project's default lease (8h) and
    restarts: every `ws create` and `ws cluster create` in the project that asked for no
    lease was refused ("a lease of 8h is longer than the site's maximum lease of 4h"),
    though its user asked for none and could do nothing about it. The default is cut to
    the site's maximum, as it is to the project's; a lease asked for beyond it is still
    refused."""
    short = dataclasses.replace(
        site.core.env, cfg=load(ServiceConfig, None, limits={"max_lease_s": 4 * HOUR})
    )
    alice = member("alice", "physics")
    spec = CreateSpec(image="img", name="a")
    made = create.create(short, alice, CreateRequest(spec, project="physics"))
    assert row(site, made.id).lease_expires_at == site.clock.now + 4 * HOUR
    members = (MemberSpec(role="w", image="img", count=2),)
    c = clusters.create(short, alice, ClusterRequest("c1", members, project="physics"))
    ends = {w.lease_expires_at for w in site.workspaces() if w.cluster == c.id}
    assert ends == {site.clock.now + 4 * HOUR}
    asked = CreateSpec(image="img", name="b", lease_s=5 * HOUR)
    with pytest.raises(InvalidArgument, match="the site's maximum lease of 4h"):
        create.create(short, alice, CreateRequest(asked, project="physics"))


def test_a_project_lease_beyond_the_sites_maximum_is_refused(site: Site) -> None:
    for spec in (
        ProjectSpec("p1", max_lease_s=11 * YEAR),
        ProjectSpec("p2", default_lease_s=11 * YEAR),
    ):
        with pytest.raises(InvalidArgument, match="longer than the site's maximum lease"):
            projects.create_project(env(site), spec)


def test_a_default_lease_longer_than_the_maximum_names_both(site: Site) -> None:
    """`ws-admin project set physics --max-lease 4h` (its default is 8h) said only "the
    default lease is longer than the maximum lease": the admin had to look up the
    default kept from before."""
    with pytest.raises(InvalidArgument) as info:
        projects.set_defaults(
            env(site), "physics", None, leases=(8 * HOUR, 4 * HOUR, projects.LeaseAction.STOP)
        )
    assert "the default lease of 8h is longer than the maximum lease of 4h" in info.value.message
    kept = {p.name: p.max_lease_s for p in projects.list_projects(env(site))}
    assert kept["physics"] == 72 * HOUR


@pytest.mark.parametrize("value", [0, 1001 * YEAR])
def test_a_site_maximum_lease_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_lease_s"):
        load(ServiceConfig, None, limits={"max_lease_s": value})


def test_a_time_no_timestamp_holds_is_shown_as_the_last_it_can() -> None:
    """A row stored before leases had a site maximum still lists."""
    assert v1.ts(8.64e16).ToJsonString() == "9999-12-31T23:59:59Z"
    assert v1.ts(1.5e9).seconds == 1500000000


def test_a_cluster_whose_lease_ended_does_not_grow_until_it_is_extended(site: Site) -> None:
    """A new member shares its cluster's lease: once that ended, it would be born with an
    ended lease and run (until the next lease pass stopped it) where a start is refused."""
    wid = _stopped_at_its_leases_end(site, "w")
    with pytest.raises(FailedPrecondition, match=r"lease ended at .*ws lease extend"):
        cluster_scale.scale(env(site), "alice", "c1", "w", 2)
    assert [w.id for w in site.workspaces()] == [wid]
    leases.extend(env(site), "alice", wid, HOUR)
    with pytest.raises(FailedPrecondition, match=r"is STOPPED .*ws cluster start c1"):
        cluster_scale.scale(env(site), "alice", "c1", "w", 2)  # the lease first, then this
    clusters.operate(env(site), "alice", "c1", Op.START)
    site.report(wid, RUNNING)
    _, result = cluster_scale.scale(env(site), "alice", "c1", "w", 2)
    assert len(result.added) == 1
    assert {w.lease_expires_at for w in site.workspaces()} == {site.clock.now + HOUR}


def test_an_extend_with_no_room_left_says_it_cannot_be_extended(site: Site) -> None:
    """A lease already at the project's maximum from now, or beyond it since an admin
    lowered the maximum, was refused with "it can be extended by at most 0s"."""
    wid = make(site, "a", "physics", lease_s=72 * HOUR)
    end = row(site, wid).lease_expires_at
    with pytest.raises(InvalidArgument) as info:
        leases.extend(env(site), "alice", "a", HOUR)
    assert f"it cannot be extended now: it ends at {iso_time(end)}" in info.value.message
    assert "at most 0s" not in info.value.message
    site.clock.now += 2 * HOUR  # two hours of room again
    assert leases.extend(env(site), "alice", "a", HOUR)
    assert row(site, wid).lease_expires_at == end + HOUR


def test_a_destroy_expiry_waits_for_a_save_under_way(site: Site) -> None:
    """A project that destroys at expiry destroyed a workspace while its owner saved it
    as an image (`ws image save`, minutes of copying): the save failed and the disks it
    copied were gone with the workspace. The expiry waits for the save to end."""
    wid = make(site, "a", "chem", lease_s=HOUR)
    site.core.operate("alice", wid, Op.STOP)
    site.report(wid, STOPPED)
    site.clock.now += HOUR - 60  # a minute before the end, its owner saves it
    with site.store.write() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None
        ws.saving_as, ws.saving_since = "mine:1", site.clock.now
    site.clock.now += 120
    assert leases.check(env(site)).expired == []
    assert row(site, wid).desired_state == Desired.STOPPED.value
    with site.store.write() as s:  # the save ended
        ws = s.get(Workspace, wid)
        assert ws is not None
        ws.saving_as = ""
    assert leases.check(env(site)).expired == [wid]
    assert row(site, wid).desired_state == Desired.TERMINATED.value


class _NoNode:
    """A task hub that fails the test if a save reaches the node."""

    def save(self, *args: object) -> None:
        raise AssertionError("the save reached the node")


NO_NODE = cast(TaskHub, _NoNode())


def test_no_save_begins_once_a_destroy_lease_has_ended(site: Site) -> None:
    """The expiry waits for a save under way, so saves begun one after another after the
    end kept a workspace of a project that destroys at expiry past its lease, with no
    extend. A save begun after the end is refused, saying how to go on; the expiry then
    destroys it. (A STOP project's stopped workspace may still be saved.)"""
    wid = make(site, "a", "chem", lease_s=HOUR)
    site.core.operate("alice", wid, Op.STOP)
    site.report(wid, STOPPED)
    site.clock.now += HOUR + 1
    alice = member("alice", "chem")
    with pytest.raises(FailedPrecondition) as refused:
        save.save(env(site), NO_NODE, site.catalog.catalog, alice, wid, "mine:1")
    assert "its lease ended at" in refused.value.message
    assert "`ws lease extend a DURATION` first" in refused.value.message
    assert not row(site, wid).saving_as
    assert leases.check(env(site)).expired == [wid]
    other = make(site, "b", "physics", lease_s=HOUR)
    site.core.operate("alice", other, Op.STOP)
    site.report(other, STOPPED)
    site.clock.now += HOUR + 1
    with pytest.raises(AssertionError, match="reached the node"):
        save.save(
            env(site), NO_NODE, site.catalog.catalog, member("alice", "physics"), other, "b:1"
        )
