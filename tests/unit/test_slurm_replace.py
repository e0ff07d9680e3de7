"""ws-slurm resume for nodes whose old workspace cannot serve or is not gone yet: a
FAILED, LOST, STOPPED or PAUSED workspace is destroyed and replaced, a destroy still
under way is waited for (``replace_wait_s``), and what Slurm is told when that cannot be
done."""

from __future__ import annotations

from tests.unit.test_slurm_program import Run, run
from workspace import errors
from workspace.slurm.reasons import fail_reason
from workspace.v1 import common_pb2

__all__ = ["run"]  # the fixture, used here

WS = common_pb2.WorkspaceState
DS = common_pb2.DesiredState


def ws_of(run: Run, name: str) -> common_pb2.Workspace:
    (ws,) = [w for w in run.service.live() if w.name == name]
    return ws


def test_a_workspace_that_cannot_serve_is_replaced(run: Run) -> None:
    jobs = [{"job_id": 4, "nodes_resume": "c[5-6]"}]
    assert run("resume", "c[1-4]") == 0
    assert run("resume", "c[5-6]", jobs=jobs) == 0
    old = {n: ws_of(run, n) for n in ("c1", "c2", "c3", "c4", "slurm-4-c5-0")}
    old["c1"].state = WS.WORKSPACE_STATE_LOST  # its VMM node died
    old["c1"].reason = "node node1 stopped reporting"
    old["c2"].state = WS.WORKSPACE_STATE_FAILED
    old["c3"].state = WS.WORKSPACE_STATE_STOPPED  # the project's lease ran out (STOP)
    old["c3"].desired_state = DS.DESIRED_STATE_STOPPED
    old["slurm-4-c5-0"].state = WS.WORKSPACE_STATE_PAUSED
    # c4 and c6 are still booting: kept (Slurm may run resume twice).
    assert run("resume", "c[1-6]", jobs=[{"job_id": 9, "nodes_resume": "c[1-6]"}]) == 0, run.text()
    for name in ("c1", "c2", "c3", "slurm-4-c5-0"):
        assert old[name].state == WS.WORKSPACE_STATE_TERMINATED, name
    assert ws_of(run, "c4").id == old["c4"].id
    # The job's new nodes are made together, one cluster (its name counts the nodes'
    # earlier workspaces: slurm-9-1); c4 and c6 keep theirs.
    assert run.names() == [
        "c4",
        "slurm-4-c6-0",
        "slurm-9-1-c1-0",
        "slurm-9-1-c2-0",
        "slurm-9-1-c3-0",
        "slurm-9-1-c5-0",
    ]
    text = run.text()
    assert (
        "node c1: workspace c1 is LOST (node node1 stopped reporting): destroying it to make "
        "a new one" in text
    )
    assert "node c3: workspace c3 is STOPPED" in text
    assert "node c5: workspace slurm-4-c5-0 is PAUSED" in text
    assert run.scontrol.down == {}


def test_resume_waits_for_a_destroy_still_under_way(run: Run) -> None:
    run.service.destroy_polls = 2
    assert run("resume", "c1") == 0
    old = ws_of(run, "c1")
    assert run("suspend", "c1") == 0
    assert old.state == WS.WORKSPACE_STATE_STOPPING  # the destroy is under way
    # Resumed again at once: the name c1 is taken until the old one is TERMINATED.
    assert run("resume", "c1") == 0, run.text()
    assert old.state == WS.WORKSPACE_STATE_TERMINATED
    assert ws_of(run, "c1").id != old.id
    assert "waiting up to 60 s for the old workspaces of the nodes to be destroyed: c1" in (
        run.text()
    )
    assert run.scontrol.down == {}


