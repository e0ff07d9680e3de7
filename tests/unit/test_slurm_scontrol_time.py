"""scontrol's time in one ws-slurm run: a group's addresses in one update, and a bound on
the run's scontrol time in all (slurmctld kills its power programs after the longest
ResumeTimeout/SuspendTimeout, from Slurm 23.02)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_slurm_program import Run, run
from workspace.slurm import scontrol
from workspace.slurm.scontrol import Scontrol

__all__ = ["run"]  # the fixture, used here


def _recording_scontrol(tmp: Path) -> tuple[Path, Path]:
    record = tmp / "argv"
    fake = tmp / "scontrol"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {record}\necho >> {record}\n')
    fake.chmod(0o755)
    return fake, record


def test_a_groups_addresses_are_one_scontrol_update(run: Run) -> None:
    """Each node's address was its own ``scontrol update``, each tried three times with
    20 s each: a 100-node job with slurmctld slow took more than ResumeTimeout. A group's
    addresses are one update now (slurmctld pairs the lists in their order)."""
    fake, record = _recording_scontrol(run.tmp)
    run.scontrol = Scontrol(str(fake))  # type: ignore[assignment]
    jobs = [{"job_id": 9, "nodes_resume": "c[1-3]"}]
    assert run("resume", "c[1-3]", jobs=jobs) == 0
    updates = [line for line in record.read_text().splitlines() if line.startswith("update")]
    ips = {w.role: w.nics[0].ip for w in run.service.live()}
    assert updates == [
        f"update|NodeName=c1,c2,c3|NodeAddr={ips['c1']},{ips['c2']},{ips['c3']}"
        "|NodeHostname=c1,c2,c3|"
    ]


def test_one_runs_scontrol_time_is_bounded(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """slurmctld not answering (each scontrol times out after 20 s): a resume of 9 nodes
    of no job spent 9 x 3 tries x 20 s in scontrol, 9 minutes (slurmctld kills it at
    ResumeTimeout; a 100-node job took 100 minutes). Now a run stops calling scontrol
    once RUN_BUDGET_S is spent, and says so once; the workspaces are made all the same."""
    fake, _ = _recording_scontrol(run.tmp)
    clock = [0.0]
    calls: list[list[str]] = []

    def hung(argv: list[str], **kw: Any) -> Any:
        calls.append(argv)
        clock[0] += kw["timeout"]
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    monkeypatch.setattr(scontrol.subprocess, "run", hung)
    monkeypatch.setattr(scontrol.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(scontrol.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    run.scontrol = Scontrol(str(fake))  # type: ignore[assignment]
    run.service.capacity_mib = 1 << 20
    assert run("resume", "c[1-9]") == 0
    assert len(run.names()) == 9
    assert len(calls) <= scontrol.RUN_BUDGET_S / scontrol.TIMEOUT_S + 1, calls
    assert clock[0] <= scontrol.RUN_BUDGET_S
    text = run.text()
    assert text.count("this run has spent its 60 s for scontrol") == 1
    assert "node c9: could not tell slurmctld its address" in text
