"""A ``Client`` argument that must be one of a few words (a project's ``on_expiry``, a
quota's name, ``get_usage``'s ``by``): another word is ``BadArgument`` naming those there
are, a ``WorkspaceError``, and nothing is sent."""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from workspace import errors, rpc
from workspace.client import DS, Client
from workspace.v1 import (
    common_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)


class Projects(projects_pb2_grpc.ProjectsServicer):
    """Answers each request with the project it asks for, and keeps it."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def CreateProject(self, request: Any, context: Any) -> projects_pb2.Project:
        self.got.append(request)
        return request

    def SetProjectDefaults(self, request: Any, context: Any) -> projects_pb2.Project:
        self.got.append(request)
        quota = projects_pb2.Quota()
        quota.MergeFrom(request.quota)
        quota.MergeFrom(request.preemptible_quota)
        return projects_pb2.Project(name=request.project, quota=quota)


@pytest.fixture
def projects(tmp_path: Path) -> Iterator[tuple[Client, Projects]]:
    server = rpc.server(2)
    svc = Projects()
    projects_pb2_grpc.add_ProjectsServicer_to_server(svc, server)
    address = f"unix:{tmp_path}/p.sock"
    rpc.bind(server, address)
    server.start()
    try:
        with Client(address, timeout_s=5) as client:
            yield client, svc
    finally:
        server.stop(0).wait()


def test_a_lease_action_that_is_not_one_is_a_wrong_argument(
    projects: tuple[Client, Projects],
) -> None:
    """``create_project(on_expiry="delete")`` and ``set_project(leases=(..., "remove"))``
    raised a bare ``KeyError: 'delete'``, which a program catching ``WorkspaceError`` let
    through and which did not say what the choices are."""
    client, svc = projects
    with pytest.raises(errors.BadArgument, match="on_expiry must be one of stop, destroy"):
        client.create_project("p", on_expiry="delete")
    with pytest.raises(errors.WorkspaceError, match="not 'remove'") as info:
        client.set_project("p", leases=(3600, 7200, "remove"))
    assert info.value.code is None
    assert svc.got == []
    made = client.create_project("p", on_expiry="destroy")
    assert made.on_expiry == projects_pb2.LEASE_ACTION_DESTROY


def test_a_quota_is_named_alike_in_create_and_set(projects: tuple[Client, Projects]) -> None:
    """``create_project`` took a quota by its Quota field (``memory_mib``) as well as by
    its ``ws-admin`` name (``memory-mib``); ``set_project`` refused the field ("not a
    quota: memory_mib") that create had just taken. Both take both; any other name is
    refused naming the quotas (create said protobuf's "Protocol message Quota has no
    ... field")."""
    client, svc = projects
    assert client.create_project("p", {"memory_mib": 4096}).quota.memory_mib == 4096
    got = client.set_project("p", quota={"memory_mib": 8192, "preemptible_vcpus": 4})
    assert (got.quota.memory_mib, got.quota.preemptible_vcpus) == (8192, 4)
    got = client.set_project("p", quota={"memory-mib": 2048})
    assert got.quota.memory_mib == 2048
    sent = len(svc.got)
    for call in (
        lambda: client.create_project("q", {"cpus": 2}),
        lambda: client.set_project("p", quota={"cpus": 2}),
    ):
        with pytest.raises(errors.BadArgument, match=r"not a quota: cpus; the quotas are "):
            call()
    assert len(svc.got) == sent


def test_a_usage_grouping_that_is_not_one_is_a_wrong_argument(
    projects: tuple[Client, Projects],
) -> None:
    """``get_usage(by="owner")`` said protobuf's "Enum UsageGrouping has no value defined
    for name 'USAGE_GROUPING_OWNER'": the words to give are not those."""
    client, _ = projects
    with pytest.raises(
        errors.BadArgument, match="by must be one of workspace, user, project, not 'owner'"
    ):
        client.get_usage(by="owner")
    with pytest.raises(errors.BadArgument, match="not 2"):  # an AttributeError before
        client.get_usage(by=2)  # type: ignore[arg-type]


def test_a_wait_for_states_it_cannot_meet_is_refused_before_it_begins(
    projects: tuple[Client, Projects],
) -> None:
    """``wait_for_cluster_state(id, ["RUNNING"], 600)`` polled the cluster for the whole
    600 s (a name is never equal to a state's number) and only then failed on the name;
    ``wait_for_state(id, [])`` waited out its timeout. Both are refused before anything
    is read (this service has no Workspaces or Clusters: a read would be refused)."""
    client, _ = projects
    with pytest.raises(errors.BadArgument, match=r"CS.CLUSTER_STATE_RUNNING; not 'RUNNING'"):
        client.wait_for_cluster_state("c", ["RUNNING"], 600)  # type: ignore[list-item]
    with pytest.raises(errors.BadArgument, match=r"WS.WORKSPACE_STATE_RUNNING; none was given"):
        client.wait_for_state("w", [], 600)
    with pytest.raises(errors.BadArgument, match=r"not 'RUNNING'"):
        client.wait_for_state("w", ["RUNNING"], 600)  # type: ignore[list-item]


def test_a_wait_given_a_workspace_state_as_its_desired_one_is_refused_before_it_begins(
    projects: tuple[Client, Projects],
) -> None:
    """``wait_for_state(id, [PAUSED], desired=WS.WORKSPACE_STATE_PAUSED)`` (the README's
    DESIRED_STATE_PAUSED, taken from WS: it is not there) failed at its first look at the
    workspace with "Enum DesiredState has no name defined for value 6". It is refused
    before anything is read, naming where the right numbers are."""
    client, _ = projects
    paused = [common_pb2.WORKSPACE_STATE_PAUSED]
    with pytest.raises(
        errors.BadArgument,
        match=r"DS.DESIRED_STATE_PAUSED .*; not 6 \(WS.WORKSPACE_STATE_PAUSED, a WorkspaceState\)$",
    ):
        client.wait_for_state("w", paused, 60, desired=common_pb2.WORKSPACE_STATE_PAUSED)
    # A name is no state either; nor is it called a WorkspaceState.
    with pytest.raises(
        errors.BadArgument, match=r"from workspace.client import DS`\); not 'PAUSED'$"
    ):
        client.wait_for_state("w", paused, 60, desired="PAUSED")  # type: ignore[arg-type]
    # Past the check, the wait reads the workspace: this service has none.
    with pytest.raises(errors.WorkspaceError) as info:
        client.wait_for_state("w", paused, 60, desired=DS.DESIRED_STATE_PAUSED)
    assert not isinstance(info.value, errors.BadArgument)


class _NumpyLikeInt:
    """An integer of another library (numpy's int64, say): a numbers.Integral, not an int."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    __int__ = __index__

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return int(self) == other


numbers.Integral.register(_NumpyLikeInt)


def test_numbers_of_other_libraries_are_taken_as_the_numbers_they_are(
    projects: tuple[Client, Projects], tmp_path: Path
) -> None:
    """A state or a timeout a program got from numpy (int64, float64) or as a Fraction is
    a number: the checks the client makes before a call took only Python's int and float,
    and refused them as BadArgument."""
    client, _ = projects
    state = _NumpyLikeInt(common_pb2.WORKSPACE_STATE_RUNNING)
    # Past the states' check, the wait reads the workspace: this service has none.
    with pytest.raises(errors.WorkspaceError) as info:
        client.wait_for_state("w", [state], 600)  # type: ignore[list-item]
    assert not isinstance(info.value, errors.BadArgument), info.value
    with Client(f"unix:{tmp_path}/none.sock", timeout_s=Fraction(1, 2)) as other:
        assert other.timeout_s == 0.5


@pytest.mark.parametrize("timeout_s", [0, -1, None, "30", float("nan")])
def test_a_client_deadline_that_is_no_time_is_a_wrong_argument(
    tmp_path: Path, timeout_s: Any
) -> None:
    """``Client(address, timeout_s=0)``, meant as "no deadline", gave every call up at
    once as ``Unavailable`` ("did not answer in time"), which a program retrying outages
    retried for minutes; ``None`` failed later in a wait with a TypeError."""
    with pytest.raises(errors.BadArgument, match=r"^Client: timeout_s must be a number of sec"):
        Client(f"unix:{tmp_path}/none.sock", timeout_s=timeout_s)
    with pytest.raises(errors.BadArgument, match="above 0"):
        Client.from_env(f"unix:{tmp_path}/none.sock", timeout_s=timeout_s)


@pytest.mark.parametrize("timeout_s", [float("inf"), 1e12, 2**31])
def test_a_client_deadline_past_grpcs_clock_is_a_wrong_argument(
    tmp_path: Path, timeout_s: float
) -> None:
    """``Client(address, timeout_s=float("inf"))``, what a program tries for "no
    deadline" once 0 is refused, passed the check, and so did 1e12: a deadline past the
    end of gRPC's clock (the year 2262) is one already passed, so every call gave up at
    once, ``Unavailable`` "did not answer in time" without having waited at all (a
    program retrying outages retried for minutes). It is refused as the CLIs refuse a
    time over 2**31 - 1 s (68 years); that much is still taken, and waits."""
    address = f"unix:{tmp_path}/none.sock"
    with pytest.raises(errors.BadArgument, match=r"^Client: timeout_s must be a number of sec"):
        Client(address, timeout_s=timeout_s)
    with pytest.raises(errors.BadArgument, match=r"at most 2147483647 \(68 years\)"):
        Client.from_env(address, timeout_s=timeout_s)
    with Client(address, timeout_s=2**31 - 1) as client, pytest.raises(errors.Unavailable) as info:
        client.health()
    assert info.value.code == "UNAVAILABLE", info.value  # nothing there: not a deadline
    assert "cannot reach the workspace service" in info.value.message


class Watched(workspaces_pb2_grpc.WorkspacesServicer):
    """A watch that gives one workspace and then stays open."""

    def WatchWorkspaces(self, request: Any, context: Any) -> Iterator[Any]:
        yield workspaces_pb2.WorkspaceEvent(
            workspace=common_pb2.Workspace(id="w1", name="alpha"), initial=True
        )
        while context.is_active():
            time.sleep(0.01)


def test_a_calls_timeout_past_grpcs_clock_is_no_bound_not_one_already_passed(
    tmp_path: Path,
) -> None:
    """``watch(timeout_s=float("inf"))`` (the events of a workspace for as long as it
    takes) gave no event at all and ended as a watch whose time is up, without a word:
    a deadline past gRPC's clock is one already passed. ``health(timeout_s=inf)`` said
    "did not answer in time" at once. A timeout of a call or a stream past it is none."""
    server = rpc.server(2)
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(Watched(), server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    address = f"unix:{tmp_path}/w.sock"
    rpc.bind(server, address)
    server.start()
    try:
        with Client(address, timeout_s=5) as client:
            for forever in (float("inf"), 1e12):
                assert client.health(timeout_s=forever) == "SERVING"
                events = client.watch(timeout_s=forever)
                try:
                    assert next(events).workspace.name == "alpha"
                finally:
                    events.close()
            assert list(client.watch(timeout_s=0)) == []  # a bound still bounds it
    finally:
        server.stop(0).wait()
