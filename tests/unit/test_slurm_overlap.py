"""ws-slurm runs that overlap (slurmctld runs its power programs concurrently) and runs
that are killed (slurmctld kills them after the longest ResumeTimeout/SuspendTimeout).

The interleavings are made with events at the points where one run looks and the other
acts (the fake scontrol's ``show node``, the fake service's calls, the node lock's wait
for a busy lock), not with sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import workspace
from tests.unit.test_slurm_program import Run, run
from workspace.slurm import nodelock
from workspace.slurm.nodelock import NodeLocks
from workspace.slurm.program import node_of

__all__ = ["run"]  # the fixture, used here

WAIT = 30.0  # a safety net for a test that hangs, never reached when it passes


class Runner(threading.Thread):
    """One ws-slurm run in a thread of its own (its exit code in ``code``); ``ready`` is
    set when it is done, or waiting for a node lock another run holds."""

    def __init__(self, run: Run, ready: threading.Event, *argv: str, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.call: Callable[[], int] = lambda: run(*argv, **kw)
        self.ready = ready
        self.code: int | None = None

    def run(self) -> None:
        try:
            self.code = self.call()
        finally:
            self.ready.set()


def _ready_when_waiting(monkeypatch: pytest.MonkeyPatch, ready: threading.Event) -> None:
    """``ready`` set by a run waiting for a lock another run holds."""
    waited = NodeLocks.wait

    def wait(self: NodeLocks) -> None:
        ready.set()
        waited(self)

    monkeypatch.setattr(NodeLocks, "wait", wait)


def _live_of(run: Run, node: str) -> list[str]:
    return [w.id for w in run.service.live() if node_of(w, "slurm-") == node]


def test_a_cleanup_does_not_destroy_what_a_resume_of_the_node_has_kept(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suspend (of c9) sweeps c1's leftover: it reads c1 POWERED_DOWN; slurmctld then
    resumes c1 (POWERING_UP) and runs resume c1, which finds the leftover and keeps it
    (``already has workspace``); then the sweep destroyed it: c1 was up in Slurm with no
    VM, its job waiting out ResumeTimeout. The sweep now holds c1's lock from its look to
    its destroy, so the resume waits, then finds the leftover gone and makes c1 anew."""
    assert run("resume", "c1") == 0
    (leftover,) = _live_of(run, "c1")
    run.scontrol.node_states = {"c1": "IDLE+CLOUD+POWERED_DOWN"}  # a suspend that failed
    looked, go, ready = threading.Event(), threading.Event(), threading.Event()
    states = run.scontrol.states

    def show_node(nodes: Any) -> dict[str, str] | None:
        answer = states(nodes)
        if threading.current_thread() is sweeper and not looked.is_set():
            looked.set()
            go.wait(WAIT)  # the sweep has read c1's state and not yet acted on it
        return answer

    monkeypatch.setattr(run.scontrol, "states", show_node)
    _ready_when_waiting(monkeypatch, ready)
    sweeper = Runner(run, threading.Event(), "suspend", "c9")
    sweeper.start()
    assert looked.wait(WAIT)
    run.scontrol.node_states = {"c1": "IDLE+CLOUD+POWERING_UP"}  # slurmctld resumes c1
    resumer = Runner(run, ready, "resume", "c1")
    resumer.start()
    assert ready.wait(WAIT)  # the resume kept the leftover, or waits for the sweep
    go.set()
    sweeper.join(WAIT)
    resumer.join(WAIT)
    assert (sweeper.code, resumer.code) == (0, 0)
    now = _live_of(run, "c1")
    assert len(now) == 1 and now != [leftover], run.text()
    new = next(w for w in run.service.live() if w.id == now[0])
    assert run.scontrol.addresses["c1"] == new.nics[0].ip
    assert "node c1 is powered down in Slurm but still has a workspace" in run.text()


