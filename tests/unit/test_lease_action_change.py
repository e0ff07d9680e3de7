"""A project's expiry action changed from stop to destroy (`ws-admin project set P
--on-expiry destroy`) applies to the leases that end after the change: a workspace whose
lease ended before it, stopped at that end as the project then said, is not destroyed by
the next lease pass with its disks (a real SQLite store, the operations; no gRPC)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import CreateRequest, CreateSpec
from workspace.domain.states import Desired, Op
from workspace.domain.tenancy import LeaseAction
from workspace.errors import FailedPrecondition
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import create, leases, projects
from workspace.store import Project, Workspace

HOUR = 3600
ALICE = Identity(Kind.USER, "alice", projects=("physics",))


def site_of(tmp_path: Path) -> Site:
    site = build_site(tmp_path, cpus=16, memory_mib=32768)
    with site.store.write() as tx:
        tx.add(Project(name="physics", default_lease_s=HOUR, max_lease_s=72 * HOUR))
    return site


def running(site: Site, name: str, lease_s: int) -> str:
    spec = CreateSpec(image="img", name=name, lease_s=lease_s)
    wid = create.create(site.core.env, ALICE, CreateRequest(spec, project="physics")).id
    site.report(wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    return wid


def desired(site: Site, wid: str) -> str:
    with site.store.read() as s:
        ws = s.get(Workspace, wid)
        assert ws is not None
        return ws.desired_state


def test_a_switch_to_destroy_spares_the_leases_that_ended_before_it(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    env = site.core.env
    ended = running(site, "ended", HOUR)
    site.clock.now += HOUR
    assert leases.check(env).expired == [ended]  # stopped, as the project says now
    site.report(ended, nodes_pb2.OBSERVED_STATE_STOPPED)
    stopped_by_user = running(site, "mine", HOUR)
    site.core.operate(ALICE, stopped_by_user, Op.STOP)
    site.report(stopped_by_user, nodes_pb2.OBSERVED_STATE_STOPPED)
    later = running(site, "later", 3 * HOUR)
    site.clock.now += HOUR  # stopped_by_user's lease has ended, under stop
    projects.set_defaults(env, "physics", None, leases=(HOUR, 72 * HOUR, LeaseAction.DESTROY))
    site.clock.now += 1
    assert leases.check(env).expired == []  # both kept, stopped, their disks with them
    assert desired(site, ended) == desired(site, stopped_by_user) == Desired.STOPPED.value
    # A lease that ends after the change ends as the project says now: destroyed.
    site.clock.now += 2 * HOUR
    assert leases.check(env).expired == [later]
    assert desired(site, later) == Desired.TERMINATED.value
    # Still refused a start until extended; the extended lease ends under destroy.
    try:
        site.core.operate(ALICE, ended, Op.START)
    except FailedPrecondition as exc:
        assert "its lease ended at" in exc.message
    else:
        raise AssertionError("a start after the lease ended was let through")
    leases.extend(env, ALICE, ended, HOUR)
    site.clock.now += HOUR
    assert leases.check(env).expired == [ended]
    assert desired(site, ended) == Desired.TERMINATED.value
