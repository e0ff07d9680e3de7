"""``ws-slurm --help``: what an admin setting up slurm.conf needs from it."""

from __future__ import annotations

import pytest

from workspace.slurm import cli


def test_help_says_how_slurmctld_runs_it_where_it_logs_and_its_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The help named the four commands and --config only: not the symlink names
    slurm.conf's programs must have, that under slurmctld the config is always the
    default file, where the runs log (Slurm discards their output), nor the exit codes.
    (Then it said "slurmctld passes no environment", though it passes SLURM_CONF, and
    "check to stderr only", though check's findings are on stdout.)"""
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for said in (
        "ws-slurm-resume, ws-slurm-suspend and ws-slurm-resume-fail",
        "ResumeProgram=/usr/local/sbin/ws-slurm-resume",
        "slurmctld passes none of your environment (no $WS_SLURM_CONFIG, no PATH): under "
        "it the config is /etc/workspace/slurm.toml",
        "check prints what it finds on stdout and logs to stderr only",
        "log_file (default /var/log/ws-slurm.log",
        'reason starting "ws: "',
        "Exit: 0 done, 1 something failed, 2 usage or config error, 3 the service",
    ):
        assert said in out, said


def test_a_commands_help_says_what_hostlist_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "ws-slurm check: print what resume would create" in out
    assert "HOSTLIST Slurm node names or hostlist expressions (cloud3, cloud[1-4,7])" in out
