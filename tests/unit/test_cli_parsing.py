"""ws / ws-admin without a service: parsing, rendering, address resolution, exit codes,
the client against in-process fake servicers, and the site launcher's pieces."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from workspace import config, errors, rpc
from workspace.cli import admin, render, ws
from workspace.client import Client, ServiceNotConfigured, WaitFailed, WaitTimeout, resolve_address
from workspace.config import AgentConfig, ServiceConfig
from workspace.site import local
from workspace.v1 import (
    admin_pb2,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

WS = common_pb2.WorkspaceState


def _ws(state: int = WS.WORKSPACE_STATE_RUNNING, **kw: Any) -> common_pb2.Workspace:
    base: dict[str, Any] = {"id": "w1", "name": "alpha", "image": "img", "cpus": 1}
    base.update(kw)
    return common_pb2.Workspace(state=state, memory_mib=512, **base)


# -- parsing -------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    return ws.build_parser(ws.Commands(lambda _s: None)).parse_args(argv)  # type: ignore[arg-type, return-value]


def test_global_options_before_or_after_the_subcommand() -> None:
    a = _parse(["--service", "h:1", "--output", "json", "list"])
    assert (a.service, a.output, a.all) == ("h:1", "json", False)
    a = _parse(["list", "--all", "-o", "json", "--service", "unix:/s"])
    assert (a.service, a.output, a.all) == ("unix:/s", "json", True)
    a = _parse(["-o", "json", "show", "w1"])
    assert (a.output, a.service, a.id) == ("json", None, "w1")
    a = _parse(["image", "list", "--output", "json"])
    assert a.output == "json"


def test_create_arguments() -> None:
    a = _parse(
        shlex.split(
            "create --image deb --name n --cpus 2 --memory-mib 1024 --network a "
            "--network b --request-id r1 --wait --timeout 12"
        )
    )
    assert (a.image, a.name, a.cpus, a.memory_mib) == ("deb", "n", 2, 1024)
    assert (a.network, a.request_id, a.wait, a.timeout) == (["a", "b"], "r1", True, 12.0)
    a = _parse(["create", "--image", "deb"])
    assert (a.cpus, a.network, a.wait, a.timeout) == (None, None, False, None)
    assert (a.require, a.wait_for_capacity) == (None, None)
    a = _parse(
        shlex.split(
            "create --image deb --require gpu=1 --require hypervisor=xen --wait-for-capacity 90"
        )
    )
    assert a.require == [("gpu", "1"), ("hypervisor", "xen")] and a.wait_for_capacity == 90


@pytest.mark.parametrize(
    "argv",
    [
        ["create"],  # --image is required
        ["create", "--image", "x", "--cpus", "0"],
        ["create", "--image", "x", "--cpus", "two"],
        ["create", "--image", "x", "--memory-mib", "-5"],
        ["create", "--image", "x", "--require", "gpu"],
        ["create", "--image", "x", "--require", "=1"],
        ["create", "--image", "x", "--wait-for-capacity", "-1"],
        ["create", "--image", "x", "--wait-for-capacity", "soon"],
        ["show"],
        ["frobnicate"],
        ["--output", "yaml", "list"],
        ["console", "w1", "--tail", "-1"],
        ["image"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main(argv, connect=lambda _s: pytest.fail("no client for a usage error"))
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_stop_has_shutdown_timeout_and_force() -> None:
    a = _parse(["stop", "w1", "--timeout", "5", "--force", "--wait", "--wait-timeout", "9"])
    assert (a.id, a.timeout, a.force, a.wait, a.wait_timeout) == ("w1", 5, True, True, 9.0)
    for cmd in ("start", "reboot", "pause", "resume", "destroy"):
        a = _parse([cmd, "w1", "--wait", "--timeout", "7"])
        assert (a.command, a.wait, a.timeout) == (cmd, True, 7.0)
        assert not hasattr(a, "force")


def test_admin_parsing() -> None:
    p = admin.build_parser(admin.Commands(lambda _s: None))  # type: ignore[arg-type, return-value]
    a = p.parse_args(
        shlex.split(
            "network create lab --subnet 10.9.0.0/24 --range 10.9.0.10-10.9.0.20 "
            "--dns 1.1.1.1 --dns 9.9.9.9 --mac-prefix 52:54:01 -o json"
        )
    )
    assert (a.name, a.subnet, a.range, a.dns, a.output) == (
        "lab",
        "10.9.0.0/24",
        "10.9.0.10-10.9.0.20",
        ["1.1.1.1", "9.9.9.9"],
        "json",
    )
    a = p.parse_args(["site", "up", "--dir", "/x", "--driver", "libvirt", "--virt-type", "kvm"])
    assert (a.dir, a.driver, a.virt_type) == ("/x", "libvirt", "kvm")
    a = p.parse_args(["image", "import", "img", "--appliance", "/d"])
    assert (a.file, a.appliance) == (None, "/d")
    with pytest.raises(SystemExit):
        p.parse_args(["site", "up", "--driver", "xen"])


# -- rendering -----------------------------------------------------------------------


def test_json_shortens_enums_keeps_ints_and_field_order() -> None:
    event = workspaces_pb2.WorkspaceEvent(
        workspace=_ws(desired_state=common_pb2.DESIRED_STATE_STOPPED, nics=[common_pb2.Nic()]),
        initial=True,
    )
    data = render.to_dict(event)
    w = data["workspace"]
    assert (w["state"], w["desired_state"], w["memory_mib"]) == ("RUNNING", "STOPPED", 512)
    assert list(w)[:4] == ["id", "name", "owner", "image"]
    assert w["nics"][0]["prefix_len"] == 0 and data["initial"] is True
    node = render.to_dict(admin_pb2.Node(name="n", state=admin_pb2.NODE_STATE_DRAINING))
    assert node["state"] == "DRAINING"
    part = render.to_dict(common_pb2.Partition(mode=common_pb2.PARTITION_MODE_COW))
    assert part["mode"] == "COW"
    json.dumps(data)


def test_text_tables_use_short_names() -> None:
    text = render.workspace_rows(
        [_ws(nics=[common_pb2.Nic(ip="10.0.0.2")]), _ws(WS.WORKSPACE_STATE_PAUSED, id="w2")]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "IMAGE", "CPUS", "MEMORY_MIB", "NODE", "IP"]
    assert lines[1].split() == ["w1", "alpha", "RUNNING", "img", "1", "512", "-", "10.0.0.2"]
    assert "PAUSED" in lines[2]
    show = render.workspace_text(_ws(WS.WORKSPACE_STATE_FAILED, reason="disk full"))
    assert "state       FAILED" in show and "reason      disk full" in show
    assert render.state_line(_ws()) == "alpha (w1): RUNNING"
    assert render.table(["A", "LONGER"], [["xyz", "1"]]) == "A    LONGER\nxyz  1"


# -- address resolution ----------------------------------------------------------------


def test_address_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local.SITE_ENV, str(tmp_path))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    with pytest.raises(ServiceNotConfigured, match="ws-admin site up"):
        resolve_address(None)
    local.write_record(tmp_path, local.SiteRecord(str(tmp_path), "unix:/site.sock", "fake"))
    assert resolve_address(None) == "unix:/site.sock"
    monkeypatch.setenv("WS_SERVICE", "env:1")
    assert resolve_address(None) == "env:1"
    assert resolve_address("flag:2") == "flag:2"


def test_default_site_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local.SITE_ENV, raising=False)
    assert local.default_site_dir() == Path.home() / ".local/share/workspace/site"
    monkeypatch.setenv(local.SITE_ENV, "/srv/site")
    assert local.default_site_dir() == Path("/srv/site")


# -- exit codes with a fake client -------------------------------------------------------


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def _do(self, call: str, *args: Any, **kw: Any) -> None:
        self.calls.append((call, (args, kw)))
        if self.fail is not None:
            raise self.fail

    def list_workspaces(self, include_terminated: bool = False) -> list[common_pb2.Workspace]:
        self._do("list", include_terminated=include_terminated)
        return [_ws()]

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        self._do("get", id)
        return _ws(id=id)

    def create_workspace(self, **kw: Any) -> common_pb2.Workspace:
        self._do("create", **kw)
        return _ws(WS.WORKSPACE_STATE_PENDING)

    def stop_workspace(self, id: str, timeout_s: int = 0, force: bool = False) -> Any:
        self._do("stop", id, timeout_s=timeout_s, force=force)
        return _ws(WS.WORKSPACE_STATE_STOPPING)

    def wait_for_state(self, id: str, states: Any, timeout_s: float, on_change: Any) -> Any:
        self._do("wait", id, states=list(states), timeout_s=timeout_s)
        final = _ws(next(iter(states)))
        if on_change is not None:
            on_change(final)
        return final

    def get_console(self, id: str, tail_bytes: int = 0) -> bytes:
        self._do("console", id, tail_bytes=tail_bytes)
        return b"boot\nREADY"

    def close(self) -> None:
        self.closed = True


def _run(argv: list[str], client: FakeClient) -> int:
    return ws.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFound("no workspace 'x'"), 1),
        (errors.InvalidArgument("cpus must be between 1 and 64"), 1),
        (errors.FailedPrecondition("already destroyed"), 1),
        (errors.Unavailable("cannot reach the workspace service at h:1"), 3),
        (ServiceNotConfigured("no workspace service configured"), 3),
        (WaitTimeout("timed out"), 1),
    ],
)
def test_errors_are_one_line_with_exit_code(
    exc: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient(fail=exc)
    assert _run(["show", "x"], client) == code
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"ws: error: {exc}\n"
    assert client.closed


def test_connect_failure_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    def connect(_s: str | None) -> Client:
        raise ServiceNotConfigured("no workspace service configured: pass --service")

    assert ws.main(["list"], connect=connect) == 3
    assert capsys.readouterr().err.startswith("ws: error: no workspace service configured")


def test_list_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["list", "--all", "--output", "json"], client) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["state"] == "RUNNING" and data[0]["memory_mib"] == 512
    assert client.calls == [("list", ((), {"include_terminated": True}))]
    assert _run(["list"], FakeClient()) == 0
    assert capsys.readouterr().out.split()[8:11] == ["w1", "alpha", "RUNNING"]


def test_create_wait_reports_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    argv = ["create", "--image", "img", "--cpus", "2", "--wait", "--timeout", "5"]
    assert _run(argv, client) == 0
    create, wait = client.calls
    assert create[1][1]["cpus"] == 2 and create[1][1]["request_id"] is None
    assert wait[1][1] == {"states": [WS.WORKSPACE_STATE_RUNNING], "timeout_s": 5.0}
    out = capsys.readouterr()
    assert "state       RUNNING" in out.out
    assert out.err == "ws: alpha (w1): RUNNING\n"


def test_stop_wait_json(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["-o", "json", "stop", "w1", "--timeout", "5", "--force", "--wait"], client) == 0
    stop, wait = client.calls
    assert stop[1] == (("w1",), {"timeout_s": 5, "force": True})
    assert wait[1][1]["states"] == [WS.WORKSPACE_STATE_STOPPED]
    out = capsys.readouterr()
    assert json.loads(out.out)["state"] == "STOPPED" and out.err == ""


def test_console_prints_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["console", "w1", "--tail", "100"], client) == 0
    assert capsys.readouterr().out == "boot\nREADY\n"
    assert client.calls[0][1][1] == {"tail_bytes": 100}


def test_admin_usage_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    connect = lambda _s: client  # noqa: E731
    argv = ["network", "create", "n", "--subnet", "10.0.0.0/24", "--range", "10.0.0.5"]
    assert admin.main(argv, connect=connect) == 2  # type: ignore[arg-type]
    assert "--range must be START-END" in capsys.readouterr().err
    disk = tmp_path / "d.img"
    disk.write_bytes(b"x")
    argv = ["image", "import", "i", str(disk), "--appliance", str(tmp_path)]
    assert admin.main(argv, connect=connect) == 2  # type: ignore[arg-type]
    assert admin.main(["image", "import", "i"], connect=connect) == 2  # type: ignore[arg-type]
    argv = ["image", "import", "i", str(tmp_path / "missing.img")]
    assert admin.main(argv, connect=connect) == 1  # type: ignore[arg-type]
    assert "no such file" in capsys.readouterr().err
    assert client.calls == []


def test_appliance_and_format_detection(tmp_path: Path) -> None:
    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(60))
    (tmp_path / "raw.img").write_bytes(bytes(64))
    assert admin.detect_format(tmp_path / "disk.qcow2") == "qcow2"
    assert admin.detect_format(tmp_path / "raw.img") == "raw"
    spec = {
        "kernel": "vmlinuz",
        "initrd": "/abs/initrd",
        "cmdline": "console=ttyS0",
        "disk": "disk.qcow2",
        "disk_format": "qcow2",
    }
    (tmp_path / "appliance.json").write_text(json.dumps(spec))
    app = admin.read_appliance(tmp_path)
    assert app["kernel"] == str(tmp_path / "vmlinuz") and app["initrd"] == "/abs/initrd"
    assert (app["disk"], app["disk_format"]) == (str(tmp_path / "disk.qcow2"), "qcow2")


# -- the client against in-process fake servicers ----------------------------------------


class FakeWorkspaces(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self) -> None:
        self.creates: list[str] = []
        self.fail_creates = 0
        self.states = [WS.WORKSPACE_STATE_PENDING]
        self.drop_first_watch = False
        self.watches = 0

    def CreateWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        self.creates.append(request.request_id)
        if self.fail_creates:
            self.fail_creates -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "failed to connect: connection reset")
        return _ws(WS.WORKSPACE_STATE_PENDING, request_id=request.request_id)

    def GetWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        if request.id not in ("w1", "alpha"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no workspace {request.id!r}")
        return _ws(self.states[0])

    def WatchWorkspaces(self, request: Any, context: Any) -> Iterator[Any]:
        self.watches += 1
        if self.drop_first_watch and self.watches == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "socket closed")
        yield workspaces_pb2.WorkspaceEvent(workspace=_ws(self.states[0]), initial=True)
        for state in self.states[1:]:
            time.sleep(0.01)
            yield workspaces_pb2.WorkspaceEvent(workspace=_ws(state))
        while context.is_active():
            time.sleep(0.01)


class FakeImages(images_pb2_grpc.ImagesServicer):
    def __init__(self) -> None:
        self.chunks: list[int] = []

    def UploadBlob(self, request_iterator: Any, context: Any) -> images_pb2.BlobRef:
        self.chunks = [len(c.data) for c in request_iterator]
        return images_pb2.BlobRef(digest="sha256:ab", size_bytes=sum(self.chunks))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Client, FakeWorkspaces, FakeImages]]:
    server = rpc.server(8)
    wsvc, isvc = FakeWorkspaces(), FakeImages()
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(wsvc, server)
    images_pb2_grpc.add_ImagesServicer_to_server(isvc, server)
    hsvc = health.HealthServicer()
    hsvc.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hsvc, server)
    address = f"unix:{tmp_path}/s.sock"
    rpc.bind(server, address)
    server.start()
    client = Client(address, timeout_s=5)
    try:
        yield client, wsvc, isvc
    finally:
        client.close()
        server.stop(0).wait()


def test_client_health_and_errors(served: tuple[Client, FakeWorkspaces, FakeImages]) -> None:
    client, _, _ = served
    assert client.health() == "SERVING"
    with pytest.raises(errors.NotFound, match="no workspace 'nope'"):
        client.get_workspace("nope")
    with pytest.raises(errors.Unavailable, match="cannot reach the workspace service"):
        Client("unix:/nonexistent/ws.sock", timeout_s=2).list_workspaces()


def test_create_retries_once_with_the_same_request_id(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.fail_creates = 1
    w = client.create_workspace("img")
    assert len(wsvc.creates) == 2 and wsvc.creates[0] == wsvc.creates[1] == w.request_id
    wsvc.creates.clear()
    wsvc.fail_creates = 2
    with pytest.raises(errors.Unavailable):
        client.create_workspace("img", request_id="mine")
    assert wsvc.creates == ["mine", "mine"]


def test_upload_blob_streams_1mib_chunks(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    client, _, isvc = served
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    seen: list[tuple[int, int]] = []
    ref = client.upload_blob(path, lambda sent, total: seen.append((sent, total)))
    assert isvc.chunks == [1024 * 1024, 1024 * 1024, 5]
    assert ref.size_bytes == path.stat().st_size
    total = path.stat().st_size
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) == 4


def test_wait_for_state_follows_the_watch(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.states = [
        WS.WORKSPACE_STATE_PENDING,
        WS.WORKSPACE_STATE_STARTING,
        WS.WORKSPACE_STATE_RUNNING,
    ]
    wsvc.drop_first_watch = True  # the first stream drops: the wait re-opens it
    seen: list[str] = []
    w = client.wait_for_state(
        "alpha", [WS.WORKSPACE_STATE_RUNNING], 10, lambda x: seen.append(WS.Name(x.state))
    )
    assert w.state == WS.WORKSPACE_STATE_RUNNING and wsvc.watches == 2
    assert seen == [
        "WORKSPACE_STATE_PENDING",
        "WORKSPACE_STATE_STARTING",
        "WORKSPACE_STATE_RUNNING",
    ]


def test_wait_for_state_fails_and_times_out(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.states = [WS.WORKSPACE_STATE_STARTING, WS.WORKSPACE_STATE_FAILED]
    with pytest.raises(WaitFailed, match="is FAILED"):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 10)
    wsvc.states = [WS.WORKSPACE_STATE_STARTING]
    with pytest.raises(WaitTimeout, match="it is STARTING"):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 0.5)
    gone = client.wait_for_state("gone", [WS.WORKSPACE_STATE_TERMINATED], 1)
    assert gone.state == WS.WORKSPACE_STATE_TERMINATED


# -- the site launcher's pieces ---------------------------------------------------------


@pytest.mark.parametrize("driver", ["fake", "libvirt"])
def test_site_configs_load(tmp_path: Path, driver: str) -> None:
    site = local.LocalSite(tmp_path / "s", driver=driver, virt_type="qemu")
    site.dir.mkdir()
    site._write_configs("qemu+unix:///system?socket=/x/libvirt-sock")
    svc = config.load(ServiceConfig, site.service_config)
    agent = config.load(AgentConfig, site.agent_config)
    assert svc.listen == agent.service == f"unix:{site.dir}/service.sock"
    assert svc.data_dir.startswith(str(site.dir)) and agent.state_dir.startswith(str(site.dir))
    assert (agent.driver, agent.node, agent.networks[0].name) == (driver, "local", "default")
    if driver == "libvirt":
        assert agent.libvirt.virt_type == "qemu" and "libvirt-sock" in agent.libvirt.uri
        assert agent.networks[0].dhcp
    else:
        assert not agent.networks[0].dhcp and agent.networks[0].bridge_address == ""


def test_libvirt_site_runs_through_hostenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class FakeEnv:
        libvirt_uri = "qemu+unix:///system?socket=/tmp/x"

        def up(self) -> None:
            calls.append("up")

        def down(self) -> None:
            calls.append("down")

        def run_prefix(self) -> list[str]:
            return ["ip", "netns", "exec", "ns"]

    class Proc:
        pid = 0

        def poll(self) -> None:
            return None

    site = local.LocalSite(tmp_path, driver="libvirt")
    monkeypatch.setattr(site, "_hostenv", lambda ns: calls.append(ns) or FakeEnv())
    monkeypatch.setattr(site, "_spawn", lambda *a: calls.append(a) or Proc())
    for name in ("_wait_healthy", "_ensure_network", "_wait_node_ready"):
        monkeypatch.setattr(site, name, lambda *a: None)
    rec = site.up().record
    assert rec.netns == site.netns_name == calls[0] and calls[1] == "up"
    assert [c[0] for c in calls[2:]] == [local.SERVICE_MODULE, local.AGENT_MODULE]
    assert all(c[3] == ["ip", "netns", "exec", "ns"] for c in calls[2:])
    assert local.read_record(tmp_path) == rec
    calls.clear()
    assert site.down()[-1].startswith(f"network namespace {rec.netns}")
    assert calls == [rec.netns, "down"] and local.read_record(tmp_path) is None


def _fake_daemon(config_path: str) -> subprocess.Popen[bytes]:
    # Looks like our service on its command line and has a child in its session.
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    argv = [sys.executable, "-c", code, "-m", local.SERVICE_MODULE, "--config", config_path]
    return subprocess.Popen(argv, start_new_session=True)


def _session_of(pid: int) -> list[int]:
    return local._session_members(pid)


def test_stop_process_checks_the_command_line(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        out = local.stop_process(other.pid, local.SERVICE_MODULE, tmp_path / "service.toml")
        assert "no longer ours" in out and other.poll() is None
    finally:
        other.kill()
        other.wait()
    cfg = str(tmp_path / "service.toml")
    daemon = _fake_daemon(cfg)
    try:
        deadline = time.monotonic() + 10
        while len(_session_of(daemon.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local.process_matches(daemon.pid, local.SERVICE_MODULE, cfg)
        assert not local.process_matches(daemon.pid, local.AGENT_MODULE, cfg)
        out = local.stop_process(daemon.pid, local.SERVICE_MODULE, cfg, timeout_s=5)
        assert out.startswith("stopped") and "+1 child" in out
        assert daemon.poll() is not None and _session_of(daemon.pid) == []
        assert local.stop_process(daemon.pid, local.SERVICE_MODULE, cfg) == "not running"
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGKILL)


def test_down_without_a_site(tmp_path: Path) -> None:
    assert local.LocalSite(tmp_path).down() == [f"no site running in {tmp_path.resolve()}"]
    assert local.LocalSite(tmp_path).status()["state"] == "stopped"


def test_bad_record_is_an_error(tmp_path: Path) -> None:
    (tmp_path / local.SITE_FILE).write_text("{not json")
    with pytest.raises(local.SiteError, match="not a valid site record"):
        local.read_record(tmp_path)
