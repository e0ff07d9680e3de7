"""ws-slurm against a real service with a fake node: the creates the service accepts (the
user-data passes its cloud-config checks), one cluster per job placed all-or-nothing,
suspend and resume-fail leaving nothing, idempotent retries, and the faults: what is
marked DOWN in Slurm (a fake scontrol records it) and why."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.harness import Site, wait_for
from workspace.client import Client
from workspace.slurm import cli
from workspace.slurm.hostlist import expand_all
from workspace.slurm.resumefile import JOB_ENV
from workspace.slurm.scontrol import Scontrol, reason_text
from workspace.v1 import clusters_pb2, common_pb2, workspaces_pb2

WS = common_pb2.WorkspaceState
MAPPING = """
[[node]]
feature = "huge"
image = "slurm"
memory_mib = 65536

[[node]]
feature = "nosd"
image = "slurm"
cpus = 1
memory_mib = 512
user_data = '''#cloud-config
bootcmd:
  - [systemctl, mask, slurmd]
'''

[[node]]
feature = "ghost"
image = "no-such-image"

[[node]]
names = "c[1-8]"
image = "slurm"
cpus = 1
memory_mib = 1024
"""


class RecordingScontrol(Scontrol):
    def __init__(self) -> None:
        super().__init__("scontrol-not-here")
        self.addresses: dict[str, str] = {}
        self.down: dict[str, str] = {}  # node -> reason, as scontrol would set it
        self.powered_down: list[str] = []  # State=POWER_DOWN
        self.forced: list[str] = []  # State=POWER_DOWN_FORCE
        self.node_states: dict[str, str] = {}  # node -> State= (scontrol show node)

    def hostnames(self, exprs: Any) -> list[str]:
        return expand_all(exprs)

    def features(self, nodes: Any) -> dict[str, frozenset[str]]:
        return {n: frozenset() for n in nodes}

    def set_addresses(self, addresses: Any, tries: int = 3) -> list[str]:
        self.addresses.update(addresses)
        return []

    def set_down(self, nodes: Any, reason: str, tries: int = 3) -> bool:
        self.down.update({n: reason_text(reason) for n in nodes})
        self.node_states.update({n: "DOWN+CLOUD" for n in nodes})
        return True

    def power_down(self, nodes: Any, tries: int = 3, *, force: bool = False) -> bool:
        (self.forced if force else self.powered_down).extend(nodes)
        return True

    def states(self, nodes: Any) -> dict[str, str] | None:
        return {n: self.node_states.get(n, "IDLE+CLOUD") for n in nodes}


class Slurm:
    def __init__(self, site: Site, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.site = site
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.log = tmp / "ws-slurm.log"
        (tmp / "nodes.toml").write_text(MAPPING)
        self.config = tmp / "slurm.toml"
        self.config.write_text(
            f'service = "{site.address}"\ncontroller = "10.213.0.1"\n'
            f'mapping_file = "nodes.toml"\nlog_file = "{self.log}"\n'
            f'lock_file = "{tmp / "nodes.lock"}"\n'
        )
        self.client = Client(site.address)
        self.scontrol = RecordingScontrol()
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # set: a reboot (resumefile.py)
        for name in JOB_ENV:  # set: a job's shell, never a reboot
            monkeypatch.delenv(name, raising=False)

    def __call__(self, *argv: str, jobs: list[dict[str, Any]] | None = None) -> int:
        if jobs is None:
            self.monkeypatch.delenv("SLURM_RESUME_FILE", raising=False)
        else:
            f = self.tmp / "resume.json"
            f.write_text(json.dumps({"all_nodes_resume": "", "jobs": jobs}))
            self.monkeypatch.setenv("SLURM_RESUME_FILE", str(f))
        return cli.main(["--config", str(self.config), *argv], None, self.scontrol)

    def live(self) -> dict[str, common_pb2.Workspace]:
        return {w.name: w for w in self.client.list_workspaces()}


@pytest.fixture
def slurm(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Slurm]:
    site.stubs.network()
    site.stubs.import_image("slurm", context="nocloud")
    # Workspaces named c8 (a lone node) or slurm-*-c8-0 (a job's member) fail to start.
    site.add_agent("node1", cpus=8, memory_mib=4096, fake={"fail_create": ["c8", "*-c8-0"]})
    s = Slurm(site, tmp_path, monkeypatch)
    try:
        yield s
    finally:
        s.client.close()


def test_a_two_node_job_is_one_cluster_and_suspend_removes_it(slurm: Slurm) -> None:
    jobs = [{"job_id": 42, "nodes_resume": "c[1-2]", "features": None}]
    assert slurm("resume", "c[1-2]", jobs=jobs) == 0, slurm.log.read_text()
    live = slurm.live()
    assert set(live) == {"slurm-42-c1-0", "slurm-42-c2-0"}
    (cluster,) = slurm.client.list_clusters()
    assert cluster.name == "slurm-42"
    assert {m.role for m in cluster.members} == {"c1", "c2"}
    for name in live:
        slurm.site.stubs.wait_state(name, WS.WORKSPACE_STATE_RUNNING)
    assert slurm.scontrol.addresses == {w.role: w.nics[0].ip for w in live.values()}
    # Slurm retries: nothing new.
    assert slurm("resume", "c[1-2]", jobs=jobs) == 0
    assert set(slurm.live()) == set(live)
    assert len(slurm.client.list_clusters()) == 1

    assert slurm("suspend", "c[1-2]") == 0
    wait_for(lambda: not slurm.live(), what="the workspaces to go")
    wait_for(
        lambda: not slurm.client.list_clusters(),
        what="the cluster to be TERMINATED",
    )
    # Powered up again for the same (requeued) job: a new cluster.
    assert slurm("resume", "c[1-2]", jobs=jobs) == 0, slurm.log.read_text()
    assert set(slurm.live()) == {"slurm-42-1-c1-0", "slurm-42-1-c2-0"}
    assert slurm("suspend", "c[1-2]") == 0


def test_lone_nodes_and_resume_fail(slurm: Slurm) -> None:
    assert slurm("resume", "c3,c4") == 0, slurm.log.read_text()
    assert set(slurm.live()) == {"c3", "c4"}
    assert slurm("resume-fail", "c[3-4]") == 0
    wait_for(lambda: not slurm.live(), what="the workspaces to go")
    assert slurm("suspend", "c[3-4]") == 0
    assert "suspend: nodes c[3-4] have no workspace; nothing to do" in slurm.log.read_text()


def test_a_job_that_does_not_fit_leaves_nothing(slurm: Slurm) -> None:
    # Two 1 GiB nodes fit, five do not: the cluster is refused whole.
    jobs = [{"job_id": 7, "nodes_resume": "c[1-5]"}]
    assert slurm("resume", "c[1-5]", jobs=jobs) == 1
    assert slurm.live() == {}
    assert slurm.client.list_clusters() == []
    text = slurm.log.read_text()
    assert "job 7: the service refused the create" in text
    # A feature mapped to more memory than the node has.
    jobs = [{"job_id": 8, "nodes_resume": "c[1-2]", "features": "huge"}]
    assert slurm("resume", "c[1-2]", jobs=jobs) == 1
    assert slurm.live() == {}
    assert slurm.client.list_clusters(include_terminated=False) == []


def test_unmapped_nodes_create_nothing_for_their_job(slurm: Slurm) -> None:
    jobs = [{"job_id": 9, "nodes_resume": "c1,gpu1"}]
    assert slurm("resume", "c1,gpu1", jobs=jobs) == 1
    assert slurm.live() == {}
    assert slurm.client.list_clusters(include_terminated=True) == []
    assert "Slurm node gpu1 (features: none) maps to no image" in slurm.log.read_text()
    # gpu1 is DOWN with why, at once (its job is requeued); c1 is only powered down, by
    # POWER_DOWN_FORCE (a plain POWER_DOWN leaves it POWERING_UP until ResumeTimeout).
    assert slurm.scontrol.down == {
        "gpu1": "ws: node gpu1 (features: none) maps to no image in the mapping file"
    }
    assert slurm.scontrol.powered_down == ["gpu1"]
    assert slurm.scontrol.forced == ["c1"]
    # If Slurm still ran resume-fail for c1, it would not say "did not register".
    assert slurm("resume-fail", "c1") == 0
    assert slurm.scontrol.down["c1"] == "ws: resume made no workspace for it (see the ws-slurm log)"


def test_a_refused_resume_marks_its_nodes_down_with_the_services_reason(slurm: Slurm) -> None:
    # More nodes than the node has memory for: the service refuses the cluster whole.
    jobs = [{"job_id": 7, "nodes_resume": "c[1-5]"}]
    assert slurm("resume", "c[1-5]", jobs=jobs) == 1
    assert slurm.live() == {}
    assert set(slurm.scontrol.down) == {"c1", "c2", "c3", "c4", "c5"}
    reason = slurm.scontrol.down["c1"]
    assert reason.startswith("ws: job 7: the service refused: "), reason
    assert "have too little free memory" in reason, reason
    assert slurm.scontrol.powered_down == ["c1", "c2", "c3", "c4", "c5"]
    # An image the service does not know.
    slurm.scontrol.features = lambda nodes: {n: frozenset({"ghost"}) for n in nodes}  # type: ignore[method-assign]
    assert slurm("resume", "c6") == 1
    assert slurm.live() == {}
    assert slurm.scontrol.down["c6"].startswith("ws: node c6: the service refused: ")
    assert "no-such-image" in slurm.scontrol.down["c6"]


def test_resume_for_nodes_that_exist_duplicates_nothing(slurm: Slurm) -> None:
    assert slurm("resume", "c1") == 0
    first = slurm.live()["c1"]
    # Again alone, then as part of a job with a new node: c1 is not made again.
    assert slurm("resume", "c1") == 0
    jobs = [{"job_id": 3, "nodes_resume": "c[1-2]"}]
    assert slurm("resume", "c[1-2]", jobs=jobs) == 0, slurm.log.read_text()
    live = slurm.live()
    assert set(live) == {"c1", "c2"}
    assert live["c1"].id == first.id
    assert slurm.client.list_clusters() == []  # only c2 was new: a lone workspace
    text = slurm.log.read_text()
    assert "job 3: node c1 already has workspace c1" in text
    assert slurm.scontrol.down == {}


def assert_resumed_anew(slurm: Slurm, old: workspaces_pb2.Workspace) -> None:
    """``ws-slurm resume c1`` replaced the workspace ``old``: the node has a new one,
    RUNNING at the address slurmctld was told, and ``old`` is gone."""
    assert slurm("resume", "c1") == 0, slurm.log.read_text()
    new = slurm.live()["c1"]
    assert new.id != old.id
    assert slurm.site.stubs.get(old.id).state == WS.WORKSPACE_STATE_TERMINATED
    slurm.site.stubs.wait_state(new.id, WS.WORKSPACE_STATE_RUNNING)
    assert slurm.scontrol.addresses["c1"] == new.nics[0].ip


def test_a_reboot_slurm_asks_for_makes_a_running_node_anew(slurm: Slurm) -> None:
    """``sbatch --reboot`` on an up node: slurmctld runs resume with SLURM_JOB_ID and no
    resume file; the RUNNING workspace is replaced (its name waited for), not kept."""
    assert slurm("resume", "c1") == 0, slurm.log.read_text()
    old = slurm.site.stubs.wait_state("c1", WS.WORKSPACE_STATE_RUNNING)
    slurm.monkeypatch.setenv("SLURM_JOB_ID", "31")
    assert_resumed_anew(slurm, old)
    assert slurm.scontrol.down == {}


def test_suspend_for_unknown_nodes_is_one_line_and_exit_0(slurm: Slurm) -> None:
    assert slurm("resume", "c1") == 0
    assert slurm("suspend", "c[1-8],zz[1-100]") == 0
    wait_for(lambda: not slurm.live(), what="c1 to go")
    lines = [line for line in slurm.log.read_text().splitlines() if "no workspace" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith("suspend: nodes c[2-8],zz[1-100] have no workspace; nothing to do")
    assert slurm.scontrol.down == {}


def test_a_workspace_that_fails_to_boot_marks_its_node_down_with_its_reason(
    slurm: Slurm,
) -> None:
    jobs = [{"job_id": 12, "nodes_resume": "c[7-8]"}]
    assert slurm("resume", "c[7-8]", jobs=jobs) == 0  # accepted: booting is Slurm's wait
    failed = slurm.site.stubs.wait_state("slurm-12-c8-0", WS.WORKSPACE_STATE_FAILED)
    slurm.site.stubs.wait_state("slurm-12-c7-0", WS.WORKSPACE_STATE_RUNNING)
    # ResumeTimeout passes (c8 never registers; c7 waits with it): Slurm runs resume-fail.
    assert slurm("resume-fail", "c[7-8]") == 0
    wait_for(lambda: not slurm.live(), what="the job's workspaces to go")
    assert slurm.scontrol.down == {
        "c8": reason_text(f"workspace slurm-12-c8-0 FAILED: {failed.reason}"),
        "c7": "ws: did not register in ResumeTimeout (workspace slurm-12-c7-0 was RUNNING)",
    }
    assert "injected failure" in slurm.scontrol.down["c8"]
    text = slurm.log.read_text()
    assert "resume-fail: c8 marked DOWN in Slurm: workspace slurm-12-c8-0 FAILED" in text


def test_a_cluster_state_is_terminated_after_all_members_are_suspended(slurm: Slurm) -> None:
    jobs = [{"job_id": 11, "nodes_resume": "c[5-6]"}]
    assert slurm("resume", "c[5-6]", jobs=jobs) == 0
    assert slurm("suspend", "c5") == 0
    assert slurm("suspend", "c6") == 0
    clusters = wait_for(
        lambda: [
            c
            for c in slurm.client.list_clusters(include_terminated=True)
            if c.state == clusters_pb2.CLUSTER_STATE_TERMINATED
        ],
        what="the cluster to be TERMINATED",
    )
    assert clusters[0].name == "slurm-11"


def test_a_rules_own_cloud_config_is_accepted_by_the_service(slurm: Slurm) -> None:
    """The host test's node that boots but never registers (slurmd masked at boot)."""
    slurm.scontrol.features = lambda nodes: {n: frozenset({"nosd"}) for n in nodes}  # type: ignore[method-assign]
    assert slurm("resume", "c5") == 0, slurm.log.read_text()
    assert set(slurm.live()) == {"c5"}
    assert slurm("suspend", "c5") == 0


