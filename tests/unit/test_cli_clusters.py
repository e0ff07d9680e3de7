"""Clusters, requirements, the capacity queue and node drain in the client and the CLIs,
without a service: spec files (TOML, JSON), --member / --require parsing, rendering,
exit codes, `ws-admin schedule explain` (offline) and the client against in-process
fake servicers."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from workspace import errors, rpc
from workspace.cli import admin, clusterspec, ws
from workspace.client import (
    Client,
    ClusterWaitFailed,
    ClusterWaitTimeout,
    affinity_value,
    failure_policy_value,
)
from workspace.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

WS = common_pb2.WorkspaceState
CS = clusters_pb2.ClusterState

# The example of docs/clusters.md: a head node and 16 workers from different images.
MPI_TOML = """\
# an MPI job: one head, 16 workers
name = "mpi"
affinity = "soft-anti"
on_failure = "teardown"
wait_for_capacity_s = 600

[[members]]
role = "head"
image = "appliance"
cpus = 1
memory_mib = 256
count = 1
networks = ["default"]
requirements = { gpu = "1" }

[[members]]
role = "worker"
image = "debian-12:hpc"
cpus = 2
memory_mib = 1024
count = 16
networks = ["default", "ib"]
requirements = { hypervisor = "kvm" }
"""


def _write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- TOML specs ----------------------------------------------------------------------


def test_toml_spec_with_two_roles(tmp_path: Path) -> None:
    req = clusterspec.load(_write(tmp_path, MPI_TOML))
    assert (req.name, req.wait_for_capacity_s) == ("mpi", 600)
    assert req.affinity == clusters_pb2.AFFINITY_SOFT_ANTI
    assert req.on_failure == clusters_pb2.FAILURE_POLICY_TEARDOWN
    head, worker = req.members
    assert (head.role, head.image, head.cpus, head.memory_mib, head.count) == (
        "head",
        "appliance",
        1,
        256,
        1,
    )
    assert list(head.networks) == ["default"] and dict(head.requirements) == {"gpu": "1"}
    assert (worker.image, worker.count, list(worker.networks)) == (
        "debian-12:hpc",
        16,
        ["default", "ib"],
    )
    assert dict(worker.requirements) == {"hypervisor": "kvm"}
    assert req.request_id == ""  # the client adds one


def test_toml_defaults_and_overrides(tmp_path: Path) -> None:
    text = '[[members]]\nrole = "a"\nimage = "i"\nrequirements = { gpu = 1, fast = true }\n'
    path = _write(tmp_path, text)
    req = clusterspec.load(path, name="given")
    assert req.name == "given" and req.affinity == clusters_pb2.AFFINITY_NONE
    m = req.members[0]
    assert (m.count, m.cpus, m.memory_mib, list(m.networks)) == (1, 0, 0, [])
    assert dict(m.requirements) == {"gpu": "1", "fast": "true"}
    # NAME on the command line replaces the spec's name
    assert clusterspec.load(_write(tmp_path, MPI_TOML), name="mpi2").name == "mpi2"


def test_toml_sub_tables_and_user_data(tmp_path: Path) -> None:
    (tmp_path / "ctx.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    text = """\
