"""The whole loop over real gRPC: service + fake-driver agents."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.functional.harness import WS, Site, wait_for
from workspace.cli import ws
from workspace.client import Client
from workspace.domain.states import Observed
from workspace.v1 import admin_pb2, common_pb2, workspaces_pb2


def console(site: Site, ref: str) -> str:
    req = workspaces_pb2.GetConsoleRequest(id=ref)
    return site.stubs.ws.GetConsole(req).data.decode()


def test_create_runs_with_address_from_the_pool(ready_site: Site) -> None:
    s = ready_site.stubs
    w = s.create(name="alpha", cpus=2, memory_mib=1024)
    assert w.state == WS.WORKSPACE_STATE_SCHEDULED
    assert w.node == "node1"
    w = s.wait_state("alpha", WS.WORKSPACE_STATE_RUNNING)
    assert [n.network for n in w.nics] == ["default"]
    ip = w.nics[0].ip
    assert ip == "10.213.0.2"  # first address after the gateway
    assert w.nics[0].mac.startswith("52:54:00:")
    # the (fake) guest prints the address it got, as the real appliance does
    wait_for(lambda: f"WORKSPACE-READY ip={ip} hostname=alpha" in console(ready_site, w.id))
    node = s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert node.used_cpus == 2
    assert node.used_memory_mib > 1024  # RAM plus the hypervisor overhead


def test_stop_start_pause_resume_reboot_destroy(ready_site: Site) -> None:
    s = ready_site.stubs
    w = s.create(name="life")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)

    s.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id, timeout_s=5))
    s.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)
    s.ws.StartWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    s.ws.PauseWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_PAUSED)
    s.ws.ResumeWorkspace(s.ref(w.id))
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)

    # booted by create and by start: two READY lines reach the service's copy of the console
    wait_for(lambda: console(ready_site, w.id).count("WORKSPACE-READY") == 2)
    s.ws.RebootWorkspace(s.ref(w.id))
    wait_for(
        lambda: console(ready_site, w.id).count("WORKSPACE-READY") == 3,
        what="another READY line after reboot",
    )
    assert s.get(w.id).state == WS.WORKSPACE_STATE_RUNNING

    s.ws.DestroyWorkspace(s.ref(w.id))
    gone = s.wait_state(w.id, WS.WORKSPACE_STATE_TERMINATED)
    assert gone.desired_state == common_pb2.DESIRED_STATE_TERMINATED
    agent = ready_site.agents["node1"]
    assert agent.driver.get(w.id) is None
    assert not agent.files.dir(w.id).exists()  # overlay and console removed
    node = s.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert (node.used_cpus, node.used_memory_mib) == (0, 0)
    net = s.admin.ListNetworks(admin_pb2.ListNetworksRequest()).networks[0]
    assert net.allocated == 0
    listed = s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    assert w.id not in [x.id for x in listed.workspaces]
    listed = s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(include_terminated=True))
    assert w.id in [x.id for x in listed.workspaces]


def test_stop_forces_power_off_after_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", fake={"ignore_shutdown": ["stubborn"]})
        w = site.stubs.create(name="stubborn")
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id, timeout_s=1))
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)
        wait_for(lambda: "power off (forced)" in console(site, w.id), what="forced power off")
        # The owner learns why the stop took the whole timeout: on the workspace and in
        # its events; a start asks something new and the reason goes.
        said = "did not power off within 1 s of the shutdown request: powered off"
        wait_for(lambda: site.stubs.get(w.id).reason == said, what="the reason")
        with Client(site.address) as c:
            stopped = [e for e in c.watch_workspace_events(w.id) if e.state == "STOPPED"]
        assert stopped and said in stopped[-1].reason
        site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=w.id))
        assert site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING).reason == ""
    finally:
        site.close()


def test_a_forced_stop_while_a_stop_waits_ends_that_wait_without_blaming_the_guest(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """README's `ws stop alpha --force` "pulls the plug, also while a stop still waits":
    on the fake driver too the plug ends the wait for the guest, as libvirt's does. It
    went on to the end of ``ignored_wait_s`` and then said on the workspace that the
    guest "did not power off within 600 s of the shutdown request" (the stop's timeout,
    which had not passed): the owner who forced it was told a timeout ran out."""
    site = Site(tmp_path)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1", fake={"ignore_shutdown": ["stubborn"], "ignored_wait_s": 20})
        w = site.stubs.create(name="stubborn")
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)

        def ws_cli(*argv: str) -> tuple[int, str, str]:
            code = ws.main(list(argv), connect=lambda _s: Client(site.address))
            out, err = capsys.readouterr()
            return code, out, err

        assert ws_cli("stop", "stubborn", "--timeout", "600")[0] == 0
        # The node waits for the guest now (its stop's timeout: 600 s, at most 20 here).
        status = site.agents["node1"].executor.status
        wait_for(lambda: status.get(w.id) == (Observed.STOPPING, ""), what="the node's stop")
        code, out, err = ws_cli("-o", "json", "stop", "stubborn", "--force", "--wait")
        assert code == 0, err
        stopped = json.loads(out)
        assert stopped["state"] == "STOPPED"
        assert "did not power off" not in stopped["reason"]
        wait_for(lambda: "power off (forced)" in console(site, w.id), what="the plug pulled")
    finally:
        site.close()


def test_create_is_idempotent_by_request_id(ready_site: Site) -> None:
    s = ready_site.stubs
    a = s.create(name="idem", request_id="req-1")
    b = s.create(name="idem", request_id="req-1")
    assert a.id == b.id
    with pytest.raises(grpc.RpcError) as err:
        s.create(name="idem", request_id="req-1", cpus=4)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "req-1" in err.value.details()
    listed = s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    assert [w.id for w in listed] == [a.id]


def test_watch_streams_state_changes(ready_site: Site) -> None:
    s = ready_site.stubs
    seen: list[int] = []
    got_running = threading.Event()
    call = s.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest())

    def reader() -> None:
        try:
            for ev in call:
                seen.append(ev.workspace.state)
                if ev.workspace.state == WS.WORKSPACE_STATE_RUNNING:
                    got_running.set()
        except grpc.RpcError:
            pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    s.create(name="watched")
    assert got_running.wait(20)
    call.cancel()
    assert seen[0] == WS.WORKSPACE_STATE_SCHEDULED
    assert WS.WORKSPACE_STATE_STARTING in seen


def test_health_and_reflection(ready_site: Site) -> None:
    health = health_pb2_grpc.HealthStub(ready_site.stubs.channel)
    resp = health.Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(ready_site.stubs.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    names = {
        s.name
        for r in refl.ServerReflectionInfo(iter([req]))
        for s in r.list_services_response.service
    }
    assert "workspace.v1.Workspaces" in names
    # Agents have a server of their own (node_listen): the Nodes API is not on the clients'.
    assert "workspace.node.v1.Nodes" not in names
    node_health = health_pb2_grpc.HealthStub(ready_site.stubs.node_channel)
    resp = node_health.Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_workspaces_spread_over_several_agents(site: Site) -> None:
    site.stubs.network()
    site.stubs.import_image("img")
    for n in ("node1", "node2", "node3"):
        site.add_agent(n, cpus=2, memory_mib=2048)
    ids = [site.stubs.create(name=f"w{i}", cpus=2, memory_mib=1024).id for i in range(3)]
    nodes = set()
    for wid in ids:
        w = site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING)
        nodes.add(w.node)
    # 2048 MiB nodes hold one 1024 MiB VM each once the hypervisor overhead is counted
    assert nodes == {"node1", "node2", "node3"}
    for wid in ids:
        assert site.agents[site.stubs.get(wid).node].driver.get(wid) is not None
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.create(name="w-extra", cpus=2, memory_mib=1024)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3 node(s) have too little free memory" in err.value.details()


def test_domain_changed_behind_the_agents_back_is_repaired_and_reported(
    ready_site: Site,
) -> None:
    s = ready_site.stubs
    w = s.create(name="drift")
    s.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    driver = ready_site.agents["node1"].driver
    wait_for(lambda: ready_site.agents["node1"].executor.seen(w.id) is not None)

    driver.destroy(w.id)  # as `virsh destroy` would
    got = wait_for(
        lambda: "found shut off" in (x := s.get(w.id)).reason and x,
        what="the repair to be reported",
    )
    assert got.state == WS.WORKSPACE_STATE_RUNNING
    assert driver.get(w.id).state.value == "running"  # type: ignore[union-attr]

    driver.undefine(w.id)  # as `virsh undefine` + destroy would
    got = wait_for(
        lambda: "disappeared" in (x := s.get(w.id)).reason and x,
        what="the re-creation to be reported",
    )
    wait_for(lambda: s.get(w.id).state == WS.WORKSPACE_STATE_RUNNING)
    assert driver.get(w.id) is not None
    assert len(driver.list_domains()) == 1

    # a stop asked by the owner is not a repair: the note goes away
    s.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
    stopped = s.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)
    assert stopped.reason == ""


def test_list_pages_through_every_workspace(ready_site: Site) -> None:
    s = ready_site.stubs
    ids = [s.create(name=f"p{i}", memory_mib=64).id for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = s.ws.ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(page_size=3, page_token=token)
        )
        assert len(resp.workspaces) <= 3
        seen.extend(w.id for w in resp.workspaces)
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert seen == ids  # oldest first, each exactly once
    assert pages == 3
    with pytest.raises(grpc.RpcError) as err:
        s.ws.ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(page_size=3, page_token="garbage!")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_page_token_is_a_position_not_a_snapshot(ready_site: Site) -> None:
    """docs/api.md, paging: workspaces destroyed or created between two pages neither
    repeat nor hide the others; the token still holds when the workspace it was taken
    after is gone."""
    s = ready_site.stubs
    ids = [s.create(name=f"q{i}", memory_mib=64).id for i in range(6)]
    first = s.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest(page_size=2))
    assert [w.id for w in first.workspaces] == ids[:2]
    # The workspace the token was taken after, and one not listed yet, are destroyed;
    # a new one is created.
    for gone in (ids[1], ids[3]):
        s.ws.DestroyWorkspace(s.ref(gone))
        s.wait_state(gone, WS.WORKSPACE_STATE_TERMINATED)
    late = s.create(name="late", memory_mib=64).id
    seen: list[str] = []
    token = first.next_page_token
    while token:
        resp = s.ws.ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(page_size=2, page_token=token)
        )
        seen.extend(w.id for w in resp.workspaces)
        token = resp.next_page_token
    assert seen == [ids[2], ids[4], ids[5], late]


@pytest.mark.parametrize("verb", ["stop", "reboot"])
def test_several_waits_that_run_out_each_say_the_whole_wait(
    ready_site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    """`ws stop|reboot A B --wait --wait-timeout 1` waits for both under one deadline:
    the second has what the first left of it, nothing once it ran out. Its error said
    "timed out after 0 s waiting for workspace ...", as if the user had given 0 s."""
    s = ready_site.stubs
    for name in ("slow-a", "slow-b"):
        s.wait_state(s.create(name=name).id, WS.WORKSPACE_STATE_RUNNING)
    driver = ready_site.agents["node1"].driver
    # The node takes longer than the wait to carry either out.
    monkeypatch.setattr(driver, "shutdown", lambda wid, timeout_s: time.sleep(3) or True)
    monkeypatch.setattr(driver, "reboot", lambda wid, timeout_s: time.sleep(3) or True)
    code = ws.main(
        [verb, "slow-a", "slow-b", "--wait", "--wait-timeout", "1"],
        connect=lambda _s: Client(ready_site.address),
    )
    _, err = capsys.readouterr()
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("ws: error: ")]
    assert [line.split(":")[2].strip() for line in lines] == ["slow-a", "slow-b"], err
    assert all(" timed out after 1 s waiting for workspace " in line for line in lines), err