def test_a_resume_during_a_suspend_of_the_same_node_waits_for_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow suspend of c1 (the service slow to answer) still running when slurmctld,
    its SuspendTimeout over, resumes c1 for a job: the resume found c1's workspace, kept
    it, and the suspend then destroyed it. Now the resume waits for the suspend."""
    assert run("resume", "c1") == 0
    (old,) = _live_of(run, "c1")
    listed, go, ready = threading.Event(), threading.Event(), threading.Event()
    destroy = run.service.destroy_workspace

    def slow_destroy(id: str) -> Any:
        if threading.current_thread() is suspender and not listed.is_set():
            listed.set()
            go.wait(WAIT)  # the suspend has listed c1's workspace, not yet destroyed it
        return destroy(id)

    monkeypatch.setattr(run.service, "destroy_workspace", slow_destroy)
    _ready_when_waiting(monkeypatch, ready)
    suspender = Runner(run, threading.Event(), "suspend", "c1")
    suspender.start()
    assert listed.wait(WAIT)
    resumer = Runner(run, ready, "resume", "c1")
    resumer.start()
    assert ready.wait(WAIT)
    go.set()
    suspender.join(WAIT)
    resumer.join(WAIT)
    assert (suspender.code, resumer.code) == (0, 0)
    now = _live_of(run, "c1")
    assert len(now) == 1 and now != [old], run.text()


def test_two_resumes_of_a_node_make_one_workspace(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's resume of c[1-2] and an admin's ``power_up`` of c1 at once: both looked,
    found nothing, and made c1 twice (the job's member and a lone c1), two VMs
    registering as one node. The second now waits and keeps the first one's."""
    asked, go, ready = threading.Event(), threading.Event(), threading.Event()
    create_cluster = run.service.create_cluster

    def slow_create(req: Any) -> Any:
        if threading.current_thread() is first and not asked.is_set():
            asked.set()
            go.wait(WAIT)
        return create_cluster(req)

    monkeypatch.setattr(run.service, "create_cluster", slow_create)
    _ready_when_waiting(monkeypatch, ready)
    first = Runner(
        run, threading.Event(), "resume", "c[1-2]", jobs=[{"job_id": 5, "nodes_resume": "c[1-2]"}]
    )
    first.start()
    assert asked.wait(WAIT)
    second = Runner(run, ready, "resume", "c1")
    second.start()
    assert ready.wait(WAIT)
    go.set()
    first.join(WAIT)
    second.join(WAIT)
    assert (first.code, second.code) == (0, 0)
    assert run.names() == ["slurm-5-c1-0", "slurm-5-c2-0"], run.text()
    assert "node c1 already has workspace slurm-5-c1-0" in run.text()


