"""The daemons end cleanly on SIGTERM, SIGINT and SIGHUP (a closed terminal, or an
admin's `kill -HUP` out of habit): the reason in their log, exit status 0, no
traceback, their unix sockets removed, and a last line saying they stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workspace import config
from workspace.config import AgentConfig, ServiceConfig

ROOT = Path(__file__).resolve().parents[2]
# A line of the daemons' own log (not gRPC's C core, which writes to the same stderr).
OUR_LINE = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ workspace-(service|agent)\[")


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def wait_for(cond: object, what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


@contextlib.contextmanager
def two_daemons(
    tmp_path: Path, peers: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """(service, agent) on unix sockets under ``tmp_path`` (logs s.log, a.log), both up:
    the service listening, the agent registered. Killed at the end if still running."""
    svc_cfg = config.write(
        tmp_path / "service.toml",
        ServiceConfig(
            listen=f"unix:{tmp_path / 'service.sock'}", data_dir=str(tmp_path / "d"), insecure=True
        ),
    )
    agent_cfg = config.write(
        tmp_path / "agent.toml",
        AgentConfig(
            node="n1",
            service=f"unix:{tmp_path / 'nodes.sock'}",
            state_dir=str(tmp_path / "agent"),
            peer_listen=f"unix:{tmp_path / 'peers.sock'}" if peers else "",
            insecure=True,
        ),
    )
    svc = spawn(["-m", "workspace.service.main", "--config", str(svc_cfg)], tmp_path / "s.log")
    agent = spawn(["-m", "agent.main", "--config", str(agent_cfg)], tmp_path / "a.log")
    try:
        wait_for(lambda: "listening on" in (tmp_path / "s.log").read_text(), "service")
        wait_for(lambda: "registered with" in (tmp_path / "a.log").read_text(), "agent")
        yield svc, agent
    finally:
        for proc in (agent, svc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_service_and_the_agent_end_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    with two_daemons(tmp_path, peers=True) as (svc, agent):
        for proc, log in ((agent, "a.log"), (svc, "s.log")):
            proc.send_signal(sig)
            assert proc.wait(60) == 0, (tmp_path / log).read_text()
            text = (tmp_path / log).read_text()
            assert f"signal {int(sig)}: shutting down" in text, text
            assert "Traceback" not in text, text
            # its last line says it stopped: a log cut short (kill -9) is told from it
            ours = [line for line in text.splitlines() if OUR_LINE.match(line)]
            assert ours[-1].endswith(" stopped"), text
        for name in ("service.sock", "nodes.sock", "peers.sock"):
            assert not (tmp_path / name).exists(), name


def test_a_sqlite_service_stops_without_a_warning_about_replicas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One process on SQLite has no replicas: its clean stop is no WARNING (an admin's
    log watch would flag every restart)."""
    from workspace.service.main import Service

    cfg = ServiceConfig(listen=f"unix:{tmp_path}/s.sock", data_dir=str(tmp_path), insecure=True)
    svc = Service(cfg)
    svc.start()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        svc.stop(0)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == []


def test_ctrl_c_while_the_service_waits_for_its_database_is_no_traceback(tmp_path: Path) -> None:
    """A service started before PostgreSQL answers waits up to 5 minutes; Ctrl-C there
    ends it with one line, as at any other time."""
    cfg = config.write(
        tmp_path / "service.toml",
        ServiceConfig(
            listen=f"unix:{tmp_path / 's.sock'}",
            data_dir=str(tmp_path / "d"),
            database_url="postgresql://ws@127.0.0.1:1/ws",  # nothing answers on port 1
            insecure=True,
        ),
    )
    log = tmp_path / "s.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workspace.service.main", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            # as at a terminal (a background job of a script has SIGINT ignored)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(lambda: "waiting for the database" in log.read_text(), "wait")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "interrupted while starting" in text, text


def test_a_service_started_under_nohup_keeps_ignoring_sighup(tmp_path: Path) -> None:
    """`nohup workspace-service ... &` means: survive the terminal's hangup."""
    sock = tmp_path / "service.sock"
    cfg = config.write(
        tmp_path / "service.toml",
        ServiceConfig(listen=f"unix:{sock}", data_dir=str(tmp_path / "d"), insecure=True),
    )
    log = tmp_path / "s.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workspace.service.main", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as nohup does
        )
    try:
        wait_for(lambda: "listening on" in log.read_text(), "service")
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)  # the one that ends it
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "signal 15: shutting down" in text and "signal 1:" not in text, text


def to_a_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to a thread of ``pid`` other than its main one, as the kernel may
    deliver a process's signal to any thread that does not block it (gRPC's do not)."""
    import ctypes

    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert tids
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234  # x86_64
    assert libc.syscall(sys_tgkill, pid, tids[-1], sig) == 0, ctypes.get_errno()


@pytest.mark.parametrize("daemon", ["service", "agent"])
def test_a_signal_taken_by_another_thread_still_stops_the_daemon(
    tmp_path: Path, daemon: str
) -> None:
    """The main thread waited in Event.wait() without a timeout, which a signal that
    another thread received does not interrupt: `kill PID` was then ignored for good (about
    one time in ten), and `systemctl stop` took its 15 s and a SIGKILL."""
    with two_daemons(tmp_path) as (svc, agent):
        proc, log = (svc, "s.log") if daemon == "service" else (agent, "a.log")
        to_a_thread(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, (tmp_path / log).read_text()
        assert "signal 15: shutting down" in (tmp_path / log).read_text()
