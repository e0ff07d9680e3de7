"""Slurm node names that cannot be workspace names nor guests' hostnames: all digits
(``123``, which resolvers read as 0.0.0.123; the service refuses it as a workspace name
since session 43). ws-slurm refuses such a node whether it would be a lone workspace or a
member of a job's cluster (the guest's hostname either way), and ``check`` says so."""

from __future__ import annotations

import pytest

from tests.unit.test_slurm_program import Run, run

__all__ = ["run"]  # the fixture, used here


@pytest.fixture
def numbered(run: Run) -> Run:
    (run.tmp / "nodes.toml").write_text('[[node]]\nnames = "123,0x1f,c1,c2"\nimage = "slurm"\n')
    return run


def test_check_flags_an_all_digit_node_name(
    numbered: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    assert numbered("check", "c1") == 0
    capsys.readouterr()
    assert numbered("check", "123,0x1f") == 1
    out = capsys.readouterr().out
    assert (
        "123: the Slurm node name cannot be a workspace name nor a guest's hostname (all "
        "digits (or 0x and hex digits), which resolvers read as an IP address): resume "
        "would refuse it"
    ) in out
    assert "0x1f: the Slurm node name cannot be a workspace name" in out


def test_resume_refuses_an_all_digit_node_alone_and_in_a_job(numbered: Run) -> None:
    assert numbered("resume", "123") == 1
    assert numbered.names() == []
    assert "the node name cannot be a workspace name" in numbered.scontrol.down["123"]
    assert "123 (all digits" in numbered.text()
    # In a job's cluster its workspace would be slurm-7-123-0, its hostname still 123.
    jobs = [{"job_id": 7, "nodes_resume": "123,c1"}]
    assert numbered("resume", "123,c1", jobs=jobs) == 1
    assert numbered.names() == []
    assert numbered("resume", "c2") == 0
    assert numbered.names() == ["c2"]