def test_a_suspend_that_cannot_destroy_marks_the_node_down_and_a_later_run_cleans_up(
    slurm: Slurm,
) -> None:
    assert slurm("resume", "c1") == 0
    assert slurm("resume", "c2") == 0
    good = slurm.config.read_text()
    slurm.config.write_text(good.replace(slurm.site.address, "unix:/nonexistent/ws.sock"))
    assert slurm("suspend", "c1") == 3
    # The VM is left: the node is DOWN with why, so nobody resumes onto it unawares.
    assert set(slurm.live()) == {"c1", "c2"}
    reason = slurm.scontrol.down["c1"]
    # Its cause first, the address once (it was "the workspace service cannot be reached:
    # cannot reach the workspace service at unix:...: connect failed: ...").
    assert reason == ("ws: suspend could not check for its workspace: service unreachable: "
                      "No such file or directory at unix:/nonexistent/ws.sock"), reason  # fmt: skip
    # Slurm has powered c1 down (SuspendTimeout passed); c2 is powering up again. The next
    # run of any kind, here a suspend of another node, destroys c1's leftover, not c2's.
    slurm.config.write_text(good)
    slurm.scontrol.node_states = {
        "c1": "DOWN+CLOUD+POWERED_DOWN",
        "c2": "IDLE+CLOUD+POWERED_DOWN+POWERING_UP",
    }
    assert slurm("suspend", "c5") == 0
    wait_for(lambda: set(slurm.live()) == {"c2"}, what="c1's leftover to go")
    assert "node c1 is powered down in Slurm but still has a workspace" in slurm.log.read_text()


