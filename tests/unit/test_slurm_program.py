"""ws-slurm resume/suspend/resume-fail against a fake service: grouping by job, the
mapping, idempotency (Slurm retries) and the error paths, through ``cli.main``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from workspace import errors
from workspace.slurm import check, cli
from workspace.slurm.hostlist import expand_all
from workspace.slurm.program import REQUEST_PREFIX, node_of, plan_groups
from workspace.slurm.resumefile import JOB_ENV, Job, ResumeFile
from workspace.slurm.scontrol import Scontrol, reason_text
from workspace.v1 import clusters_pb2, common_pb2, images_pb2

WS = common_pb2.WorkspaceState
DS = common_pb2.DesiredState

MAPPING = """
[[node]]
feature = "huge"
image = "slurm"
memory_mib = 999999

[[node]]
names = "c[1-9]"
image = "slurm"
cpus = 1
memory_mib = 512
"""


OWNER = "slurm"  # ws-slurm's user at the fake service


class FakeService:
    """Workspaces and clusters by request id, a memory capacity, names unique while live."""

    def __init__(self, capacity_mib: int = 4096) -> None:
        self.capacity_mib = capacity_mib
        self.workspaces: list[common_pb2.Workspace] = []
        self.by_request: dict[str, Any] = {}
        self.calls: list[str] = []
        self.unreachable = False
        self.refusal: errors.WorkspaceError | None = None  # raised by every call
        self.next_ip = 10
        # name -> context ("nocloud" takes user-data)
        self.images: dict[str, str] = {"slurm": "nocloud"}
        # A destroy ends after this many get_workspace calls of it (0: at once; None:
        # never, as with a node that does not act); until then it is STOPPING.
        self.destroy_polls: int | None = 0
        self.ending: dict[str, int | None] = {}
        self.undestroyable: dict[str, errors.WorkspaceError] = {}  # id -> its refusal
        # Set: new workspaces are SCHEDULED with this reason (held behind preempted ones).
        self.held_reason = ""

    def _check(self) -> None:
        if self.unreachable:
            raise errors.Unavailable("cannot reach the workspace service at unix:/x.sock")
        if self.refusal is not None:
            raise self.refusal

    def get_image(self, name: str) -> images_pb2.Image:
        self._check()
        if name not in self.images:
            raise errors.NotFound(f"image {name!r} not found")
        return images_pb2.Image(name=name, context=self.images[name])

    def live(self) -> list[common_pb2.Workspace]:
        return [w for w in self.workspaces if w.state != WS.WORKSPACE_STATE_TERMINATED]

    def list_workspaces(
        self, include_terminated: bool = False, *, mine: bool = False
    ) -> list[common_pb2.Workspace]:
        """As the service lists them: ``mine``, only ws-slurm's user's (``OWNER``)."""
        self._check()
        self.calls.append("list")
        listed = self.workspaces if include_terminated else self.live()
        return [w for w in listed if w.owner == OWNER or not mine]

    def _new(self, name: str, memory_mib: int, rid: str, **kw: Any) -> common_pb2.Workspace:
        ws = common_pb2.Workspace(
            id=f"w{self.next_ip}",
            name=name,
            memory_mib=memory_mib,
            request_id=rid,
            state=WS.WORKSPACE_STATE_SCHEDULED
            if self.held_reason
            else WS.WORKSPACE_STATE_PROPAGATING,
            reason=self.held_reason,
            node="node1",
            owner=OWNER,
            **kw,
        )
        ws.nics.add(ip=f"10.213.0.{self.next_ip}")
        self.next_ip += 1
        return ws

    def _fits(self, need: int) -> None:
        used = sum(w.memory_mib for w in self.live())
        if used + need > self.capacity_mib:
            raise errors.ResourceExhausted(f"no node has {need} MiB free")

    def create_workspace(self, image: str, **kw: Any) -> common_pb2.Workspace:
        self._check()
        rid = kw["request_id"]
        self.calls.append(f"create {kw['name']}")
        if rid in self.by_request:
            return self.by_request[rid]
        if any(w.name == kw["name"] and w.owner == OWNER for w in self.live()):
            raise errors.AlreadyExists(f"you already have a workspace named {kw['name']!r}")
        self._fits(kw["memory_mib"])
        ws = self._new(kw["name"], kw["memory_mib"], rid)
        self.workspaces.append(ws)
        self.by_request[rid] = ws
        return ws

    def create_cluster(self, req: clusters_pb2.CreateClusterRequest, /) -> clusters_pb2.Cluster:
        self._check()
        self.calls.append(f"cluster {req.name}")
        if req.request_id in self.by_request:
            prior = self.by_request[req.request_id]
            current = [w for w in self.workspaces if w.cluster == prior.id]
            return clusters_pb2.Cluster(id=prior.id, name=prior.name, members=current)
        self._fits(sum(m.memory_mib for m in req.members))
        cid = f"c{len(self.by_request)}"
        members = [
            self._new(f"{req.name}-{m.role}-0", m.memory_mib, "x", cluster=cid, role=m.role)
            for m in req.members
        ]
        self.workspaces.extend(members)
        cluster = clusters_pb2.Cluster(id=cid, name=req.name, members=members)
        self.by_request[req.request_id] = cluster
        return cluster

    def destroy_workspace(self, id: str) -> common_pb2.Workspace:
        self._check()
        self.calls.append(f"destroy {id}")
        if id in self.undestroyable:
            raise self.undestroyable[id]
        for w in self.workspaces:
            if w.id == id:
                w.desired_state = DS.DESIRED_STATE_TERMINATED
                if self.destroy_polls == 0:
                    w.state = WS.WORKSPACE_STATE_TERMINATED
                else:
                    w.state = WS.WORKSPACE_STATE_STOPPING
                    self.ending[id] = self.destroy_polls
                return w
        raise errors.NotFound(f"workspace {id} not found")

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        self._check()
        self.calls.append(f"get {id}")
        for w in self.workspaces:
            if w.id == id:
                polls = self.ending.get(id)
                if polls is not None:
                    self.ending[id] = polls - 1
                    if polls <= 1:
                        w.state = WS.WORKSPACE_STATE_TERMINATED
                        self.ending.pop(id)
                return w
        raise errors.NotFound(f"workspace {id} not found")


class FakeScontrol(Scontrol):
    def __init__(self, features: dict[str, frozenset[str]] | None = None) -> None:
        super().__init__("scontrol-not-here")
        self.node_features = features or {}
        self.addresses: dict[str, str] = {}
        self.down: dict[str, str] = {}  # node -> its reason, as scontrol would set it
        self.powered_down: list[str] = []  # State=POWER_DOWN
        self.forced: list[str] = []  # State=POWER_DOWN_FORCE
        self.node_states: dict[str, str] = {}  # node -> State= of scontrol show node

    def hostnames(self, exprs: Any) -> list[str]:
        return expand_all(exprs)

    def features(self, nodes: Any) -> dict[str, frozenset[str]]:
        return {n: self.node_features.get(n, frozenset()) for n in nodes}

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


class Run:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.service = FakeService()
        self.scontrol = FakeScontrol()
        self.log = tmp / "ws-slurm.log"
        self.lock = tmp / "state" / "nodes.lock"  # its directory made by the first run
        (tmp / "nodes.toml").write_text(MAPPING)
        self.config = tmp / "slurm.toml"
        self.config.write_text(
            f'controller = "10.213.0.1"\nmapping_file = "nodes.toml"\nlog_file = "{self.log}"\n'
            f'lock_file = "{self.lock}"\n'
        )
        monkeypatch.delenv("SLURM_RESUME_FILE", raising=False)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # set: a reboot (resumefile.py)
        for name in JOB_ENV:  # set: a job's shell, never a reboot
            monkeypatch.delenv(name, raising=False)
        # check's own findings about this machine's scontrol: none (tested apart).
        monkeypatch.setattr(check, "NO_PATH_SEARCH", os.environ.get("PATH", ""))
        # As under slurmctld, which passes no environment (check says what it took from one).
        for name in ("WS_SERVICE", "WS_IDENTITY", "WS_TLS_CA", "WS_TLS_CERT", "WS_TLS_KEY",
                     "WS_SITE_DIR"):  # fmt: skip
            monkeypatch.delenv(name, raising=False)

    def __call__(self, *argv: str, jobs: list[dict[str, Any]] | None = None) -> int:
        if jobs is not None:
            f = self.tmp / "resume.json"
            f.write_text(json.dumps({"all_nodes_resume": "", "jobs": jobs}))
            self.monkeypatch.setenv("SLURM_RESUME_FILE", str(f))
        else:
            self.monkeypatch.delenv("SLURM_RESUME_FILE", raising=False)
        return cli.main(
            ["--config", str(self.config), *argv], client=self.service, scontrol=self.scontrol
        )

    def names(self) -> list[str]:
        return sorted(w.name for w in self.service.live())

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(tmp_path, monkeypatch)


def test_lone_nodes_are_workspaces_named_after_them(run: Run) -> None:
    assert run("resume", "c[1-2]") == 0
    assert run.names() == ["c1", "c2"]
    assert all(w.request_id.startswith(REQUEST_PREFIX) for w in run.service.live())
    assert run.scontrol.addresses == {"c1": "10.213.0.10", "c2": "10.213.0.11"}
    assert "resume c[1-2] (2 node(s))" in run.text()


def test_a_jobs_nodes_are_one_cluster(run: Run) -> None:
    jobs = [{"job_id": 17, "nodes_resume": "c[1-2]", "features": None}]
    assert run("resume", "c[1-3]", jobs=jobs) == 0
    assert "cluster slurm-17" in run.service.calls
    assert run.names() == ["c3", "slurm-17-c1-0", "slurm-17-c2-0"]
    assert {node_of(w, "slurm-") for w in run.service.live()} == {"c1", "c2", "c3"}
    assert set(run.scontrol.addresses) == {"c1", "c2", "c3"}
    assert "job 17: cluster slurm-17" in run.text()


def test_resume_again_creates_nothing(run: Run) -> None:
    jobs = [{"job_id": 17, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-3]", jobs=jobs) == 0
    calls = len(run.service.calls)
    assert run("resume", "c[1-3]", jobs=jobs) == 0
    assert run.service.calls[calls:] == ["list"]
    assert len(run.service.live()) == 3
    assert "node c1 already has workspace slurm-17-c1-0" in run.text()


def test_suspend_then_resume_makes_new_workspaces(run: Run) -> None:
    jobs = [{"job_id": 5, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-2],c4", jobs=jobs) == 0
    assert run("suspend", "c[1-2],c4") == 0
    assert run.service.live() == []
    # The same job id and nodes again (a requeued job): fresh request ids, fresh cluster.
    assert run("resume", "c[1-2],c4", jobs=jobs) == 0
    assert run.names() == ["c4", "slurm-5-1-c1-0", "slurm-5-1-c2-0"]


def test_a_node_that_maps_to_no_image_fails_its_job_only(run: Run) -> None:
    jobs = [
        {"job_id": 1, "nodes_resume": "c1,x9"},
        {"job_id": 2, "nodes_resume": "c[2-3]"},
    ]
    assert run("resume", "c[1-3],x9", jobs=jobs) == 1
    assert run.names() == ["slurm-2-c2-0", "slurm-2-c3-0"]
    text = run.text()
    assert "job 1: Slurm node x9 (features: none) maps to no image" in text
    assert "nothing created for job 1" in text
    # The node at fault is DOWN with why (its job is requeued now); its job's other
    # node is only powered down, free for other jobs: POWER_DOWN_FORCE, for a plain
    # POWER_DOWN leaves a POWERING_UP node so until ResumeTimeout (Slurm 22.05).
    assert run.scontrol.down == {
        "x9": "ws: node x9 (features: none) maps to no image in the mapping file"
    }
    assert run.scontrol.powered_down == ["x9"]
    assert run.scontrol.forced == ["c1"]
    assert "x9 marked DOWN in Slurm: node x9 (features: none) maps to no image" in text


def test_features_choose_the_rule(run: Run) -> None:
    # The job asks for "huge": its rule wants more memory than there is, so the whole job
    # is refused and nothing of it exists.
    jobs = [{"job_id": 3, "nodes_resume": "c[1-2]", "features": "huge"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 1
    assert run.names() == []
    assert "job 3: the service refused the create: no node has" in run.text()
    # The node's own features count too (scontrol show node).
    run.scontrol.node_features = {"c5": frozenset({"huge"})}
    assert run("resume", "c5") == 1
    assert run.names() == []


def test_a_jobs_alternative_features_count_only_on_nodes_that_have_them(run: Run) -> None:
    # --constraint="huge|small": Slurm may give the job nodes that are only "small".
    # Such a node is not a "huge" node: it gets its own rule (c[1-9]: 512 MiB), not the
    # huge rule, whose memory no node has (the whole job would be refused, its nodes DOWN).
    run.scontrol.node_features = {"c1": frozenset({"small"}), "c2": frozenset({"small"})}
    jobs = [{"job_id": 4, "nodes_resume": "c[1-2]", "features": "huge|small"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 0
    assert run.names() == ["slurm-4-c1-0", "slurm-4-c2-0"]
    assert {w.memory_mib for w in run.service.live()} == {512}
    assert run.scontrol.down == {}


def test_quota_or_capacity_refusal_leaves_nothing(run: Run) -> None:
    run.service.capacity_mib = 600
    jobs = [{"job_id": 8, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 1
    assert run.names() == []
    assert "job 8: the service refused the create" in run.text()
    reason = "ws: job 8: the service refused: no node has 1024 MiB free"
    assert run.scontrol.down == {"c1": reason, "c2": reason}
    assert run.scontrol.powered_down == ["c1", "c2"]


def test_an_unreachable_service_marks_the_nodes_down(run: Run) -> None:
    run.service.unreachable = True
    assert run("resume", "c[1-2]") == 3
    assert set(run.scontrol.down) == {"c1", "c2"}
    assert "cannot reach the workspace service" in run.scontrol.down["c1"]
    assert run("resume-fail", "c3") == 3
    assert run.scontrol.down["c3"].startswith(
        "ws: did not register in ResumeTimeout; could not clean up: service unreachable"
    )


def test_suspend_of_unknown_nodes_succeeds(run: Run) -> None:
    assert run("suspend", "c[1-9]") == 0
    # One line for them all, not one per node.
    lines = [line for line in run.text().splitlines() if "no workspace" in line]
    assert len(lines) == 1
    assert lines[0].endswith("suspend: nodes c[1-9] have no workspace; nothing to do")
    assert run.scontrol.down == {} and run.scontrol.powered_down == []


def test_resume_fail_destroys_what_resume_made(run: Run) -> None:
    jobs = [{"job_id": 9, "nodes_resume": "c[1-2]"}]
    assert run("resume", "c[1-2]", jobs=jobs) == 0
    run.service.workspaces[0].state = WS.WORKSPACE_STATE_FAILED
    run.service.workspaces[0].reason = "qemu: could not open disk"
    assert run("resume-fail", "c[1-3]") == 0
    assert run.names() == []
    assert "resume-fail: node c2: workspace slurm-9-c2-0" in run.text()
    assert run.scontrol.down == {
        "c1": "ws: workspace slurm-9-c1-0 FAILED: qemu: could not open disk",
        "c2": "ws: did not register in ResumeTimeout (workspace slurm-9-c2-0 was PROPAGATING)",
        "c3": "ws: resume made no workspace for it (see the ws-slurm log)",
    }


def test_other_workspaces_are_left_alone(run: Run) -> None:
    run.service.workspaces.append(
        common_pb2.Workspace(id="mine", name="c1", request_id="user-made")
    )
    assert run("suspend", "c1") == 0
    assert run.names() == ["c1"]


def test_a_project_colleagues_workspaces_named_like_nodes_are_never_touched(run: Run) -> None:
    """A colleague in ws-slurm's project (another Slurm cluster's batch user, say) has a
    workspace named like node c1 with a ws-slurm request id and a cluster member named
    like job 3's node c2. ws-slurm lists only its own (``mine``): resume makes c1 its
    own, and neither suspend nor the cleanup of powered-down nodes destroys theirs
    (they took c1 for the node's and destroyed theirs)."""
    theirs = [
        common_pb2.Workspace(id="b1", name="c1", owner="bob", request_id="ws-slurm-x-0"),
        common_pb2.Workspace(id="b2", name="slurm-3-c2-0", owner="bob", cluster="k1", role="c2"),
    ]
    run.service.workspaces.extend(theirs)
    run.scontrol.node_states = {"c1": "IDLE+CLOUD+POWERED_DOWN", "c2": "IDLE+CLOUD+POWERED_DOWN"}
    assert run("suspend", "c[1-2]") == 0
    assert run("resume", "c1") == 0, run.text()
    run.scontrol.node_states["c1"] = "ALLOCATED+CLOUD"  # up, its job running
    assert run("suspend", "c5") == 0
    assert all(w.desired_state != DS.DESIRED_STATE_TERMINATED for w in theirs)
    ours = [w for w in run.service.live() if w.owner == OWNER]
    assert [w.name for w in ours] == ["c1"]
    assert "already has workspace" not in run.text()


def test_unreachable_service(run: Run) -> None:
    run.service.unreachable = True
    assert run("resume", "c1") == 3
    assert "the workspace service cannot be reached" in run.text()
    assert run("suspend", "c1") == 3


def test_config_errors_exit_2(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    (run.tmp / "nodes.toml").write_text("[[node]]\n")
    assert run("resume", "c1") == 2
    assert "has no image" in capsys.readouterr().err
    assert "has no image" in run.text()


def test_an_unreadable_resume_file_resumes_nodes_one_by_one(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = run.tmp / "bad.json"
    bad.write_text("{")
    monkeypatch.setenv("SLURM_RESUME_FILE", str(bad))
    assert cli.main(["--config", str(run.config), "resume", "c[1-2]"], run.service,
                    run.scontrol) == 0  # fmt: skip
    assert run.names() == ["c1", "c2"]
    assert "nodes are resumed one by one" in run.text()


def test_check_prints_the_mapping(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "c1,x1") == 1
    out = capsys.readouterr().out
    assert "c1: image slurm, cpus 1, memory_mib 512 (rule 2)" in out
    assert "x1: Slurm node x1" in out


def test_plan_groups_keeps_job_order_and_lone_nodes() -> None:
    f = ResumeFile(jobs=(Job(1, ("a", "b")), Job(2, ("c", "zz"))))
    groups = plan_groups(["a", "b", "c", "d"], f)
    assert [(g.job_id, g.nodes) for g in groups] == [(1, ("a", "b")), (2, ("c",)), (None, ("d",))]


def test_runs_with_stdio_closed_as_slurmctld_runs_it(run: Run) -> None:
    """slurmctld closes its programs' stdin, stdout and stderr; ws-slurm still logs."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    (run.tmp / "slurm.toml").write_text(
        run.config.read_text() + 'service = "unix:/nonexistent/ws.sock"\n'
    )
    # The shell closes 0, 1 and 2 before it runs the program (a preexec_fn would fork this
    # process, which may hold gRPC channels: gRPC's fork handlers can abort the child).
    closed = ("sh", "-c", 'exec "$0" "$@" <&- >&- 2>&-')
    program = (sys.executable, "-m", "workspace.slurm", "--config", str(run.config))
    proc = subprocess.run(
        [*closed, *program, "suspend", "c1"],
        env={"PYTHONPATH": str(root), "PATH": os.environ.get("PATH", "")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, run.text() if run.log.exists() else "no log"
    assert "suspend c1 (1 node(s))" in run.text()
    assert "cannot reach" in run.text() or "cannot be reached" in run.text()


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (["/usr/local/sbin/ws-slurm-resume", "c[1-2]"], ["resume", "c[1-2]"]),
        (["ws-slurm-resume-fail", "c1"], ["resume-fail", "c1"]),
        (["ws-slurm-suspend", "c1"], ["suspend", "c1"]),
        (["ws-slurm", "check", "c1"], ["check", "c1"]),
        (["ws-slurm-other", "x"], ["x"]),
    ],
)
def test_the_command_is_implied_by_the_programs_name(argv: list[str], args: list[str]) -> None:
    assert cli.implied_command(argv) == args


def test_scontrol_command_lines(tmp_path: Path) -> None:
    """What ws-slurm runs: a fake scontrol on PATH records its arguments."""
    record = tmp_path / "argv"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {record}\necho >> {record}\n')
    fake.chmod(0o755)
    sc = Scontrol(str(fake))
    long = "the service refused:\n" + "x" * 300
    assert sc.set_down(["c1", "c2", "c3"], long)
    assert sc.power_down(["c1", "c2"])
    down, power = record.read_text().splitlines()
    args = down.split("|")
    assert args[:3] == ["update", "NodeName=c[1-3]", "State=DOWN"]
    assert args[3].startswith("Reason=ws: the service refused: xxx")
    assert len(args[3]) == len("Reason=") + 200 and args[3].endswith("...")
    assert power == "update|NodeName=c[1-2]|State=POWER_DOWN|"


def test_scontrol_failure_is_a_warning_not_an_error(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\necho "Invalid node name specified" >&2\nexit 1\n')
    fake.chmod(0o755)
    assert not Scontrol(str(fake)).set_down(["zz1"], "why", tries=1)


def test_without_scontrol_a_refusal_is_logged_and_quick(run: Run) -> None:
    run.scontrol = Scontrol("scontrol-not-here")  # the real class, no scontrol on PATH
    run.service.capacity_mib = 100
    assert run("resume", "c1") == 1
    text = run.text()
    assert "scontrol update NodeName=c1 State=DOWN" in text and "is not on PATH" in text
    assert "could not mark c1 DOWN in Slurm (reason: node c1: the service refused" in text
