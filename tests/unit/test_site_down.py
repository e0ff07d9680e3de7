"""`ws-admin site down` and an agent that takes its time to stop (docs/design/site.md,
Down, up and purge): a real process standing in for the agent, stopped by its pid."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from workspace import hostproc
from workspace.config import ServiceConfig
from workspace.site import local
from workspace.site.record import AgentRecord, SiteRecord, write_record

# An agent whose clean stop takes a while (it finishes an operation under way, a guest's
# stop), then writes the last line of a clean stop. Its command line names agent.main
# and its config, as the site's agents do (the site's matcher checks it).
SLOW_AGENT = r"""
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("workspace-agent for node node1 started", flush=True)
while not stop:
    time.sleep(0.05)
print("signal 15: shutting down (VMs keep running)", flush=True)
time.sleep(float(sys.argv[1]))
print("workspace-agent for node node1 stopped", flush=True)
"""


# An agent whose stop goes on until the test says (a file appears): no timing.
HELD_AGENT = r"""
import os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("workspace-agent for node node1 started", flush=True)
while not stop:
    time.sleep(0.05)
print("signal 15: shutting down (VMs keep running)", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
print("workspace-agent for node node1 stopped", flush=True)
"""


def test_ctrl_c_ends_the_wait_of_site_down_and_leaves_the_agent_to_stop(tmp_path: Path) -> None:
    """Ctrl-C while `site down` waits for a stopping agent did nothing until the agent
    was gone or, past its 90 s, killed: the wait ran on a pool the interrupt then joined.
    Now the interrupt ends `site down` at once, the site still recorded, and the agent,
    which got its SIGTERM, finishes its stop on its own (not killed)."""
    node_dir = tmp_path / "node1"
    node_dir.mkdir()
    config = node_dir / "agent.toml"
    config.write_text("")
    agent = AgentRecord(node="node1", dir=str(node_dir))
    release = tmp_path / "release"
    argv = [sys.executable, "-c", HELD_AGENT, str(release), local.AGENT_MODULE, str(config)]
    proc = hostproc.spawn_daemon(argv, agent.log)
    main = threading.get_ident()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while "started" not in agent.log.read_text():
            assert proc.poll() is None, agent.log.read_text()
            time.sleep(0.05)
        agent.pid = proc.pid
        write_record(tmp_path, SiteRecord(str(tmp_path), "unix:x", "fake", agents=[agent]))

        def say(line: str) -> None:  # the user presses Ctrl-C once the wait is told
            if line.startswith("stopping agent"):
                signal.pthread_kill(main, signal.SIGINT)

        with pytest.raises(KeyboardInterrupt):
            local.LocalSite(tmp_path, say=say).down()
        assert proc.poll() is None  # still finishing its stop, as it may
        assert local.read_record(tmp_path) is not None  # `site down` did not finish
        release.touch()
        assert proc.wait(60) == 0
        assert agent.log.read_text().splitlines()[-1] == "workspace-agent for node node1 stopped"
    finally:
        signal.signal(signal.SIGINT, previous)
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_site_down_lets_an_agent_finish_its_stop_and_says_what_it_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`site down` killed an agent STOP_TIMEOUT_S (10 s) after its SIGTERM, though an
    agent finishes the operations under way first (a guest's stop: up to a minute; its
    systemd unit gives it 90 s): its log then ended without "stopped", and the terminal
    said nothing while it waited. Now it waits the agent's stop budget, and says so."""
    monkeypatch.setattr(hostproc, "PROGRESS_S", 1.0)
    node_dir = tmp_path / "node1"
    node_dir.mkdir()
    config = node_dir / "agent.toml"
    config.write_text("")
    agent = AgentRecord(node="node1", dir=str(node_dir))
    takes_s = local.STOP_TIMEOUT_S + 2  # longer than `site down` used to wait
    argv = [sys.executable, "-c", SLOW_AGENT, str(takes_s), local.AGENT_MODULE, str(config)]
    proc = hostproc.spawn_daemon(argv, agent.log)
    try:
        while "started" not in agent.log.read_text():  # its SIGTERM handler is set
            assert proc.poll() is None, agent.log.read_text()
            time.sleep(0.05)
        agent.pid = proc.pid
        write_record(tmp_path, SiteRecord(str(tmp_path), "unix:x", "fake", agents=[agent]))
        said: list[str] = []
        done = local.LocalSite(tmp_path, say=said.append).down()
        assert done[0] == "agent: stopped", done
        last = agent.log.read_text().splitlines()[-1]
        assert last == "workspace-agent for node node1 stopped"
        budget = f"{local.AGENT_STOP_TIMEOUT_S:g} s"
        assert said[0] == (
            f"stopping agent (pid {proc.pid}): waiting up to {budget} for it to finish the"
            " operations under way"
        ), said
        assert (
            f"still waiting for agent (pid {proc.pid}) to stop (1 s of {budget}; what it"
            in (said[1])
        ), said
        assert str(agent.log) in said[1]
        assert local.read_record(tmp_path) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_agent_stop_budget_of_site_down_is_the_one_of_its_unit() -> None:
    """`site down`, `site up` and systemd give a stopping agent the same time."""
    unit = Path(__file__).resolve().parents[2] / "conf" / "systemd" / "workspace-agent.service"
    lines = [x for x in unit.read_text().splitlines() if x.startswith("TimeoutStopSec=")]
    assert lines == [f"TimeoutStopSec={local.AGENT_STOP_TIMEOUT_S:g}"]
    assert ServiceConfig().default_stop_timeout_s < local.AGENT_STOP_TIMEOUT_S  # a guest's stop
    # `site up` after a `kill` of an agent waits for it as long, not less: it failed at
    # 60 s, telling the user to `kill -9` an agent still within its budget.
    assert local.STOPPING_WAIT_S >= local.AGENT_STOP_TIMEOUT_S
