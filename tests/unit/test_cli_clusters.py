"""`ws cluster` (and the --require / --wait-for-capacity options of `ws create`) without a
service: parsing, the request sent, rendering, exit codes, against a fake client."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.cluster_examples import CS, MPI_TOML, WS
from tests.unit.cluster_examples import cluster as _cluster
from tests.unit.cluster_examples import member as _member
from tests.unit.cluster_examples import write_spec as _write
from workspace import errors
from workspace.cli import cluster_cmds, render, ws
from workspace.client import ClusterWaitTimeout
from workspace.v1 import clusters_pb2, common_pb2

# -- ws cluster: parsing -------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    return ws.build_parser(ws.Commands(lambda _s: None)).parse_args(argv)  # type: ignore[arg-type, return-value]


def test_cluster_create_from_flags() -> None:
    a = _parse(
        shlex.split(
            "cluster create mpi --member head=img,cpus=1,memory-mib=256 "
            "--member worker=img2,count=16 "
            "--affinity hard-anti --on-failure teardown --network default --network ib "
            "--require gpu=1 --wait --timeout 60 --wait-for-capacity 30 -o json"
        )
    )
    assert (a.name, a.wait, a.wait_timeout, a.wait_for_capacity, a.output) == (
        "mpi",
        True,
        60.0,
        30,
        "json",
    )
    req = ws.cluster_request(a)
    assert req.name == "mpi" and req.affinity == clusters_pb2.AFFINITY_HARD_ANTI
    assert req.on_failure == clusters_pb2.FAILURE_POLICY_TEARDOWN
    assert req.wait_for_capacity_s == 30
    head, worker = req.members
    assert (head.role, head.count, head.cpus, head.memory_mib) == ("head", 1, 1, 256)
    assert (worker.image, worker.count) == ("img2", 16)
    for m in req.members:
        assert list(m.networks) == ["default", "ib"] and dict(m.requirements) == {"gpu": "1"}


def test_cluster_create_from_a_spec_with_overrides(tmp_path: Path) -> None:
    spec = _write(tmp_path, MPI_TOML)
    a = _parse(["cluster", "create", "--spec", str(spec)])
    req = ws.cluster_request(a)
    assert (req.name, req.affinity, req.wait_for_capacity_s) == (
        "mpi",
        clusters_pb2.AFFINITY_SOFT_ANTI,
        600,
    )
    a = _parse(
        shlex.split(
            f"cluster create other --spec {spec} --affinity none --on-failure keep "
            "--wait-for-capacity 0"
        )
    )
    req = ws.cluster_request(a)
    assert (req.name, req.affinity, req.on_failure, req.wait_for_capacity_s) == (
        "other",
        clusters_pb2.AFFINITY_NONE,
        clusters_pb2.FAILURE_POLICY_KEEP,
        0,
    )


def test_cluster_create_user_data_reaches_every_role_without_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = tmp_path / "ctx.yaml"
    ctx.write_bytes(b"#cloud-config\nruncmd: [[touch, /tmp/ok]]\n")
    a = _parse(
        shlex.split(
            f"cluster create mpi --member head=img --member worker=img,count=3 --user-data {ctx}"
        )
    )
    req = ws.cluster_request(a)
    assert [m.user_data for m in req.members] == [ctx.read_bytes()] * 2

    # With a spec, a role the spec gives a context of its own keeps it.
    spec = _write(tmp_path, MPI_TOML.replace('role = "head"', 'role = "head"\nuser_data = "own"'))
    req = ws.cluster_request(
        _parse(["cluster", "create", "--spec", str(spec), "--user-data", str(ctx)])
    )
    assert [m.user_data for m in req.members] == [b"own", ctx.read_bytes()]

    # "-" reads standard input, as `ws create --user-data -` does.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"#!/bin/sh\necho hi\n")))
    req = ws.cluster_request(_parse(shlex.split("cluster create c --member h=img --user-data -")))
    assert req.members[0].user_data == b"#!/bin/sh\necho hi\n"


def test_cluster_create_missing_user_data_file_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = shlex.split(f"cluster create c --member h=img --user-data {tmp_path / 'none'}")
    assert ws.main(argv, connect=lambda _s: pytest.fail("nothing is sent")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none: No such file or directory" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["cluster"],
        ["cluster", "create", "c", "--member", "head"],
        ["cluster", "create", "c", "--member", "h=i", "--affinity", "sideways"],
        ["cluster", "create", "c", "--member", "h=i", "--on-failure", "retry"],
        ["cluster", "create", "c", "--member", "h=i", "--wait-for-capacity", "-3"],
        ["cluster", "create", "c", "--member", "h=i", "--require", "gpu"],
        ["cluster", "show"],
        ["cluster", "stop"],
        ["cluster", "destroy", "c", "--timeout", "0"],
        ["cluster", "reboot", "c"],
    ],
)
def test_cluster_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main(argv, connect=lambda _s: pytest.fail("no client for a usage error"))
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ws cluster") and line.endswith(" --help for usage)"), line


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["cluster", "create", "c"], "give --spec FILE, or NAME and at least one --member"),
        (["cluster", "create", "--member", "h=i"], "give --spec FILE, or NAME"),
        (
            ["cluster", "create", "c", "--member", "h=i", "--member", "h=j"],
            "role 'h' is given twice",
        ),
        (
            ["cluster", "create", "--spec", "SPEC", "--member", "h=i"],
            "--member cannot be combined with --spec",
        ),
        (
            ["cluster", "create", "--spec", "SPEC", "--network", "n", "--require", "a=b"],
            "--network, --require cannot be combined with --spec",
        ),
        (
            ["create", "--image", "i", "--require", "gpu=1", "--require", "gpu=2"],
            "--require gpu is given twice",
        ),
        (
            ["cluster", "autoscale", "c", "--role", "w", "--min", "1", "--max", "2"],
            "give --min, --max and --signal (or --off)",
        ),
        (
            ["cluster", "autoscale", "c", "--role", "w", "--off", "--max", "4", "--cooldown", "9"],
            "--off cannot be combined with --max, --cooldown",
        ),
    ],
)
def test_cluster_usage_checks_exit_2(
    tmp_path: Path, argv: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(_write(tmp_path, MPI_TOML))
    client = FakeClient()
    argv = [spec if a == "SPEC" else a for a in argv]
    assert ws.main(argv, connect=lambda _s: client) == 2  # type: ignore[arg-type, return-value]
    err = capsys.readouterr().err
    assert err.startswith("ws: error: ") and match in err and err.count("\n") == 1
    assert client.calls == []


def test_autoscale_cooldown_0_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--cooldown 0` went out as the request's cooldown_s 0, which the service reads as
    its autoscale_cooldown_s: the role got a 60 s cool-down, not none, and no word said so."""
    client = FakeClient()
    argv = ["cluster", "autoscale", "c", "--role", "w", "--min", "1", "--max", "2"]
    with pytest.raises(SystemExit) as exc:
        _run([*argv, "--signal", "slurm-queue", "--cooldown", "0"], client)
    assert exc.value.code == 2
    assert "argument --cooldown: must be at least 1, got 0" in capsys.readouterr().err
    assert client.calls == []


