"""`ws cluster start|stop` (ops/clusters.operate) against what `ws start|stop` of each
member would do, with an injected clock over a real SQLite store.

A start is all or nothing: a cluster one of whose members' lease had ended (the others
extended one by one) started the others and said nothing, and then stayed STARTING for
good, its `--wait` waiting out its timeout. A cluster start also started a member while it
was being saved as an image, and a cluster stop pulled the plug on a member once stopped
with `ws stop --force`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cluster_leases import HOUR, RUNNING, STOPPED, cluster, env
from tests.unit.test_request_validation import Site, build_site
from workspace.domain.states import Desired, Op, State
from workspace.errors import FailedPrecondition
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_leases, clusters, leases, operate
from workspace.store import Workspace

PAUSED = nodes_pb2.OBSERVED_STATE_PAUSED


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path, cpus=16, memory_mib=32768)


def by_name(site: Site) -> dict[str, Workspace]:
    return {w.name: w for w in site.workspaces()}


def stopped_cluster(site: Site, workers: int) -> list[str]:
    """c1 (a head, ``workers`` workers), stopped by `ws cluster stop`; its members' ids."""
    ids = cluster(site, workers=workers, lease_s=8 * HOUR)
    clusters.operate(env(site), "alice", "c1", Op.STOP)
    for wid in ids:
        site.report(wid, STOPPED)
    return ids


def test_a_start_some_of_whose_members_lease_ended_starts_none_and_names_them(
    site: Site,
) -> None:
    """The head's lease extended on its own: the start started the head and left every
    worker STOPPED, with no word but STARTING, and the cluster stayed STARTING."""
    ids = cluster(site, workers=2)
    site.clock.now += HOUR
    assert sorted(leases.check(env(site)).expired) == sorted(ids)
    for wid in ids:
        site.report(wid, STOPPED)
    leases.extend(env(site), "alice", "c1-head-0", HOUR)
    with pytest.raises(FailedPrecondition) as refused:
        clusters.operate(env(site), "alice", "c1", Op.START)
    message = refused.value.message
    assert message.startswith("cannot start cluster c1; nothing was started: ")
    assert "workspaces c1-w-0, c1-w-1: its lease ended at " in message
    assert "`ws lease extend c1 DURATION` first" in message
    assert "c1-head-0" not in message
    rows = by_name(site)
    assert {w.desired_state for w in rows.values()} == {Desired.STOPPED.value}
    assert clusters.get(env(site), "alice", "c1").state.value == "STOPPED"

    cluster_leases.extend(env(site), "alice", "c1", HOUR)
    shown = clusters.operate(env(site), "alice", "c1", Op.START)
    assert {m.state.value for m in shown.members} == {"STARTING"}
    for wid in ids:
        site.report(wid, RUNNING)
    assert clusters.get(env(site), "alice", "c1").state.value == "RUNNING"


def test_a_paused_member_refuses_the_start_and_the_others_stay_stopped(site: Site) -> None:
    """`ws pause c1-head-0`, `ws stop c1-w-0`: a cluster start started the worker and
    left the head PAUSED, the cluster STARTING for good."""
    ids = cluster(site, workers=1, lease_s=8 * HOUR)
    head, worker = ids
    operate.operate(env(site), "alice", head, Op.PAUSE)
    site.report(head, PAUSED)
    operate.operate(env(site), "alice", worker, Op.STOP)
    site.report(worker, STOPPED)
    assert by_name(site)["c1-head-0"].state == State.PAUSED.value
    with pytest.raises(FailedPrecondition, match=r"c1-head-0: it is PAUSED"):
        clusters.operate(env(site), "alice", "c1", Op.START)
    assert by_name(site)["c1-w-0"].desired_state == Desired.STOPPED.value


def test_a_member_being_saved_is_not_started_by_a_cluster_start(site: Site) -> None:
    """docs/design/save.md: a start is refused while the workspace is saved, every way of
    starting it; a cluster start started it mid-copy."""
    stopped_cluster(site, workers=1)
    with site.store.write() as tx:
        w = next(w for w in tx.query(Workspace) if w.name == "c1-w-0")
        w.saving_as, w.saving_since = "snap", site.clock.now
    with pytest.raises(FailedPrecondition, match=r"c1-w-0 is being saved as image snap"):
        clusters.operate(env(site), "alice", "c1", Op.START)
    assert {w.desired_state for w in site.workspaces()} == {Desired.STOPPED.value}


def test_a_cluster_stop_is_a_clean_shutdown_after_a_member_was_forced_once(site: Site) -> None:
    """`ws stop --force c1-w-0` (a hung guest), then started again: every later `ws cluster
    stop` pulled that member's plug too, and kept its short timeout."""
    ids = cluster(site, workers=1, lease_s=8 * HOUR)
    worker = ids[1]
    operate.operate(env(site), "alice", worker, Op.STOP, timeout_s=5, force=True)
    site.report(worker, STOPPED)
    clusters.operate(env(site), "alice", "c1", Op.START)
    site.report(worker, RUNNING)
    clusters.operate(env(site), "alice", "c1", Op.STOP)
    rows = by_name(site)
    default = env(site).cfg.default_stop_timeout_s
    for w in rows.values():
        assert (w.desired_state, w.force_stop, w.stop_timeout_s) == (
            Desired.STOPPED.value,
            False,
            default,
        ), w.name


def test_a_cluster_partly_stopped_says_which_members_do_not_run(site: Site) -> None:
    """The lease pass stopped the workers whose lease ended (the head's was extended
    alone): the cluster showed STARTING with no reason, as if a start were under way."""
    ids = cluster(site, workers=2)
    leases.extend(env(site), "alice", "c1-head-0", HOUR)
    site.clock.now += HOUR
    assert sorted(leases.check(env(site)).expired) == sorted(ids[1:])
    for wid in ids[1:]:
        site.report(wid, STOPPED)
    shown = clusters.get(env(site), "alice", "c1")
    assert shown.state.value == "STARTING"
    assert shown.reason == "partly running, nothing starting: c1-w-0 STOPPED, c1-w-1 STOPPED"
    cluster_leases.extend(env(site), "alice", "c1", HOUR)
    assert clusters.operate(env(site), "alice", "c1", Op.START).reason == ""  # booting
