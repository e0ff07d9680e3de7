"""The site launcher's pieces (workspace/site/local.py): its configs, the run through
hostenv, stopping its processes (only ours, with their children), records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from workspace import config
from workspace.config import AgentConfig, ServiceConfig
from workspace.site import local


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