def test_bad_spec_file_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _write(tmp_path, 'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\ncpus = -1\n')
    client = FakeClient()
    assert _run(["cluster", "create", "--spec", str(spec)], client) == 1
    err = capsys.readouterr().err
    assert err == (
        f"ws: error: {spec}:5: members[0].cpus: must be a whole number of at least 1, got -1\n"
    )
    assert _run(["cluster", "create", "--spec", str(tmp_path / "missing.toml")], client) == 1
    assert "missing.toml: No such file or directory" in capsys.readouterr().err
    assert client.calls == []


# -- ws cluster: commands against a fake client ----------------------------------------


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def _do(self, call: str, *args: Any, **kw: Any) -> None:
        self.calls.append((call, (args, kw)))
        if self.fail is not None:
            raise self.fail

    def create_workspace(self, **kw: Any) -> common_pb2.Workspace:
        self._do("create_workspace", **kw)
        return _member("w", "", WS.WORKSPACE_STATE_PENDING)

    def create_cluster(self, req: Any, request_id: str | None = None) -> Any:
        self._do("create_cluster", req, request_id=request_id)
        return _cluster(CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED)

    def get_cluster(self, id: str) -> Any:
        self._do("get_cluster", id)
        return _cluster()

    def list_clusters(
        self, include_terminated: bool = False, all_users: bool = False, mine: bool = False
    ) -> Any:
        self._do(
            "list_clusters", include_terminated=include_terminated, all_users=all_users, mine=mine
        )
        return [_cluster()]

    def stop_cluster(self, id: str) -> Any:
        self._do("stop_cluster", id)
        return _cluster(CS.CLUSTER_STATE_STOPPING, WS.WORKSPACE_STATE_STOPPING)

    def wait_for_cluster_state(
        self, ref: str, states: Any, timeout_s: float, on_change: Any, on_outage: Any = None
    ) -> Any:
        self._do("wait", ref, states=list(states), timeout_s=timeout_s)
        target = next(iter(states))
        member = {
            CS.CLUSTER_STATE_RUNNING: WS.WORKSPACE_STATE_RUNNING,
            CS.CLUSTER_STATE_STOPPED: WS.WORKSPACE_STATE_STOPPED,
        }[target]
        steps = [_cluster(CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING)]
        steps.append(_cluster(CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING))
        half = _cluster(CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING)
        half.members[0].state = member
        steps += [half, _cluster(target, member)]
        if on_change is not None:
            for c in steps:
                on_change(c)
        return steps[-1]

    def close(self) -> None:
        pass


