"""`ws update NAME --cpus N --memory-mib M`: a stopped workspace is resized on its node
(real gRPC, fake-driver agent): the node's claim and the project's quotas follow, the
guest has the new size from its next start, and every refusal changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site
from tests.functional.test_projects import make, refused
from workspace import scheduler
from workspace.cli import ws as ws_cli
from workspace.client import Client
from workspace.v1 import admin_pb2, common_pb2, workspaces_pb2


@pytest.fixture
def small_node(site: Site) -> Site:
    """One node of 2 CPUs (8 vCPUs to claim) and 2 GiB, the default network, `img`."""
    site.stubs.network()
    site.stubs.import_image("img")
    site.add_agent("node1", cpus=2, memory_mib=2048)
    return site


def resize(site: Site, ref: str, cpus: int = 0, memory_mib: int = 0) -> common_pb2.Workspace:
    req = workspaces_pb2.UpdateWorkspaceRequest(id=ref, cpus=cpus, memory_mib=memory_mib)
    return site.stubs.ws.UpdateWorkspace(req)


def claim(site: Site, *sizes: tuple[int, int]) -> tuple[int, int]:
    """What workspaces of these (vCPUs, MiB) claim on a node: guest memory plus the
    hypervisor's overhead (scheduler.overhead_mib)."""
    cfg = site.cfg.scheduler
    return (
        sum(c for c, _ in sizes),
        sum(m + scheduler.overhead_mib(cfg, m, c) for c, m in sizes),
    )


def node_use(site: Site) -> tuple[int, int]:
    (node,) = site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    return node.used_cpus, node.used_memory_mib


def guest(site: Site, name: str, *argv: str) -> str:
    with Client(site.address) as c:
        return c.exec(name, list(argv)).stdout.decode()


def stopped(site: Site, **kw: Any) -> common_pb2.Workspace:
    w = site.stubs.create(**kw)
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
    return site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)


def test_a_stopped_workspace_grows_and_its_guest_sees_it_at_the_next_start(
    small_node: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = small_node
    w = stopped(site, name="w", cpus=1, memory_mib=512)
    assert node_use(site) == claim(site, (1, 512))
    code = ws_cli.main(
        ["update", "w", "--cpus", "3", "--memory-mib", "1024", "-o", "json"],
        connect=lambda _s: Client(site.address),
    )
    assert code == 0
    shown = capsys.readouterr().out
    assert '"cpus": 3' in shown and '"memory_mib": 1024' in shown
    assert node_use(site) == claim(site, (3, 1024))
    got = site.stubs.get(w.id)
    assert (got.cpus, got.memory_mib, got.state) == (3, 1024, WS.WORKSPACE_STATE_STOPPED)

    site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    assert guest(site, "w", "nproc") == "3\n"
    assert guest(site, "w", "cat", "/proc/meminfo") == f"MemTotal:       {1024 * 1024} kB\n"

    # Smaller again: the claim shrinks with it.
    site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)
    resize(site, "w", memory_mib=256)
    assert node_use(site) == claim(site, (3, 256))
    events = site.stubs.admin.WatchEvents(admin_pb2.WatchEventsRequest())
    updated = [e.reason for e in events if e.kind == "workspace.updated"]
    assert updated == ["cpus 1 -> 3; memory_mib 512 -> 1024", "memory_mib 1024 -> 256"]


def test_only_a_stopped_workspace_is_resized(small_node: Site) -> None:
    site = small_node
    w = site.stubs.create(name="live", memory_mib=512)
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    why = refused(lambda: resize(site, "live", cpus=2), grpc.StatusCode.FAILED_PRECONDITION)
    assert why == (
        "workspace live is RUNNING: its size changes only while it is STOPPED "
        "(`ws stop live --wait` first)"
    )
    assert site.stubs.get(w.id).cpus == 1 and node_use(site) == claim(site, (1, 512))
    assert guest(site, "live", "nproc") == "1\n"


@pytest.mark.parametrize(
    ("ask", "code", "says"),
    [
        ({"memory_mib": 4096}, grpc.StatusCode.RESOURCE_EXHAUSTED, "does not fit on its node"),
        ({"cpus": 9}, grpc.StatusCode.RESOURCE_EXHAUSTED, "does not fit on its node node1"),
        # How much the node holds of how much (it said only "too few free CPUs").
        (
            {"cpus": 9},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "(its other workspaces hold 2 of its 8 vCPUs and ",
        ),
        ({"cpus": 9}, grpc.StatusCode.RESOURCE_EXHAUSTED, "this one would claim 9 vCPUs and "),
        ({"cpus": 65}, grpc.StatusCode.INVALID_ARGUMENT, "cpus must be between 1 and 64"),
        ({"memory_mib": 1}, grpc.StatusCode.INVALID_ARGUMENT, "memory_mib must be between"),
    ],
)
def test_a_size_the_node_or_the_limits_refuse_changes_nothing(
    small_node: Site, ask: dict[str, int], code: grpc.StatusCode, says: str
) -> None:
    site = small_node
    other = stopped(site, name="other", cpus=2, memory_mib=1024)
    w = stopped(site, name="w", cpus=1, memory_mib=512)
    before = claim(site, (2, 1024), (1, 512))
    assert node_use(site) == before
    assert says in refused(lambda: resize(site, "w", **ask), code)
    assert (site.stubs.get(w.id).cpus, site.stubs.get(w.id).memory_mib) == (1, 512)
    assert site.stubs.get(other.id).cpus == 2
    assert node_use(site) == before
    # What still fits beside the other one does: all 8 vCPUs the node may promise.
    assert resize(site, "w", cpus=6).cpus == 6
    assert node_use(site) == claim(site, (2, 1024), (6, 512))


def test_the_projects_quota_counts_the_new_size(ready_site: Site) -> None:
    site = ready_site
    make(site, vcpus=3)
    w = stopped(site, name="q", project="p", cpus=2)
    why = refused(lambda: resize(site, "q", cpus=4), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "cannot resize q" in why and "vcpus quota of project p" in why
    assert site.stubs.get(w.id).cpus == 2
    assert resize(site, "q", cpus=3).cpus == 3
    # The admin lowers the quota under what the project uses: a shrink still goes
    # (it was refused for the quota it brings the project back towards).
    with Client(site.address) as admin:
        admin.set_project("p", quota={"vcpus": 1})
    assert resize(site, "q", cpus=2).cpus == 2
    why = refused(lambda: resize(site, "q", memory_mib=4096), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "vcpus quota of project p" in why  # growing anything still checks every quota


def test_the_cli_says_what_it_takes(small_node: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site = small_node
    stopped(site, name="w")

    def run(*argv: str) -> int:
        try:
            return ws_cli.main(list(argv), connect=lambda _s: Client(site.address))
        except SystemExit as exc:
            return int(exc.code or 0)

    assert run("update", "w") == 2
    assert "--cpus or --memory-mib" in capsys.readouterr().err
    assert run("update", "w", "--cpus", "0") == 2
    capsys.readouterr()
    assert run("update", "w", "--cpus", "2") == 0
    assert "2" in [
        line.split()[-1] for line in capsys.readouterr().out.splitlines() if "cpus" in line
    ]
