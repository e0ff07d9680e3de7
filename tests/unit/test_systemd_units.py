"""conf/systemd: the units start the programs README installs, with flags they take, and
give them the time their documented stop needs."""

from __future__ import annotations

import configparser
import shlex
import tomllib
from pathlib import Path

import pytest

from agent import main as agent_main
from workspace.config import ServiceConfig
from workspace.service import main as service_main

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "conf" / "systemd"
MAINS = {"workspace-service": service_main.main, "workspace-agent": agent_main.main}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def seconds(value: str) -> float:
    """A systemd time span as these units write it ("15", "90s", "2min")."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("program", sorted(MAINS))
def test_each_unit_starts_an_installed_program_with_flags_it_takes(
    program: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = shlex.split(unit(f"{program}.service")["Service"]["ExecStart"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == f"/usr/local/bin/{program}" and program in scripts, argv
    # README, "A real multi-node site": the configs are in /etc/workspace.
    assert argv[1:] == ["--config", f"/etc/workspace/{program.split('-')[1]}.toml"], argv
    with pytest.raises(SystemExit) as done:
        MAINS[program]([*argv[1:], "--help"])
    assert done.value.code == 0
    assert "--config" in capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    assert f"{program} --config /etc/workspace/{program.split('-')[1]}.toml" in readme


def test_the_agent_unit_lets_a_stop_finish_what_the_agent_runs() -> None:
    """An agent that got its SIGTERM finishes the operations under way before it exits
    (docs/design/site.md, "Day 2"): a guest's stop waits up to its stop timeout
    (``default_stop_timeout_s``, 60 s, unless `ws stop --timeout` said otherwise). The
    unit gave it 15 s, then systemd killed it: `systemctl restart workspace-agent`
    while a guest shut down ended in "State 'stop-sigterm' timed out. Killing.", the
    unit failed, and the log lacked its last line ("workspace-agent for node N
    stopped"), which README says marks a log cut short."""
    service = unit("workspace-agent.service")["Service"]
    default_stop = ServiceConfig().default_stop_timeout_s
    assert default_stop == 60
    assert seconds(service["TimeoutStopSec"]) > default_stop, service["TimeoutStopSec"]
    assert service["KillMode"] == "process"  # VMs and dnsmasq outlive the agent