def test_resume_replaces_a_stopped_or_failed_workspace(slurm: Slurm) -> None:
    """A node whose workspace is STOPPED (a project's lease ran out with STOP) or FAILED
    gets a new one: reusing it would leave the node to fail at ResumeTimeout."""
    assert slurm("resume", "c1") == 0
    old = slurm.site.stubs.wait_state("c1", WS.WORKSPACE_STATE_RUNNING)
    slurm.client.stop_workspace(old.id)
    slurm.site.stubs.wait_state(old.id, WS.WORKSPACE_STATE_STOPPED)
    assert_resumed_anew(slurm, old)
    # c8's workspaces fail to start (the fake driver): resumed again, it gets a new one.
    assert slurm("resume", "c8") == 0
    failed = slurm.site.stubs.wait_state("c8", WS.WORKSPACE_STATE_FAILED)
    assert slurm("resume", "c8") == 0, slurm.log.read_text()
    assert slurm.live()["c8"].id != failed.id
    assert slurm.site.stubs.get(failed.id).state == WS.WORKSPACE_STATE_TERMINATED
    text = slurm.log.read_text()
    assert "node c1: workspace c1 is STOPPED" in text, text
    assert "node c8: workspace c8 is FAILED" in text, text
    assert slurm.scontrol.down == {}