def test_a_node_held_too_long_by_another_run_is_down_with_why(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that cannot lock a node within replace_wait_s and a call (another run
    stuck on it) leaves it alone and says so to Slurm, as for any cause that stops it;
    its job's other nodes are only powered down (all or none)."""
    clock = [0.0]
    monkeypatch.setattr(nodelock.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(NodeLocks, "wait", lambda self: clock.__setitem__(0, clock[0] + 1))
    other = NodeLocks(str(run.lock))  # another run, holding c1
    assert other.try_acquire(["c1"]) == ["c1"]
    jobs = [{"job_id": 7, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 1
    assert run.names() == []
    why = "another ws-slurm run held the node for 60 s"
    assert run.scontrol.down == {"c1": f"ws: node c1: {why}"}
    assert run.scontrol.forced == ["c2"]
    assert f"node c1: {why}; left alone" in run.text()
    run.scontrol.down.clear()
    run.scontrol.node_states.clear()  # returned by the admin (a DOWN node keeps its reason)
    assert run("suspend", "c1") == 1
    assert run.scontrol.down == {"c1": f"ws: suspend could not check for its workspace: {why}"}
    other.close()
    assert run("resume", "c1") == 0
    assert run.names() == ["c1"]


def test_a_killed_run_frees_its_node_locks(tmp_path: Path) -> None:
    """slurmctld (23.02 on) kills a power program that outlives the longest
    ResumeTimeout/SuspendTimeout: SIGTERM to its process group, SIGKILL 10 ms later. The
    kernel frees its node locks: the next run is not kept waiting by a dead one."""
    path = tmp_path / "nodes.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from workspace.slurm.nodelock import NodeLocks\n"
            f"assert NodeLocks({str(path)!r}).try_acquire(['c1']) == ['c1']\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(workspace.__file__).parents[1])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        mine = NodeLocks(str(path))
        assert mine.try_acquire(["c1", "c2"]) == ["c2"]
        holder.kill()
        holder.wait()
        assert mine.try_acquire(["c1"]) == ["c1"]
        mine.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.parametrize("how", ["log rotated by renaming", "no log file"])
def test_the_locks_do_not_depend_on_the_log_file(
    run: Run, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The locks were on the log file: logrotate renaming it while a run held c1 let a
    later run lock the new file, and ``log_file = ""`` meant no locks at all; either way
    two resumes of c1 both made it (a job's member and a lone c1). They are on the lock
    file now: the second run waits, then keeps the first one's."""
    if how == "no log file":
        run.config.write_text(
            run.config.read_text().replace(f'log_file = "{run.log}"', 'log_file = ""')
        )
    asked, go, ready = threading.Event(), threading.Event(), threading.Event()
    create_cluster = run.service.create_cluster

    def slow_create(req: Any) -> Any:
        if threading.current_thread() is first and not asked.is_set():
            asked.set()
            go.wait(WAIT)
        return create_cluster(req)

    monkeypatch.setattr(run.service, "create_cluster", slow_create)
    _ready_when_waiting(monkeypatch, ready)
    first = Runner(
        run, threading.Event(), "resume", "c[1-2]", jobs=[{"job_id": 5, "nodes_resume": "c[1-2]"}]
    )
    first.start()
    assert asked.wait(WAIT)
    if how == "log rotated by renaming":
        run.log.rename(run.tmp / "ws-slurm.log.1")  # logrotate without copytruncate
    second = Runner(run, ready, "resume", "c1")
    second.start()
    assert ready.wait(WAIT)
    go.set()
    first.join(WAIT)
    second.join(WAIT)
    assert (first.code, second.code) == (0, 0)
    assert run.names() == ["slurm-5-c1-0", "slurm-5-c2-0"]


def test_a_runs_waits_end_within_replace_wait_s(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run holds c1 for 50 s, and c1's old workspace is never destroyed: the
    resume waited for the lock (up to replace_wait_s + timeout_s, 90 s), then for the old
    workspace (replace_wait_s, 60 s) again: 110 s here, past a ResumeTimeout of 90 s that
    ``check`` passes (replace_wait_s below it). Both waits now end replace_wait_s after
    the run began, and the node is DOWN with why, before ResumeTimeout."""
    run.service.destroy_polls = None  # its node never acts on the destroy
    assert run("resume", "c1") == 0
    assert run("suspend", "c1") == 0
    clock = [0.0]
    other = NodeLocks(str(run.lock))  # another run, holding c1 for 50 s

    def wait(self: NodeLocks) -> None:
        clock[0] += 1
        if clock[0] >= 50:
            other.close()

    monkeypatch.setattr(nodelock.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(nodelock.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(NodeLocks, "wait", wait)
    assert other.try_acquire(["c1"]) == ["c1"]
    assert run("resume", "c1") == 1
    assert clock[0] <= 60  # replace_wait_s, the default
    assert run.scontrol.down == {
        "c1": "ws: node c1: its old workspace c1 was still being destroyed after 60 s (STOPPING)"
    }
    assert "waiting up to 10 s for the old workspaces of the nodes to be destroyed" in run.text()
