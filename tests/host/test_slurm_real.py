"""Real Slurm on real VMs: Debian's slurmctld bursts onto workspaces through ws-slurm.

A one-node local libvirt site, the Slurm appliance pushed by a batch user, slurmctld in
the site's network namespace with cloud nodes whose ResumeProgram, SuspendProgram and
ResumeFailProgram run ws-slurm (tests/host/slurm_site.py):

* a job on nodes that cannot be placed (feature ``huge`` maps to more memory than the
  node has): ws-slurm's resume is refused and creates nothing, and marks the nodes DOWN
  with the service's reason at once (``sinfo -R``); the job is requeued, not lost;
  ``scontrol update State=RESUME`` returns the nodes;
* a node whose workspace boots but whose slurmd never registers (feature ``nosd``: slurmd
  masked): after the partition's short ResumeTimeout Slurm runs ResumeFailProgram, which
  destroys the workspace and marks the node DOWN with ``ws: did not register ...``;
* ``sbatch -N 2 --wrap 'srun hostname'``: two workspaces boot (one cluster), their slurmd
  register (configless, with the node name ws-slurm gave them, authenticated by munge
  with the key ws-slurm delivered), the job's output lists both hostnames; after
  SuspendTime the workspaces are destroyed and Slurm shows the nodes powered down.

The site runs the mode the README recommends: AuthType=auth/munge (munged on this host
with a key of the test's) and configless slurmd. The other mode (``auth/none``,
slurm.conf written into the guests: the user-data is checked in
tests/unit/test_slurm_settings.py) booted real guests here too until session 6, on a
site of its own; benchmarks/slurm_burst.py still runs it.

VMs boot only under ``flock /tmp/ws-realvm.lock`` (held for the module: Slurm decides
when they boot). ``WS_KEEP_SITE=1`` keeps the directory (logs) afterwards.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator

import pytest

from images import cloud_slurm
from images.cloud import CloudAppliance
from tests.host.slurm_site import (
    DUD_RESUME_TIMEOUT_S,
    GATEWAY,
    SUSPEND_TIME_S,
    SlurmSite,
    wait,
)

# Above JOB_TIMEOUT_S: a job that does not end fails with the site's diagnostics.
pytestmark = [pytest.mark.host, pytest.mark.timeout(1200)]

LOCK = "/tmp/ws-realvm.lock"
JOB_TIMEOUT_S = 900.0  # two cloud-init boots at once under TCG on two shared cores


@pytest.fixture(scope="module")
def vm_lock() -> Iterator[None]:
    """The host's real-VM lock, held for the module (Slurm decides when VMs boot)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def image() -> CloudAppliance:
    return cloud_slurm.build()


@pytest.fixture(scope="module")
def site(vm_lock: None, image: CloudAppliance) -> Iterator[SlurmSite]:
    """AuthType=auth/munge; configless slurmd; the munge key in the user-data."""
    s = SlurmSite(keep=bool(os.environ.get("WS_KEEP_SITE")), auth="munge")
    try:
        s.up(image.manifest)
        try:
            s.start_slurmctld()
        except FileExistsError as exc:
            pytest.skip(str(exc))
        yield s
    finally:
        s.down()


def _returned(site: SlurmSite, nodes: str, names: tuple[str, ...]) -> None:
    """What README "Slurm" tells the admin: State=RESUME; the nodes are idle~ again."""
    site.slurm("scontrol", "update", f"NodeName={nodes}", "State=RESUME")
    for n in names:
        state = wait(
            lambda n=n: "DOWN" not in (s := site.node_state(n)["State"]).split("+") and s,
            60,
            f"{n} to be returned to service",
            poll_s=1.0,
        )
        assert state.startswith("IDLE+") and "POWERED_DOWN" in state.split("+"), state
        assert site.node_reason(n) == ""


def test_a_job_that_cannot_be_placed_marks_its_nodes_down_with_the_reason(
    site: SlurmSite,
) -> None:
    job = site.sbatch("-N", "2", "-p", "big", "--wrap", "hostname")
    try:
        wait(
            lambda: "resume b[1-2]" in site.tail("ws-slurm.log", 200),
            60,
            "Slurm to run ws-slurm resume for b[1-2]",
        )
        wait(
            lambda: all(site.node_reason(n).startswith("ws: ") for n in ("b1", "b2")),
            60,
            "b1, b2 to be DOWN with ws-slurm's reason",
            poll_s=1.0,
        )
        reasons = site.sinfo_reasons()
        # Powered down at once: no POWERING_UP until ResumeTimeout (which would replace
        # the reason with "ResumeTimeout reached" and run ResumeFailProgram).
        for n in ("b1", "b2"):
            wait(
                lambda n=n: "POWERED_DOWN" in site.node_state(n)["State"],
                120,
                f"{n} to be POWERED_DOWN",
            )
            assert site.node_state(n)["State"].startswith("DOWN+")
        # The job is requeued, waiting for its nodes, not lost.
        assert site.job_state(job) == "PENDING"
        text = site.tail("ws-slurm.log", 200)
    except AssertionError:
        print(site.diagnostics())
        raise
    finally:
        site.slurm("scancel", str(job), check=False)
    expected = f"ws: job {job}: the service refused: cannot place cluster slurm-{job}"
    assert reasons["b1"].startswith(expected), reasons
    assert reasons["b2"] == reasons["b1"]
    assert "have too little free memory" in reasons["b1"], reasons
    assert "the service refused the create" in text
    assert "b[1-2] marked DOWN in Slurm" in text
    assert "resume-fail b[1-2]" not in text
    assert site.workspaces() == []
    assert site.clusters() == []
    _returned(site, "b[1-2]", ("b1", "b2"))