def test_a_quick_re_resume_waits_for_the_old_workspace_to_go(slurm: Slurm) -> None:
    """Resumed again while its old workspace is still being destroyed: resume waits for
    it to end (its name is taken until then) instead of being refused."""
    assert slurm("resume", "c1") == 0
    old = slurm.site.stubs.wait_state("c1", WS.WORKSPACE_STATE_RUNNING)
    # Without its agent the destroy is accepted but cannot finish yet.
    slurm.site.stop_agent("node1")
    assert slurm("suspend", "c1") == 0
    assert slurm.site.stubs.get(old.id).state != WS.WORKSPACE_STATE_TERMINATED
    done: list[int] = []
    run = threading.Thread(target=lambda: done.append(slurm("resume", "c1")))
    run.start()
    try:
        wait_for(
            lambda: done or "waiting up to" in slurm.log.read_text(),
            what="resume to wait for the old workspace",
        )
        assert not done, slurm.log.read_text()
        slurm.site.add_agent("node1", cpus=8, memory_mib=4096)
    finally:
        run.join(timeout=120)
    assert done == [0], slurm.log.read_text()
    new = slurm.live()["c1"]
    assert new.id != old.id
    assert slurm.site.stubs.get(old.id).state == WS.WORKSPACE_STATE_TERMINATED
    assert slurm.scontrol.down == {}