def test_an_old_workspace_that_does_not_end_in_time_is_told_to_slurm(run: Run) -> None:
    run.config.write_text(run.config.read_text() + "replace_wait_s = 0\n")
    run.service.destroy_polls = None  # its node never acts on the destroy
    assert run("resume", "c1") == 0
    assert run("suspend", "c1") == 0
    jobs = [{"job_id": 3, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 1
    # Nothing of the job is made (all or none); c1 DOWN with why, c2 only powered down.
    assert run.names() == ["c1"]
    assert run.service.live()[0].desired_state == DS.DESIRED_STATE_TERMINATED
    assert run.scontrol.down == {
        "c1": "ws: node c1: its old workspace c1 was still being destroyed after 0 s (STOPPING)"
    }
    assert run.scontrol.powered_down == ["c1"]
    assert run.scontrol.forced == ["c2"]
    assert "job 3: node c1: its old workspace c1 was still being destroyed" in run.text()


def test_a_dead_workspace_that_cannot_be_destroyed_is_told_to_slurm(run: Run) -> None:
    assert run("resume", "c1") == 0
    old = ws_of(run, "c1")
    old.state = WS.WORKSPACE_STATE_FAILED
    run.service.undestroyable[old.id] = errors.FailedPrecondition("it is being saved")
    assert run("resume", "c1") == 1
    assert run.scontrol.down == {
        "c1": "ws: node c1: workspace c1 is FAILED and cannot be destroyed: it is being saved"
    }
    assert run.scontrol.powered_down == ["c1"]
    # The service goes away while replacing: the node DOWN as for any unreachable service.
    run.service.undestroyable[old.id] = errors.Unavailable("connection refused")
    assert run("resume", "c1") == 3
    assert run.scontrol.down["c1"].startswith("ws: service unreachable")


def test_a_workspace_on_a_node_that_stopped_reporting_is_replaced(run: Run) -> None:
    """Its VMM node died moments ago: the service does not call the workspace LOST until
    node_grace_s, but says its node is silent. Resume replaces it then and there rather
    than keep it and leave the node to fail at ResumeTimeout (before: `already has
    workspace`, and the job waited the whole ResumeTimeout)."""
    assert run("resume", "c[1-2]") == 0
    old = ws_of(run, "c1")
    old.state = WS.WORKSPACE_STATE_RUNNING
    old.node = "node7"
    old.node_silent_since.FromSeconds(1_796_000_000)  # 2026-11-30T00:53:20Z
    kept = ws_of(run, "c2")
    kept.state = WS.WORKSPACE_STATE_RUNNING
    assert run("resume", "c[1-2]") == 0, run.text()
    assert old.state == WS.WORKSPACE_STATE_TERMINATED
    new = ws_of(run, "c1")
    assert new.id != old.id
    assert ws_of(run, "c2").id == kept.id
    text = run.text()
    assert (
        "node c1: workspace c1 is RUNNING (its node node7 has not reported since "
        "2026-11-30T00:53:20Z): destroying it to make a new one"
    ) in text
    assert run.scontrol.addresses["c1"] == new.nics[0].ip
    assert run.scontrol.down == {}


def test_a_silent_nodes_workspace_not_gone_in_time_is_told_with_why(run: Run) -> None:
    """Its destroy ends only when the service declares the silent node DOWN (node_grace_s):
    if that is later than replace_wait_s, Slurm is told at once, and why."""
    run.config.write_text(run.config.read_text() + "replace_wait_s = 0\n")
    run.service.destroy_polls = None
    assert run("resume", "c1") == 0
    old = ws_of(run, "c1")
    old.state = WS.WORKSPACE_STATE_RUNNING
    old.node = "node7"
    old.node_silent_since.FromSeconds(1_796_000_000)
    assert run("resume", "c1") == 1
    assert run.scontrol.down == {
        "c1": "ws: node c1: its old workspace c1 was still being destroyed after 0 s "
        "(STOPPING; its node node7 has not reported since 2026-11-30T00:53:20Z)"
    }
    # A workspace resume-fail finds on a silent node: its reason says so.
    silent = common_pb2.Workspace(name="c3", node="node7", state=WS.WORKSPACE_STATE_RUNNING)
    silent.node_silent_since.FromSeconds(1_796_000_000)
    assert fail_reason("c3", [silent]) == (
        "did not register in ResumeTimeout (workspace c3 was RUNNING; its node node7 has "
        "not reported since 2026-11-30T00:53:20Z)"
    )


def test_resume_fail_says_why_a_workspace_never_started(run: Run) -> None:
    """A node's workspace placed by preempting backfill waits SCHEDULED (held) until
    the victims stop, which a backfill grace longer than ResumeTimeout outlasts: Slurm's
    reason said only "was SCHEDULED", and the admin looked for a slurmd problem."""
    held = "waiting for 1 preempted workspace(s) to stop"
    run.service.held_reason = held
    assert run("resume", "c3") == 0
    assert f"node c3 is workspace c3 (w10) on node1, address 10.213.0.10 (SCHEDULED: {held})" in (
        run.text()
    )
    assert run("resume-fail", "c3") == 0
    assert run.scontrol.down == {
        "c3": f"ws: did not register in ResumeTimeout (workspace c3 was SCHEDULED; {held})"
    }


def test_a_reboot_slurm_asks_for_makes_the_nodes_anew(run: Run) -> None:
    """``sbatch --reboot`` on nodes that are up: slurmctld runs ResumeProgram with the
    nodes (and the features to boot with, if any) and SLURM_JOB_ID, without a resume
    file, then waits for a slurmd that registers with a new boot time. Keeping the
    running workspaces left the job CONFIGURING until ResumeTimeout and the node DOWN
    with "did not register"."""
    assert run("resume", "c[1-2]") == 0
    old = {n: ws_of(run, n) for n in ("c1", "c2")}
    for ws in old.values():
        ws.state = WS.WORKSPACE_STATE_RUNNING
    run.monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert run("resume", "c[1-2]", "quad") == 0, run.text()
    assert all(ws.state == WS.WORKSPACE_STATE_TERMINATED for ws in old.values())
    # The job's nodes made together (the name counts their earlier workspaces); "quad"
    # is a feature, not a node.
    assert run.names() == ["slurm-12-1-c1-0", "slurm-12-1-c2-0"]
    assert run.scontrol.down == {}
    text = run.text()
    assert "resume c[1-2] (2 node(s), Slurm reboots them for job 12)" in text
    assert (
        "node c1: workspace c1 is RUNNING (Slurm reboots the node for job 12): destroying "
        "it to make a new one" in text
    )
    # A power-up (no SLURM_JOB_ID) of the same nodes keeps what runs.
    run.monkeypatch.delenv("SLURM_JOB_ID")
    assert run("resume", "c[1-2]") == 0
    assert run.names() == ["slurm-12-1-c1-0", "slurm-12-1-c2-0"]


def test_a_resume_by_hand_in_a_slurm_job_is_no_reboot(run: Run) -> None:
    """An admin's shell in an allocation (salloc, srun --pty) has SLURM_JOB_ID too, and no
    resume file: `ws-slurm resume c1 c2` there was read as slurmctld's reboot for that job,
    destroyed c1's running workspace (and the job on it) and took c2 for a feature. A
    job's environment has SLURM_JOB_NODELIST, which slurmctld's for its programs has not:
    the resume is one by hand, and what runs is kept."""
    assert run("resume", "c[1-2]") == 0
    old = {n: ws_of(run, n) for n in ("c1", "c2")}
    for ws in old.values():
        ws.state = WS.WORKSPACE_STATE_RUNNING
    run.monkeypatch.setenv("SLURM_JOB_ID", "77")
    run.monkeypatch.setenv("SLURM_JOB_NODELIST", "login1")
    assert run("resume", "c1", "c2") == 0, run.text()
    assert {n: ws_of(run, n).id for n in ("c1", "c2")} == {n: w.id for n, w in old.items()}
    assert all(ws.state == WS.WORKSPACE_STATE_RUNNING for ws in old.values())
    text = run.text()
    assert (
        "resume c1 c2 (2 node(s); SLURM_JOB_ID 77 is a Slurm job's (SLURM_JOB_NODELIST set): "
        "not a reboot, what runs is kept)" in text
    )
    assert "node c2 already has workspace c2" in text
    assert "destroying" not in text


def test_a_reboot_of_the_sites_own_nodes_is_not_made_into_workspaces(run: Run) -> None:
    """With power saving on, slurmctld (22.05, job_scheduler.c reboot_job_nodes) reboots
    every node through ResumeProgram, the site's own machines too: an admin's
    `sbatch --reboot -w tux1` ran ws-slurm resume tux1 with SLURM_JOB_ID, and ws-slurm
    marked tux1 DOWN with "maps to no image" and powered it down in Slurm (a catch-all
    rule would have made it a workspace and pointed its NodeAddr at the VM). A node that
    is no State=CLOUD node is now only marked DOWN, saying why; the cloud ones of the
    job are made anew as before."""
    run.config.write_text(run.config.read_text().replace("nodes.toml", "all.toml"))
    (run.tmp / "all.toml").write_text('[[node]]\nimage = "slurm"\nmemory_mib = 512\n')
    assert run("resume", "c1") == 0
    ws_of(run, "c1").state = WS.WORKSPACE_STATE_RUNNING
    run.scontrol.node_states = {"tux1": "MIXED+REBOOT_REQUESTED"}  # no CLOUD flag
    run.monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert run("resume", "c1,tux1") == 1
    assert run.names() == ["c1"]  # the cloud node made anew (it alone: a lone workspace)
    assert run.scontrol.down == {
        "tux1": "ws: not rebooted: with power saving on, slurmctld reboots nodes through "
        "ResumeProgram (ws-slurm), which makes only State=CLOUD nodes anew; reboot it yourself"
    }
    assert run.scontrol.powered_down == [] and run.scontrol.forced == []
    assert run.scontrol.addresses.keys() == {"c1"}
    assert (
        "node tux1: Slurm reboots it for job 12, but it is no cloud node "
        "(State=MIXED+REBOOT_REQUESTED): not rebooted" in run.text()
    )
    run.scontrol.node_states = {"tux1": "MIXED+REBOOT_REQUESTED"}  # (the fake set DOWN+CLOUD)
    assert run("resume", "tux1") == 1  # alone: nothing else is done
    assert run.names() == ["c1"]