name = "c"
[[members]]
role = "a"
image = "i"
user_data_file = "ctx.sh"
[members.requirements]
gpu = "2"
[[members]]
role = "b"
image = "i"
user_data = "plain"
"""
    a, b = clusterspec.load(_write(tmp_path, text)).members
    assert a.user_data == b"#!/bin/sh\necho hi\n" and dict(a.requirements) == {"gpu": "2"}
    assert b.user_data == b"plain"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\nmembers = [', "spec.toml: not valid TOML: "),
        ('name = "x"\naffinty = "soft"\n', "spec.toml:2: affinty: unknown key"),
        ('name = "x"\n', "spec.toml: members: missing: add at least one [[members]] table"),
        ('name = "x"\nmembers = []\n', "spec.toml:2: members: the cluster needs at least one"),
        ('name = "x"\nmembers = 3\n', "spec.toml:2: members: must be an array of tables"),
        ("name = 7\n", "spec.toml:1: name: must be a string, got 7"),
        (
            'name = "x"\naffinity = "sideways"\n',
            "spec.toml:2: affinity: 'sideways' is not one of none, soft-anti, hard-anti",
        ),
        (
            'name = "x"\non_failure = "retry"\n',
            "spec.toml:2: on_failure: 'retry' is not one of keep, teardown",
        ),
        (
            'name = "x"\nwait_for_capacity_s = -1\n',
            "spec.toml:2: wait_for_capacity_s: must be a whole number of at least 0, got -1",
        ),
        (
            'name = "x"\n\n[[members]]\nrole = "head"\n',
            "spec.toml:3: members[0].image: missing",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            '[[members]]\nrole = "b"\nimage = "i"\ncpus = "two"\n',
            'spec.toml:8: members[1].cpus: must be a whole number of at least 1, got "two"',
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\ncount = 0\n',
            "spec.toml:5: members[0].count: must be a whole number of at least 1, got 0",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nmemory_mib = true\n',
            "spec.toml:5: members[0].memory_mib: must be a whole number of at least 1, got true",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            '[[members]]\nrole = "a"\nimage = "j"\n',
            "spec.toml:6: members[1].role: 'a' is already used by members[0]",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\ncpu = 2\n',
            "spec.toml:5: members[0].cpu: unknown key (known: role, image, count, cpus",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nnetworks = "default"\n',
            "spec.toml:5: members[0].networks: must be a list of network names",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nrequirements = ["gpu"]\n',
            "spec.toml:5: members[0].requirements: must be a table",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nrequirements = { gpu = 1.5 }\n',
            "spec.toml:5: members[0].requirements: gpu: must be a string or whole number",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "  "\n',
            "spec.toml:4: members[0].image: must not be empty",
        ),
        (
            'name = "x"\nmembers = [{ role = "a", image = "i", cpus = 0 }]\n',
            "spec.toml:2: members[0].cpus: must be a whole number of at least 1, got 0",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\n'
            'user_data = "a"\nuser_data_file = "b"\n',
            "spec.toml:6: members[0].user_data_file: give user_data or user_data_file, not both",
        ),
        (
            'name = "x"\n[[members]]\nrole = "a"\nimage = "i"\nuser_data_file = "nope.sh"\n',
            "spec.toml:5: members[0].user_data_file: ",
        ),
        (
            '[[members]]\nrole = "a"\nimage = "i"\n',
            "spec.toml: name: the cluster needs a name",
        ),
    ],
)
def test_bad_toml_specs_name_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(clusterspec.SpecError) as exc:
        clusterspec.load(path)
    assert exc.value.message.startswith(str(tmp_path / expected)), exc.value.message
    assert "\n" not in exc.value.message


def test_toml_syntax_error_says_where(tmp_path: Path) -> None:
    with pytest.raises(clusterspec.SpecError, match=r"at line 3"):
        clusterspec.load(_write(tmp_path, 'name = "x"\n\nrole = \n'))


def test_spec_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(clusterspec.SpecError, match="not UTF-8"):
        clusterspec.load(path)


# -- JSON specs ----------------------------------------------------------------------


def test_json_spec_in_the_proto_mapping(tmp_path: Path) -> None:
    data = {
        "name": "mpi",
        "affinity": "AFFINITY_HARD_ANTI",
        "onFailure": "FAILURE_POLICY_TEARDOWN",
        "waitForCapacityS": 30,
        "members": [
            {"role": "head", "image": "a", "memoryMib": "256", "userData": "aGk="},
            {"role": "worker", "image": "b", "count": 4, "requirements": {"gpu": "1"}},
        ],
    }
    req = clusterspec.load(_write(tmp_path, json.dumps(data), "c.json"))
    assert (req.name, req.affinity, req.on_failure, req.wait_for_capacity_s) == (
        "mpi",
        clusters_pb2.AFFINITY_HARD_ANTI,
        clusters_pb2.FAILURE_POLICY_TEARDOWN,
        30,
    )
    assert req.members[0].memory_mib == 256 and req.members[0].user_data == b"hi"
    assert req.members[1].count == 4 and dict(req.members[1].requirements) == {"gpu": "1"}
    # proto field names, short enum names, and a round trip through MessageToJson
    short = {
        "name": "x",
        "affinity": "soft-anti",
        "on_failure": "TEARDOWN",
        "members": [{"role": "a", "image": "i", "user_data": base64.b64encode(b"x").decode()}],
    }
    got = clusterspec.load(_write(tmp_path, json.dumps(short), "s.json"))
    assert got.affinity == clusters_pb2.AFFINITY_SOFT_ANTI and got.members[0].user_data == b"x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "x",\n "members": [}', "c.json:2: not valid JSON"),
        ("[]", "c.json: must hold a JSON object"),
        ('{"name": "x", "members": [{"role": "a", "image": "i"}], "colour": 1}', "colour"),
        ('{"name": "x", "affinity": "diagonal", "members": []}', "c.json: affinity: "),
        ('{"name": "x", "members": []}', "c.json: members: the cluster needs at least one"),
        ('{"name": "x", "members": [{"role": "a"}]}', "c.json: members[0].image: "),
        (
            '{"name": "x", "members": [{"role": "a", "image": "i"}, {"role": "a", "image": "j"}]}',
            "c.json: members[1].role: role 'a' is already used by members[0]",
        ),
        ('{"name": "x", "members": [{"role": "a", "image": "i", "count": "many"}]}', "count"),
    ],
)
def test_bad_json_specs(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(clusterspec.SpecError) as exc:
        clusterspec.load(_write(tmp_path, text, "c.json"))
    assert expected in exc.value.message and str(tmp_path / "c.json") in exc.value.message


# -- --member, --require, enum names -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("head=img", ("head", "img", 1, 0, 0)),
        ("worker=img,count=16", ("worker", "img", 16, 0, 0)),
        ("worker=img,count=16,cpus=2,memory-mib=1024", ("worker", "img", 16, 2, 1024)),
        ("worker=img,cpus=2", ("worker", "img", 1, 2, 0)),
        ("worker=img,memory_mib=512", ("worker", "img", 1, 0, 512)),
        ("worker=debian:12,count=4", ("worker", "debian:12", 4, 0, 0)),  # image with ':'
        ("w=reg:5000/deb:12,cpus=1,memory-mib=64", ("w", "reg:5000/deb:12", 1, 1, 64)),
    ],
)
def test_member_flag(text: str, want: tuple[str, str, int, int, int]) -> None:
    m = clusterspec.member_arg(text)
    assert (m.role, m.image, m.count, m.cpus, m.memory_mib) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("head", "must be ROLE=IMAGE"),
        ("head:img", "must be ROLE=IMAGE"),
        ("=img", "no ROLE"),
        ("head=", "no IMAGE"),
        ("head=,count=3", "no IMAGE"),
        ("w=img,count=two", "count must be a whole number"),
        ("w=img,count=0", "count must be a whole number"),
        ("w=img,cpus=-2", "cpus must be"),
        ("w=img,memory-mib=lots", "memory-mib must be"),
        ("w=img,disks=3", "unknown field"),
    ],
)
def test_bad_member_flag(text: str, match: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        clusterspec.member_arg(text)


def test_require_flag() -> None:
    assert clusterspec.requirement_arg("gpu=1") == ("gpu", "1")
    assert clusterspec.requirement_arg(" hypervisor = xen ") == ("hypervisor", "xen")
    assert clusterspec.requirement_arg("k=a=b") == ("k", "a=b")
    for bad in ("gpu", "=1", "gpu=", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            clusterspec.requirement_arg(bad)
    pairs = [("gpu", "1"), ("hypervisor", "xen"), ("gpu", "1")]
    assert clusterspec.requirements(pairs) == {"gpu": "1", "hypervisor": "xen"}
    assert clusterspec.requirements(None) == {}
    with pytest.raises(ValueError, match="--require gpu is given twice"):
        clusterspec.requirements([("gpu", "1"), ("gpu", "2")])


def test_enum_names() -> None:
    for text in ("soft-anti", "SOFT_ANTI", "AFFINITY_SOFT_ANTI", "soft_anti"):
        assert affinity_value(text) == clusters_pb2.AFFINITY_SOFT_ANTI
    assert affinity_value("hard") == clusters_pb2.AFFINITY_HARD
    assert affinity_value(2) == 2
    assert failure_policy_value("teardown") == clusters_pb2.FAILURE_POLICY_TEARDOWN
    assert failure_policy_value("KEEP") == clusters_pb2.FAILURE_POLICY_KEEP
    with pytest.raises(ValueError, match="not one of none, soft-anti"):
        affinity_value("anti")
    with pytest.raises(ValueError, match="not one of keep, teardown"):
        failure_policy_value("unspecified")


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
    assert (a.name, a.wait, a.timeout, a.wait_for_capacity, a.output) == (
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
    assert "usage:" in capsys.readouterr().err


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


def _member(name: str, role: str, state: Any, ip: str = "", node: str = "") -> common_pb2.Workspace:
    nics = [common_pb2.Nic(network="default", ip=ip)] if ip else []
    return common_pb2.Workspace(
        id=f"id-{name}", name=name, role=role, state=state, node=node, nics=nics, cluster="c1"
    )


def _cluster(state: Any = CS.CLUSTER_STATE_RUNNING, member_state: Any = None) -> Any:
    ms = WS.WORKSPACE_STATE_RUNNING if member_state is None else member_state
    return clusters_pb2.Cluster(
        id="c1",
        name="mpi",
        state=state,
        affinity=clusters_pb2.AFFINITY_SOFT_ANTI,
        on_failure=clusters_pb2.FAILURE_POLICY_TEARDOWN,
        members=[
            _member("mpi-head-0", "head", ms, "10.0.0.2", "n1"),
            _member("mpi-worker-0", "worker", ms, "10.0.0.3", "n2"),
        ],
        spec=[
            clusters_pb2.ClusterMember(role="head", image="a", count=1, cpus=1, memory_mib=256),
            clusters_pb2.ClusterMember(
                role="worker", image="b", count=1, requirements={"gpu": "1"}
            ),
        ],
    )


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

    def list_clusters(self, include_terminated: bool = False) -> Any:
        self._do("list_clusters", include_terminated=include_terminated)
        return [_cluster()]

    def stop_cluster(self, id: str) -> Any:
        self._do("stop_cluster", id)
        return _cluster(CS.CLUSTER_STATE_STOPPING, WS.WORKSPACE_STATE_STOPPING)

    def wait_for_cluster_state(
        self, ref: str, states: Any, timeout_s: float, on_change: Any
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

    def drain_node(self, name: str) -> admin_pb2.Node:
        self._do("drain_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_DRAINING, cpus=4)

    def enable_node(self, name: str) -> admin_pb2.Node:
        self._do("enable_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_READY, cpus=4)

    def remove_node(self, name: str) -> admin_pb2.Node:
        self._do("remove_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_DOWN)

    def list_queue(self) -> list[admin_pb2.QueueEntry]:
        self._do("list_queue")
        e = admin_pb2.QueueEntry(
            kind="cluster",
            id="c9",
            name="big",
            owner="ana",
            position=1,
            cpus=34,
            memory_mib=16640,
            reason="member big-worker-3 does not fit: 2 node(s) have too few free CPUs",
        )
        e.queued_at.FromSeconds(1_700_000_000)
        e.deadline.FromSeconds(1_700_000_600)
        return [e]

    def get_scheduler_input(self, **kw: Any) -> str:
        self._do("get_scheduler_input", **kw)
        return '{"version": 1}'

    def close(self) -> None:
        pass


def _run(argv: list[str], client: FakeClient) -> int:
    return ws.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


def _admin(argv: list[str], client: FakeClient) -> int:
    return admin.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


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
    assert spec.split() == ["worker", "b", "1", "-", "-", "-", "gpu=1"]
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
    assert client.calls[-1] == ("list_clusters", ((), {"include_terminated": True}))
    assert _run(["-o", "json", "cluster", "stop", "mpi", "--wait", "--timeout", "7"], client) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["state"] == "STOPPED" and out.err == ""
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


# -- ws-admin: nodes, queue, schedule --------------------------------------------------


def test_admin_node_commands(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _admin(["node", "drain", "n1"], client) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["n1", "DRAINING"]
    assert _admin(["-o", "json", "node", "enable", "n1"], client) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "READY"
    assert _admin(["node", "remove", "n1"], client) == 0
    assert capsys.readouterr().out == "removed node n1\n"
    assert [c[0] for c in client.calls] == ["drain_node", "enable_node", "remove_node"]
    refused = FakeClient(fail=errors.FailedPrecondition("node n1 still holds 2 workspace(s)"))
    assert _admin(["node", "remove", "n1"], refused) == 1
    assert capsys.readouterr().err == "ws-admin: error: node n1 still holds 2 workspace(s)\n"


def test_admin_queue(capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(["queue"], FakeClient()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "POSITION",
        "KIND",
        "NAME",
        "OWNER",
        "CPUS",
        "MEMORY_MIB",
        "QUEUED",
        "DEADLINE",
        "REASON",
    ]
    assert lines[1].split()[:8] == [
        "1",
        "cluster",
        "big",
        "ana",
        "34",
        "16640",
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:23:20Z",
    ]
    assert lines[1].endswith("2 node(s) have too few free CPUs")
    assert _admin(["queue", "-o", "json"], FakeClient()) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    assert (entry["kind"], entry["position"], entry["memory_mib"]) == ("cluster", 1, 16640)


def test_admin_schedule_dump(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    argv = shlex.split(
        "schedule dump --cpus 2 --memory-mib 512 --network a --network b --image img "
        "--require gpu=1"
    )
    assert _admin(argv, client) == 0
    assert capsys.readouterr().out == '{"version": 1}\n'
    assert client.calls[0][1][1] == {
        "cpus": 2,
        "memory_mib": 512,
        "networks": ["a", "b"],
        "image": "img",
        "requirements": {"gpu": "1"},
    }
    assert _admin(["schedule", "dump"], client) == 0
    assert client.calls[1][1][1]["cpus"] == 0


SCHEDULER_INPUT: dict[str, Any] = {
    "version": 1,
    "config": {"policy": "pack"},
    "affinity": "NONE",
    "nodes": [
        {
            "name": "n1",
            "state": "READY",
            "cpus": 4,
            "memory_mib": 4096,
            "used_cpus": 0,
            "used_memory_mib": 0,
            "hypervisor": "kvm",
            "labels": {},
            "networks": ["default"],
            "cached_digests": [],
        }
    ],
    "requests": [
        {
            "member": "request",
            "cpus": 1,
            "memory_mib": 256,
            "networks": ["default"],
            "digests": [],
            "requirements": {},
        }
    ],
}


def _no_client(_s: str | None) -> Client:
    raise AssertionError("schedule explain must not contact the service")


def test_admin_schedule_explain_is_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(SCHEDULER_INPUT))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 0
    out = capsys.readouterr().out
    assert out.startswith("Placement: placed all 1 request(s)") and "n1" in out
    assert admin.main(["schedule", "explain", str(path), "-o", "json"], connect=_no_client) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["placed"] is True and data["placements"][0]["node"] == "n1"

    gpu = copy.deepcopy(SCHEDULER_INPUT)
    gpu["requests"][0]["requirements"] = {"gpu": "1"}
    path.write_text(json.dumps(gpu))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out and "gpu=1" in captured.out
    assert captured.err.startswith("ws-admin: error: does not fit")
    assert captured.err.count("\n") == 1

    path.write_text("{}")
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    assert capsys.readouterr().err.startswith(f"ws-admin: error: {path}: ")
    assert admin.main(["schedule", "explain", str(tmp_path / "no")], connect=_no_client) == 1
    assert "No such file or directory" in capsys.readouterr().err


def test_admin_parsing_new_commands() -> None:
    p = admin.build_parser(admin.Commands(lambda _s: None))  # type: ignore[arg-type, return-value]
    a = p.parse_args(["node", "drain", "n1", "-o", "json"])
    assert (a.node_command, a.name, a.output) == ("drain", "n1", "json")
    a = p.parse_args(["schedule", "dump", "--require", "gpu=1", "--require", "os=linux"])
    assert a.require == [("gpu", "1"), ("os", "linux")] and a.cpus is None
    for bad in (
        ["node", "drain"],
        ["schedule"],
        ["schedule", "explain"],
        ["schedule", "dump", "--cpus", "0"],
        ["schedule", "dump", "--require", "gpu"],
    ):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


# -- the client against in-process fake servicers ----------------------------------------


class FakeClusters(clusters_pb2_grpc.ClustersServicer):
    def __init__(self) -> None:
        self.creates: list[clusters_pb2.CreateClusterRequest] = []
        self.fail_creates = 0
        self.states: list[tuple[int, int]] = [
            (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING)
        ]
        self.gets = 0

    def CreateCluster(self, request: Any, context: Any) -> clusters_pb2.Cluster:
        self.creates.append(request)
        if self.fail_creates:
            self.fail_creates -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "failed to connect: connection reset")
        c = _cluster(CS.CLUSTER_STATE_STARTING)
        c.request_id = request.request_id
        return c

    def GetCluster(self, request: Any, context: Any) -> clusters_pb2.Cluster:
        if request.id not in ("c1", "mpi"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no cluster {request.id!r}")
        state, member = self.states[min(self.gets, len(self.states) - 1)]
        self.gets += 1
        c = _cluster(state, member)
        c.reason = "mpi-worker-0 failed" if state == CS.CLUSTER_STATE_FAILED else ""
        return c


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def DrainNode(self, request: Any, context: Any) -> admin_pb2.Node:
        self.requests.append(request)
        return admin_pb2.Node(name=request.name, state=admin_pb2.NODE_STATE_DRAINING)

    def GetSchedulerInput(self, request: Any, context: Any) -> admin_pb2.SchedulerInput:
        self.requests.append(request)
        return admin_pb2.SchedulerInput(json='{"version": 1}')

    def ListQueue(self, request: Any, context: Any) -> admin_pb2.ListQueueResponse:
        return admin_pb2.ListQueueResponse(entries=[admin_pb2.QueueEntry(name="q", position=1)])


class FakeWorkspaces(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self) -> None:
        self.creates: list[workspaces_pb2.CreateWorkspaceRequest] = []

    def CreateWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        self.creates.append(request)
        return common_pb2.Workspace(id="w1", state=WS.WORKSPACE_STATE_PENDING)


Served = tuple[Client, FakeClusters, FakeAdmin, FakeWorkspaces]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = rpc.server(8)
    csvc, asvc, wsvc = FakeClusters(), FakeAdmin(), FakeWorkspaces()
    clusters_pb2_grpc.add_ClustersServicer_to_server(csvc, server)
    admin_pb2_grpc.add_AdminServicer_to_server(asvc, server)
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(wsvc, server)
    address = f"unix:{tmp_path}/s.sock"
    rpc.bind(server, address)
    server.start()
    client = Client(address, timeout_s=5)
    try:
        yield client, csvc, asvc, wsvc
    finally:
        client.close()
        server.stop(0).wait()


def test_create_cluster_adds_a_request_id_and_retries_once(served: Served) -> None:
    client, csvc, _, _ = served
    req = clusters_pb2.CreateClusterRequest(
        name="mpi", members=[clusters_pb2.ClusterMember(role="a", image="i")]
    )
    csvc.fail_creates = 1
    c = client.create_cluster(req)
    first, second = csvc.creates
    assert first.request_id and first.request_id == second.request_id == c.request_id
    assert req.request_id == ""  # the caller's message is left alone
    csvc.creates.clear()
    csvc.fail_creates = 2
    with pytest.raises(errors.Unavailable):
        client.create_cluster(req, request_id="mine")
    assert [r.request_id for r in csvc.creates] == ["mine", "mine"]


def test_create_cluster_from_keywords(served: Served) -> None:
    client, csvc, _, _ = served
    client.create_cluster(
        name="mpi",
        members=[
            {"role": "head", "image": "a", "networks": ("default",), "requirements": {"gpu": 1}},
            clusters_pb2.ClusterMember(role="worker", image="b", count=16),
        ],
        affinity="hard-anti",
        on_failure="teardown",
        wait_for_capacity_s=60,
    )
    sent = csvc.creates[0]
    assert (sent.name, sent.affinity, sent.on_failure, sent.wait_for_capacity_s) == (
        "mpi",
        clusters_pb2.AFFINITY_HARD_ANTI,
        clusters_pb2.FAILURE_POLICY_TEARDOWN,
        60,
    )
    assert list(sent.members[0].networks) == ["default"]
    assert dict(sent.members[0].requirements) == {"gpu": "1"}
    assert sent.members[1].count == 16 and len(sent.request_id) == 36
    with pytest.raises(TypeError, match="not both"):
        client.create_cluster(sent, name="x")
    with pytest.raises(ValueError, match="not one of"):
        client.create_cluster(name="x", affinity="diagonal")


def test_wait_for_cluster_state(served: Served) -> None:
    client, csvc, _, _ = served
    csvc.states = [
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING),
        (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING),
    ]
    seen: list[tuple[int, int]] = []
    c = client.wait_for_cluster_state(
        "mpi",
        [CS.CLUSTER_STATE_RUNNING],
        10,
        lambda c: seen.append((c.state, c.members[0].state)),
        poll_s=0.01,
    )
    assert c.state == CS.CLUSTER_STATE_RUNNING and csvc.gets == 4
    assert seen == [  # only changes, members included
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_SCHEDULED),
        (CS.CLUSTER_STATE_STARTING, WS.WORKSPACE_STATE_STARTING),
        (CS.CLUSTER_STATE_RUNNING, WS.WORKSPACE_STATE_RUNNING),
    ]


def test_wait_for_cluster_state_fails_and_times_out(served: Served) -> None:
    client, csvc, _, _ = served
    csvc.states = [(CS.CLUSTER_STATE_FAILED, WS.WORKSPACE_STATE_FAILED)]
    with pytest.raises(
        ClusterWaitFailed, match="cluster mpi is FAILED: mpi-worker-0 failed"
    ) as exc:
        client.wait_for_cluster_state("mpi", [CS.CLUSTER_STATE_RUNNING], 5, poll_s=0.01)
    assert exc.value.cluster.state == CS.CLUSTER_STATE_FAILED
    # FAILED can be waited for
    got = client.wait_for_cluster_state("mpi", [CS.CLUSTER_STATE_FAILED], 5, poll_s=0.01)
    assert got.state == CS.CLUSTER_STATE_FAILED
    csvc.gets, csvc.states = 0, [(CS.CLUSTER_STATE_PENDING, WS.WORKSPACE_STATE_PENDING)]
    start = time.monotonic()
    with pytest.raises(ClusterWaitTimeout, match="it is PENDING"):
        client.wait_for_cluster_state("c1", [CS.CLUSTER_STATE_RUNNING], 0.3, poll_s=0.05)
    assert time.monotonic() - start < 3
    gone = client.wait_for_cluster_state("gone", [CS.CLUSTER_STATE_TERMINATED], 1)
    assert gone.state == CS.CLUSTER_STATE_TERMINATED and gone.id == "gone"
    with pytest.raises(errors.NotFound, match="cluster gone no longer exists"):
        client.wait_for_cluster_state("gone", [CS.CLUSTER_STATE_RUNNING], 1)


def test_admin_and_workspace_rpcs(served: Served) -> None:
    client, _, asvc, wsvc = served
    assert client.drain_node("n1").state == admin_pb2.NODE_STATE_DRAINING
    text = client.get_scheduler_input(
        cpus=2, memory_mib=64, networks=["a"], image="i", requirements={"gpu": "1"}
    )
    assert text == '{"version": 1}'
    sent = asvc.requests[1]
    assert (sent.cpus, sent.memory_mib, list(sent.networks), sent.image) == (2, 64, ["a"], "i")
    assert dict(sent.requirements) == {"gpu": "1"}
    assert [e.name for e in client.list_queue()] == ["q"]
    client.create_workspace("img", requirements={"hypervisor": "xen"}, wait_for_capacity_s=30)
    req = wsvc.creates[0]
    assert dict(req.requirements) == {"hypervisor": "xen"} and req.wait_for_capacity_s == 30