def _run(argv: list[str], client: FakeClient) -> int:
    return ws.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


def test_create_sends_requirements_and_capacity_wait() -> None:
    client = FakeClient()
    argv = shlex.split(
        "create --image i --require gpu=1 --require hypervisor=xen --wait-for-capacity 120"
    )
    assert _run(argv, client) == 0
    kw = client.calls[0][1][1]
    assert kw["requirements"] == {"gpu": "1", "hypervisor": "xen"}
    assert kw["wait_for_capacity_s"] == 120
    assert _run(["create", "--image", "i"], client) == 0
    kw = client.calls[1][1][1]
    assert (kw["requirements"], kw["wait_for_capacity_s"]) == ({}, 0)


def test_cluster_create_wait_prints_member_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient()
    spec = _write(tmp_path, MPI_TOML)
    argv = ["cluster", "create", "--spec", str(spec), "--wait", "--request-id", "r1"]
    assert _run(argv, client) == 0
    (create, (args, kw)), wait = client.calls
    assert create == "create_cluster" and args[0].name == "mpi" and kw == {"request_id": "r1"}
    # no --timeout: the default plus the spec's wait_for_capacity_s
    assert wait[1] == (("c1",), {"states": [CS.CLUSTER_STATE_RUNNING], "timeout_s": 900.0})
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "ws: cluster mpi (c1): STARTING, 0/2 members RUNNING",
        "ws:   mpi-head-0 (id-mpi-head-0): STARTING",
        "ws:   mpi-worker-0 (id-mpi-worker-0): STARTING",
        "ws:   mpi-head-0 (id-mpi-head-0): RUNNING",
        "ws: cluster mpi (c1): RUNNING, 2/2 members RUNNING",
        "ws:   mpi-worker-0 (id-mpi-worker-0): RUNNING",
    ]
    assert "state       RUNNING" in out.out


def test_a_role_scaled_to_none_shows_count_0() -> None:
    """`ws cluster scale mpi --role worker --count 0` (the head stays): `ws cluster show`
    said COUNT 1 for worker, beside `running 1/1` and no worker listed."""
    c = _cluster()
    c.spec[1].count = 0
    del c.members[1]
    lines = render.cluster_text(c).splitlines()
    assert next(line for line in lines if line.startswith("worker ")).split()[2] == "0"
    assert "running     1/1" in lines