def test_a_node_whose_vmm_node_went_silent_gets_a_new_workspace_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VMM node under a Slurm node's workspace dies. Until node_grace_s the service
    keeps the workspace RUNNING, but says its node is silent (node_silent_since); resume
    then destroys it and makes the node anew on another node, instead of keeping it and
    leaving Slurm to wait its whole ResumeTimeout."""
    site = Site(tmp_path / "site", heartbeat_interval_s=1, node_grace_s=20)
    s = None
    try:
        site.stubs.network()
        site.stubs.import_image("slurm", context="nocloud")
        site.add_agent("node1", cpus=8, memory_mib=4096)
        s = Slurm(site, tmp_path, monkeypatch)
        assert s("resume", "c1") == 0
        old = site.stubs.wait_state("c1", WS.WORKSPACE_STATE_RUNNING)
        assert not s.client.get_workspace(old.id).HasField("node_silent_since")
        site.add_agent("node2", cpus=8, memory_mib=4096)
        site.stop_agent("node1")  # its heartbeats stop: the node "died"
        client = s.client
        silent = wait_for(
            lambda: (w := client.get_workspace(old.id)).HasField("node_silent_since") and w,
            timeout_s=60,
            what="the service to say c1's node is silent",
        )
        assert silent.state == WS.WORKSPACE_STATE_RUNNING  # not LOST yet
        assert old.id in {
            w.id for w in s.client.list_workspaces() if w.HasField("node_silent_since")
        }
        assert s("resume", "c1") == 0, s.log.read_text()
        new = s.live()["c1"]
        assert new.id != old.id and new.node == "node2"
        assert site.stubs.get(old.id).state == WS.WORKSPACE_STATE_TERMINATED
        assert "its node node1 has not reported since" in s.log.read_text()
        assert s.scontrol.down == {}
    finally:
        if s is not None:
            s.client.close()
        site.close()
