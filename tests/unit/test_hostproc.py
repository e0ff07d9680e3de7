"""workspace.hostproc: daemons stopped by recorded pid only, after checking their
command line, with what is left of their session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workspace import hostproc
from workspace.site.status import AGENT_MODULE, SERVICE_MODULE, agent_matcher, service_matcher


def _fake_daemon(config_path: str) -> subprocess.Popen[bytes]:
    # Looks like our service on its command line and has a child in its session.
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    argv = [sys.executable, "-c", code, "-m", SERVICE_MODULE, "--config", config_path]
    return subprocess.Popen(argv, start_new_session=True)


def _session_of(pid: int) -> list[int]:
    return hostproc.session_members(pid)


def test_stop_process_checks_the_command_line(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        matches = service_matcher(tmp_path / "service.toml")
        out = hostproc.stop_session(other.pid, matches)
        assert "no longer ours" in out and other.poll() is None
    finally:
        other.kill()
        other.wait()
    cfg = tmp_path / "service.toml"
    daemon = _fake_daemon(str(cfg))
    try:
        deadline = time.monotonic() + 10
        while len(_session_of(daemon.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hostproc.pid_if_ours(daemon.pid, service_matcher(cfg)) == daemon.pid
        assert hostproc.pid_if_ours(daemon.pid, agent_matcher(cfg)) is None
        out = hostproc.stop_session(daemon.pid, service_matcher(cfg), timeout_s=5)
        assert out.startswith("stopped") and "+1 child" in out
        assert daemon.poll() is not None and _session_of(daemon.pid) == []
        assert hostproc.stop_session(daemon.pid, service_matcher(cfg)) == "not running"
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGKILL)
    assert hostproc.stop_session(0, service_matcher(cfg)) == "not started"
    assert AGENT_MODULE in agent_matcher.__doc__  # type: ignore[operator]


def test_stop_process_outcomes(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    proc = hostproc.spawn_daemon(["sleep", "60"], log)
    ours = hostproc.cmdline_has("sleep", "60")
    try:
        assert os.getsid(proc.pid) == proc.pid  # a session of its own
        stranger = hostproc.cmdline_has("sleep", "61")
        assert hostproc.stop_process(proc.pid, stranger) is hostproc.Stopped.NOT_OURS
        assert proc.poll() is None
        assert hostproc.stop_process(proc.pid, ours, 5) is hostproc.Stopped.STOPPED
        assert proc.poll() is not None
        assert hostproc.stop_process(proc.pid, ours) is hostproc.Stopped.NOT_RUNNING
        assert hostproc.stop_process(None, ours) is hostproc.Stopped.NOT_RUNNING
    finally:
        hostproc.stop_child(proc, 1)


def test_a_daemon_still_in_its_exec_is_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen returns once the child's exec has closed its close-on-exec pipe, which the
    kernel does before it sets up the new program's arguments: for a moment the daemon's
    command line reads empty. It was judged 'no longer ours' then (a stop right after a
    spawn left the daemon running; CI saw it once); a live process's empty command line is
    read again."""
    proc = hostproc.spawn_daemon(["sleep", "60"], tmp_path / "daemon.log")
    real = hostproc.process_cmdline
    reads: list[int] = []

    def mid_exec(pid: int) -> list[str] | None:  # the first two reads fall in the exec
        reads.append(pid)
        return None if len(reads) <= 2 else real(pid)

    monkeypatch.setattr(hostproc, "process_cmdline", mid_exec)
    try:
        ours = hostproc.cmdline_has("sleep", "60")
        assert hostproc.pid_if_ours(proc.pid, ours) == proc.pid
        assert hostproc.stop_process(proc.pid, ours, 5) is hostproc.Stopped.STOPPED
        assert proc.poll() is not None
    finally:
        hostproc.stop_child(proc, 1)


def test_a_daemon_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    argv = [sys.executable, "-c", code, str(ready)]
    proc = hostproc.spawn_daemon(argv, tmp_path / "log")
    ours = hostproc.argv_includes(str(ready))
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():  # SIGTERM is ignored from now on
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        assert hostproc.stop_process(proc.pid, ours, 0.3) is hostproc.Stopped.KILLED
        assert proc.poll() is not None
    finally:
        hostproc.stop_child(proc, 1)


def test_pid_files(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert hostproc.read_pid_file(path) is None
    hostproc.write_pid_file(path, 4242)
    assert hostproc.read_pid_file(path) == 4242
    path.write_text("garbage\n")
    assert hostproc.read_pid_file(path) is None