def test_cluster_show_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["cluster", "show", "mpi"], client) == 0
    text = capsys.readouterr().out
    assert "affinity    SOFT_ANTI" in text and "on_failure  TEARDOWN" in text
    assert "running     2/2" in text
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("NAME")))
    assert lines[head].split() == ["NAME", "ROLE", "STATE", "NODE", "IP"]
    assert lines[head + 1].split() == ["mpi-head-0", "head", "RUNNING", "n1", "10.0.0.2"]
    assert lines[head + 2].split() == ["mpi-worker-0", "worker", "RUNNING", "n2", "10.0.0.3"]
    spec = next(line for line in lines if line.startswith("worker "))
    assert spec.split() == [
        "worker",
        "b",
        "1",
        "-",
        "-",
        "-",
        "gpu=1",
        "scratch:10GiB:ext4,raw:1536MiB",
    ]
    assert next(line for line in lines if line.startswith("head ")).split()[-1] == "-"
    assert _run(["cluster", "show", "mpi", "-o", "json"], client) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["state"], data["affinity"], data["on_failure"]) == (
        "RUNNING",
        "SOFT_ANTI",
        "TEARDOWN",
    )
    assert data["members"][0]["state"] == "RUNNING" and data["members"][0]["role"] == "head"


def test_cluster_list_and_actions(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["cluster", "list", "--all"], client) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "RUNNING", "AFFINITY", "CREATED"]
    assert lines[1].split()[:5] == ["c1", "mpi", "RUNNING", "2/2", "SOFT_ANTI"]
    assert client.calls[-1] == (
        "list_clusters",
        ((), {"include_terminated": True, "all_users": False, "mine": False}),
    )
    assert _run(["cluster", "list", "--all-users"], client) == 0
    assert client.calls[-1][1][1]["all_users"] is True
    assert _run(["cluster", "list", "--mine"], client) == 0
    assert client.calls[-1][1][1]["mine"] is True
    capsys.readouterr()
    for flag in ("--wait-timeout", "--timeout"):  # the name docs/clusters.md gives; the old
        argv = ["-o", "json", "cluster", "stop", "mpi", "--wait", flag, "7"]
        assert _run(argv, client) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["state"] == "STOPPED"  # the progress: on stderr
        assert out.err.splitlines()[-2:] == [
            "ws: cluster mpi (c1): STOPPED, 0/2 members RUNNING",
            "ws:   mpi-worker-0 (id-mpi-worker-0): STOPPED",
        ], out.err
        assert client.calls[-1][1] == (
            ("c1",),
            {"states": [CS.CLUSTER_STATE_STOPPED], "timeout_s": 7.0},
        )
    assert _run(["cluster", "stop", "mpi"], client) == 0
    assert capsys.readouterr().out == "cluster mpi (c1): STOPPING, 0/2 members RUNNING\n"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.ResourceExhausted("cannot place cluster big: member big-head-0 does not fit"), 1),
        (errors.AlreadyExists("you already have a cluster named 'mpi'"), 1),
        (errors.Unavailable("cannot reach the workspace service at h:1"), 3),
        (ClusterWaitTimeout("timed out after 5 s waiting for cluster mpi"), 1),
    ],
)
def test_cluster_errors_are_one_line(
    exc: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cluster", "create", "big", "--member", "head=img"]
    assert _run(argv, FakeClient(fail=exc)) == code
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"ws: error: {exc}\n"


def test_running_counts_against_what_the_spec_asks_for() -> None:
    """A member destroyed on its own is missing: RUNNING 1/2, not 1/1."""
    c = clusters_pb2.Cluster(name="d", id="c1", state=clusters_pb2.CLUSTER_STATE_RUNNING)
    c.spec.add(role="w", image="tiny", count=2)
    c.members.add(name="d-w-1", role="w", state=common_pb2.WORKSPACE_STATE_RUNNING)
    assert render.cluster_state_line(c) == "cluster d (c1): RUNNING, 1/2 members RUNNING"


class InterruptedClient(FakeClient):
    def wait_for_cluster_state(self, *args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt


def test_an_interrupted_cluster_create_wait_says_the_cluster_is_still_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _write(tmp_path, MPI_TOML)
    assert _run(["cluster", "create", "--spec", str(spec), "--wait"], InterruptedClient()) == 130
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "ws: cluster mpi (c1) was created and is not destroyed (STARTING when last seen): "
        "`ws cluster show c1` follows it, `ws cluster destroy c1` removes it",
        "ws: interrupted",
    ]


class QueuedGrow:
    """`ws cluster scale --wait-for-capacity`: the new member waits in the queue, and each
    look at the cluster is ``step_s`` seconds later (a clock of the test's, not time);
    capacity comes at ``placed_at_s``."""

    def __init__(self, placed_at_s: float, step_s: float = 100.0) -> None:
        self.now, self.placed_at_s, self.step_s = 0.0, placed_at_s, step_s

    def scale_cluster(self, ref: str, role: str, count: int, wait_for_capacity_s: int) -> Any:
        self.asked = wait_for_capacity_s
        c = _cluster()
        c.members.add(name="mpi-worker-1", role="worker", state=WS.WORKSPACE_STATE_PENDING)
        return clusters_pb2.ScaleClusterResponse(
            cluster=c, added=["mpi-worker-1"], message="worker 1 → 2"
        )

    def get_cluster(self, ref: str) -> Any:
        self.now += self.step_s
        placed = self.now >= self.placed_at_s
        c = _cluster(CS.CLUSTER_STATE_RUNNING if placed else CS.CLUSTER_STATE_STARTING)
        state = WS.WORKSPACE_STATE_RUNNING if placed else WS.WORKSPACE_STATE_PENDING
        c.members.add(name="mpi-worker-1", role="worker", state=state)
        return c

    def close(self) -> None:
        pass


def test_a_scale_wait_lasts_as_long_as_the_grow_may_wait_for_capacity(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--wait --wait-for-capacity 3600` gave up after 600 s, saying the cluster was still
    STARTING, while the grow still had its turn in the queue: the time it may wait for
    capacity comes on top of the default, as for `ws cluster create`."""
    clients: list[QueuedGrow] = []

    def grow(placed_at_s: float) -> QueuedGrow:
        clients.append(QueuedGrow(placed_at_s))
        return clients[-1]

    clock = types.SimpleNamespace(monotonic=lambda: clients[-1].now, sleep=lambda _s: None)
    monkeypatch.setattr(cluster_cmds, "time", clock)
    client = grow(placed_at_s=1500)
    argv = ["cluster", "scale", "mpi", "--role", "worker", "--count", "2", "--wait"]
    assert _run([*argv, "--wait-for-capacity", "3600"], client) == 0  # type: ignore[arg-type]
    assert client.asked == 3600
    assert capsys.readouterr().out == "worker 1 → 2\n"
    # --wait-timeout still says how long, and without a capacity wait the default holds.
    for extra in (["--wait-for-capacity", "3600", "--wait-timeout", "900"], []):
        client = grow(placed_at_s=1500)
        assert _run([*argv, *extra], client) == 1  # type: ignore[arg-type]
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("ws: error: cluster mpi is still STARTING after ")


class StoppedShrink:
    """A STOPPED cluster shrunk: its removed member is gone at the first look, and the
    cluster stays STOPPED."""

    def __init__(self) -> None:
        self.gets = 0

    def scale_cluster(self, ref: str, role: str, count: int, wait_for_capacity_s: int) -> Any:
        c = _cluster(CS.CLUSTER_STATE_STOPPED, WS.WORKSPACE_STATE_STOPPED)
        c.members.add(name="mpi-worker-1", role="worker", state=WS.WORKSPACE_STATE_STOPPING)
        return clusters_pb2.ScaleClusterResponse(
            cluster=c, removed=["mpi-worker-1"], message="worker 2 → 1"
        )

    def get_cluster(self, ref: str) -> Any:
        self.gets += 1
        if self.gets > 3:
            raise AssertionError("still waiting: the scale was done at the first look")
        return _cluster(CS.CLUSTER_STATE_STOPPED, WS.WORKSPACE_STATE_STOPPED)

    def close(self) -> None:
        pass


def test_a_shrink_of_a_stopped_cluster_is_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped cluster may be shrunk (docs/design/elastic-clusters.md), but `--wait`
    waited for RUNNING: it ran until its timeout and exited 1 ("still STOPPED after 600
    s") although the member was gone at once."""
    client = StoppedShrink()
    argv = ["cluster", "scale", "mpi", "--role", "worker", "--count", "1", "--wait"]
    assert _run(argv, client) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == "worker 2 → 1\n"
    assert client.gets == 1