def test_a_node_that_never_registers_is_down_with_the_reason_and_leaves_nothing(
    site: SlurmSite,
) -> None:
    job = site.sbatch("-N", "1", "-p", "dud", "--wrap", "hostname")
    try:
        wait(
            lambda: [w for w in site.workspaces() if w["name"] == "d1"],
            120,
            "d1's workspace",
        )
        wait(
            lambda: "resume-fail d1" in site.tail("ws-slurm.log", 200),
            DUD_RESUME_TIMEOUT_S + 180,
            "Slurm to run ResumeFailProgram for d1",
        )
        wait(
            lambda: site.node_reason("d1").startswith("ws: "),
            60,
            "d1 to be DOWN with ws-slurm's reason",
            poll_s=1.0,
        )
        reason = site.sinfo_reasons()["d1"]
        state = site.node_state("d1")["State"]
        wait(lambda: site.workspaces() == [], 120, "d1's workspace to go")
        job_state = site.job_state(job)
    except AssertionError:
        print(site.diagnostics())
        raise
    finally:
        site.slurm("scancel", str(job), check=False)
    assert reason.startswith("ws: did not register in ResumeTimeout (workspace d1 was "), reason
    assert state.startswith("DOWN"), state
    assert job_state == "PENDING"  # requeued by Slurm, not lost
    assert "resume-fail: node d1: workspace d1" in site.tail("ws-slurm.log", 200)
    _returned(site, "d1", ("d1",))


def test_sbatch_bursts_onto_two_workspaces_that_are_destroyed_when_idle(
    site: SlurmSite,
) -> None:
    submitted = time.monotonic()
    job = site.sbatch("-N", "2", "-p", "cloud", "-o", "/tmp/job-%j.out", "--wrap",
                      "srun hostname")  # fmt: skip
    try:
        wait(lambda: len(site.workspaces()) == 2, 120, "two workspaces")
        state = wait(
            lambda: (s := site.job_state(job)) in ("COMPLETED", "FAILED", "CANCELLED") and s,
            JOB_TIMEOUT_S,
            f"job {job} to end",
            poll_s=3.0,
        )
        ended = time.monotonic() - submitted
        assert state == "COMPLETED", site.diagnostics()
        members = {str(w["name"]): w for w in site.workspaces()}
        assert set(members) == {f"slurm-{job}-c1-0", f"slurm-{job}-c2-0"}
        # The batch script ran on the first node: its output file is there.
        out = site.ws("exec", f"slurm-{job}-c1-0", "--", "cat", f"/tmp/job-{job}.out")
        assert sorted(out.split()) == ["c1", "c2"], out
        # Configless: slurmd asked the controller for its configuration, as the node
        # ws-slurm named it.
        conf = site.ws("exec", f"slurm-{job}-c2-0", "--", "cat", "/etc/default/slurmd")
        assert f"--conf-server {GATEWAY}:6817 -N c2" in conf, conf
        for node in ("c1", "c2"):
            shown = site.node_state(node)
            ws = members[f"slurm-{job}-{node}-0"]
            nics = ws["nics"]
            assert isinstance(nics, list)
            assert shown["NodeAddr"] == nics[0]["ip"]
        print(f"\njob {job}: submit to end {ended:.1f} s")
    except AssertionError:
        print(site.diagnostics())
        raise

    # Idle for SuspendTime: Slurm suspends the nodes, ws-slurm destroys the workspaces.
    try:
        wait(lambda: site.workspaces() == [], SUSPEND_TIME_S + 240, "the workspaces to go")
        wait(
            lambda: all("POWERED_DOWN" in site.node_state(n)["State"] for n in ("c1", "c2")),
            120,
            "c1, c2 to be POWERED_DOWN",
        )
    except AssertionError:
        print(site.diagnostics())
        raise
    sinfo = site.slurm("sinfo", "-h", "-p", "cloud", "-o", "%t %N").stdout
    assert "idle~" in sinfo or "POWERED_DOWN" in sinfo.upper() or "~" in sinfo, sinfo
    assert site.clusters() == []
    log = site.tail("ws-slurm.log", 400)
    assert "suspend: node c1: workspace" in log and "suspend: node c2: workspace" in log
