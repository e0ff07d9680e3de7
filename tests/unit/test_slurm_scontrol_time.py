"""scontrol's time in one ws-slurm run: a group's addresses in one update, and a bound on
the run's scontrol time in all (slurmctld kills its power programs after the longest
ResumeTimeout/SuspendTimeout, from Slurm 23.02)."""

from __future__ import annotations

import subprocess
import sys
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


# Slurm 22.05.0 to 22.05.7 sort (and unique) the NodeName list of an update before they
# pair it with NodeAddr's, kept as given (SchedMD bug 15731); other versions keep both.
_PAIRING_SCONTROL = """#!{python}
import re, sys
args = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
if sys.argv[1:2] == ["update"] and "NodeAddr" in args:
    names, addrs = args["NodeName"].split(","), args["NodeAddr"].split(",")
    def key(n):
        m = re.fullmatch(r"(.*\\D|)(\\d+)", n)
        return (m[1], len(m[2]), int(m[2])) if m else (n, 0, 0)
    with open({record!r}, "a") as f:
        for name, addr in zip(names, addrs):
            f.write(f"kept {{name}} {{addr}}\\n")
        for name, addr in zip(sorted(set(names), key=key), addrs):
            f.write(f"sorted {{name}} {{addr}}\\n")
"""


def test_every_slurm_version_pairs_a_batched_update_as_meant(run: Run) -> None:
    """A job's nodes come in slurm.conf's order (``gpu[1-2],cpu[9-10]``): one update
    ``NodeName=gpu1,gpu2,cpu9,cpu10 NodeAddr=...`` gave, with Slurm 22.05.0-22.05.7 (which
    sort the names, not the addresses), cpu9 gpu1's address, gpu1 cpu9's, and so on:
    slurmctld sent each node's messages to another node's VM. Each update now names
    nodes of one prefix and width in their numbers' order, which every version keeps."""
    (run.tmp / "nodes.toml").write_text(
        '[[node]]\nnames = "gpu[1-2]"\nimage = "slurm"\ncpus = 1\nmemory_mib = 512\n\n'
        '[[node]]\nnames = "cpu[1-20]"\nimage = "slurm"\ncpus = 1\nmemory_mib = 512\n'
    )
    record = run.tmp / "told"
    fake = run.tmp / "scontrol"
    fake.write_text(_PAIRING_SCONTROL.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    run.scontrol = Scontrol(str(fake))  # type: ignore[assignment]
    nodes = "gpu[1-2],cpu[9-10]"
    assert run("resume", nodes, jobs=[{"job_id": 9, "nodes_resume": nodes}]) == 0
    ips = {w.role: w.nics[0].ip for w in run.service.live()}
    assert set(ips) == {"gpu1", "gpu2", "cpu9", "cpu10"}
    lines = [line.split() for line in record.read_text().splitlines()]
    for how in ("kept", "sorted"):
        told = {name: addr for h, name, addr in lines if h == how}
        assert told == ips, how


def test_answered_scontrol_calls_do_not_use_up_the_runs_time(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slurmctld busy starting a burst of 150 one-node jobs, each update answered in 0.5 s:
    the run's 60 s were used up by answered calls after 120 updates, and the last 30
    nodes were never told their address (their jobs waited out ResumeTimeout). Only
    calls that fail count now; every node is told."""
    (run.tmp / "nodes.toml").write_text(
        '[[node]]\nnames = "c[1-200]"\nimage = "slurm"\ncpus = 1\nmemory_mib = 512\n'
    )
    clock = [0.0]
    told: list[str] = []

    def busy(argv: list[str], **kw: Any) -> Any:
        if argv[1] == "update":
            clock[0] += 0.5
            told.extend(a for a in argv if a.startswith("NodeName="))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(scontrol.subprocess, "run", busy)
    monkeypatch.setattr(scontrol.time, "monotonic", lambda: clock[0])
    run.scontrol = Scontrol(str(_recording_scontrol(run.tmp)[0]))  # type: ignore[assignment]
    run.service.capacity_mib = 1 << 20
    jobs = [{"job_id": 100 + i, "nodes_resume": f"c{i}"} for i in range(1, 151)]
    assert run("resume", "c[1-150]", jobs=jobs) == 0
    assert len(run.names()) == 150
    assert sorted(told) == sorted(f"NodeName=c{i}" for i in range(1, 151))
    text = run.text()
    assert "could not tell slurmctld its address" not in text
    assert "spent its" not in text
