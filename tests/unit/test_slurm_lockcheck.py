"""``ws-slurm check`` and the lock file (``lockcheck``): a lock file SlurmUser could not
open, or make with its directory, stops every resume (the nodes DOWN); check says so
beforehand, as whoever runs it (often root), and makes nothing."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_slurm_program import Run, run
from workspace.slurm.scontrol import Scontrol

__all__ = ["run"]  # the fixture, used here

SHOW_CONFIG = """#!/bin/sh
case "$1 $2" in
"show config")
  echo 'ResumeTimeout           = 600 sec'
  echo 'SlurmUser               = {user}'
  echo 'SlurmdUser              = root(0)'
  ;;
*) exit 1 ;;
esac
"""


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this host")


@pytest.fixture
def open_dir(run: Run) -> Iterator[Path]:
    """A directory every user reaches (pytest's own are its user's 0700), empty and
    0755, that the run's lock file is in (its ``state`` directory not made)."""
    d = Path(tempfile.mkdtemp(prefix="wslockcheck-", dir="/tmp"))
    try:
        d.chmod(0o755)
        lock = d / "state" / "nodes.lock"
        run.config.write_text(run.config.read_text().replace(str(run.lock), str(lock)))
        run.lock = lock
        yield d
    finally:
        shutil.rmtree(d)


def _slurm_user(run: Run, monkeypatch: pytest.MonkeyPatch, user: pwd.struct_passwd) -> None:
    monkeypatch.setattr(run.scontrol, "slurm_user", lambda: (user.pw_name, user.pw_uid))


def test_slurm_user_is_read_from_show_config(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    for shown, read in (("slurm(64030)", ("slurm", 64030)), ("slurm", ("slurm", None))):
        fake.write_text(SHOW_CONFIG.replace("{user}", shown))
        fake.chmod(0o755)
        assert Scontrol(str(fake)).slurm_user() == read
    assert Scontrol("scontrol-not-here").slurm_user() is None


def test_check_finds_a_lock_directory_slurm_user_cannot_make(
    run: Run, open_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upgrade without /var/lib/ws-slurm: SlurmUser cannot make it, every resume
    would fail. check, run as root, says so and makes nothing (what root made would be
    root's: SlurmUser could not open it either)."""
    nobody = _nobody()
    _slurm_user(run, monkeypatch, nobody)
    assert run("check", "c1") == 1
    out = capsys.readouterr().out
    assert (
        f"lock file {run.lock}: directory {run.lock.parent} does not exist, and SlurmUser "
        f"nobody cannot make it ({open_dir} is not writable by nobody): every resume, "
        "suspend and resume-fail would fail, its nodes DOWN; make it: install -d -o nobody"
    ) in out
    assert not run.lock.parent.exists()
    # Made for SlurmUser as README says: found good, the file still not made.
    run.lock.parent.mkdir(mode=0o700)
    os.chown(run.lock.parent, nobody.pw_uid, nobody.pw_gid)
    assert run("check", "c1") == 0
    assert "lock file" not in capsys.readouterr().out
    assert not run.lock.exists()


def test_check_finds_a_lock_file_slurm_user_cannot_open(
    run: Run, open_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws-slurm resume` run by hand as root made the lock file root's 0600: slurmctld's
    runs (as SlurmUser) cannot open it."""
    nobody = _nobody()
    run.lock.parent.mkdir(mode=0o755)
    os.close(os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(run.lock, 0o600)
    _slurm_user(run, monkeypatch, nobody)
    assert run("check", "c1") == 1
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert (
        f"lock file {run.lock}: SlurmUser nobody cannot open it for writing (it is "
        f"-rw------- {me}, made by a run as another user?)"
    ) in capsys.readouterr().out
    os.chown(run.lock, nobody.pw_uid, nobody.pw_gid)
    assert run("check", "c1") == 0
    assert "lock file" not in capsys.readouterr().out


def test_check_passes_a_lock_directory_slurm_user_can_make(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SlurmUser may make the directory (here: the user running the test, as SlurmUser
    is root in the host tests): nothing to say, and nothing made by check."""
    _slurm_user(run, monkeypatch, pwd.getpwuid(os.geteuid()))
    assert run("check", "c1") == 0
    assert "lock file" not in capsys.readouterr().out
    assert not run.lock.parent.exists()


def test_check_runs_as_a_uid_without_a_name(
    run: Run, open_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check in a container, as a uid no passwd entry names, and without SlurmUser from
    scontrol: it failed with KeyError (`failed unexpectedly`) instead of checking the
    lock file as that uid; it names the uid, in the fix too."""
    real = pwd.getpwuid

    def getpwuid(uid: int) -> pwd.struct_passwd:
        if uid == 4242:
            raise KeyError(f"getpwuid(): uid not found: {uid}")
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    assert run("check", "c1") == 1
    got = capsys.readouterr()
    out = got.out
    assert (
        f"lock file {run.lock}: directory {run.lock.parent} does not exist, and you (uid "
        f"4242, no name; scontrol did not say who SlurmUser is) cannot make it ({open_dir} "
        "is not writable by 4242)"
    ) in out, out
    assert "make it: install -d -o 4242 -g " in out
    assert "failed unexpectedly" not in got.err
