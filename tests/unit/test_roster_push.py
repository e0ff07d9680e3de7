"""The leader's roster pushes (ops/rosters.py) with a real SQLite store: what each running
member of a cluster is given, through a recording stand-in for the exec task path."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from tests.unit.test_request_validation import build_site
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.domain.tasks import ExecTask
from workspace.ops import cluster_scale, clusters, seeds
from workspace.ops.rosters import RosterPusher
from workspace.store import Workspace


def test_a_shrink_of_one_users_cluster_leaves_a_namesakes_roster_whole(tmp_path: Path) -> None:
    """Alice's and Bob's clusters are both "mpi" (names are per owner), so both have an
    mpi-worker-1. When Alice's shrank, the pass left every member named mpi-worker-1
    that was being destroyed out of every roster it pushed: Bob's members lost their
    running mpi-worker-1 from /etc/hosts (and cluster.json, known_hosts) until Alice's
    was gone."""
    site = build_site(tmp_path, cpus=8)
    env = site.core.env
    workers = (MemberSpec("worker", "img", 1, 128, 2),)
    mine = clusters.create(env, "alice", ClusterRequest("mpi", workers))
    theirs = clusters.create(env, "bob", ClusterRequest("mpi", workers))
    with site.store.write() as s:  # running, contextualized (a NoCloud image)
        s.execute(
            update(Workspace)
            .where(Workspace.cluster.in_([mine.id, theirs.id]))
            .values(state="RUNNING", context=seeds.NOCLOUD)
        )
    pushed: dict[str, dict[str, str]] = {}

    def run(_node: str, wid: str, task: ExecTask, _timeout: float) -> None:
        if "cat >" in task.argv[-1]:
            path = task.argv[-1].rsplit(" ", 1)[-1]
            pushed.setdefault(wid, {})[path] = task.stdin.decode()

    pusher = RosterPusher(env, run)
    assert len(pusher.run_once()) == 4
    cluster_scale.scale(env, "alice", mine.id, "worker", 1)
    pushed.clear()
    pusher.run_once()
    bobs = {m.id for m in clusters.get(env, "bob", theirs.id).members}
    assert not bobs & set(pushed)  # nothing changed in Bob's cluster
    alices = [m for m in clusters.get(env, "alice", mine.id).members if m.name == "mpi-worker-0"]
    hosts = pushed[alices[0].id]["/etc/hosts"]
    assert "mpi-worker-0" in hosts and "mpi-worker-1" not in hosts  # the shrink is pushed
