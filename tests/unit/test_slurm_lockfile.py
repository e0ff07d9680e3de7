"""ws-slurm's lock file (``lock_file``), where the runs lock their nodes against each
other (``nodelock``), and the files ws-slurm makes itself: the lock file 0600 in a 0700
directory, the log file 0640; a lock file that cannot be opened stops the run, told to
Slurm."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import workspace
from tests.unit.test_slurm_program import Run, run
from workspace.slurm.nodelock import LockFileError, NodeLocks

__all__ = ["run"]  # the fixture, used here


@pytest.fixture
def umask() -> Iterator[None]:
    """The usual umask (022), whatever the test runner's: the modes asserted are the
    ones ws-slurm asks for."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_lock_file_is_made_0600_in_a_0700_directory(run: Run, umask: None) -> None:
    assert not run.lock.parent.exists()
    assert run("suspend", "c1") == 0
    assert _mode(run.lock.parent) == 0o700
    assert _mode(run.lock) == 0o600
    assert run.lock.read_bytes() == b""  # nothing is written for the locks
    assert run("suspend", "c1") == 0  # the next run uses it as it is


def test_the_log_file_ws_slurm_makes_is_0640(run: Run, umask: None) -> None:
    """README says to make it 0640 for SlurmUser; made by ws-slurm itself it was 0644,
    every local user reading the nodes' failures."""
    assert not run.log.exists()
    assert run("suspend", "c1") == 0
    assert _mode(run.log) == 0o640
    assert "suspend c1" in run.text()


def test_a_lock_file_that_cannot_be_opened_stops_the_run_and_is_told_to_slurm(
    run: Run,
) -> None:
    """Until session 43 a run that could not open its lock file (then the log file) went
    on unlocked, said once in a log it could not write either."""
    where = run.tmp / "locks-dir"
    where.mkdir()
    run.config.write_text(run.config.read_text().replace(str(run.lock), str(where)))
    assert run("resume", "c[1-2]") == 2
    assert run.names() == []
    reason = run.scontrol.down["c1"]
    assert reason.startswith(f"ws: config: lock file {where}: Is a directory"), reason
    assert run.scontrol.powered_down == ["c1", "c2"]  # their jobs requeued now
    assert f"resume: lock file {where}: Is a directory (ws-slurm locks its nodes" in run.text()
    assert "install -d -o slurm -g slurm -m 0700" in run.text()


def test_a_lock_file_of_another_users_is_said_so_with_its_fix(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file made by a run as root (by hand), then a run as SlurmUser: the error
    said "install -d -o slurm -g slurm -m 0700 DIR", which changes nothing when the
    directory is SlurmUser's already and the file root's. (As root every file opens: the
    kernel's EACCES is made here.)"""
    run.lock.parent.mkdir(mode=0o700)
    run.lock.write_text("")
    os.chown(run.lock, 65534, 65534)  # another user's
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == str(run.lock):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    assert run("suspend", "c1") == 2
    other = pwd.getpwuid(65534).pw_name
    me = pwd.getpwuid(os.geteuid()).pw_name
    said = (
        f"lock file {run.lock}: Permission denied (it is -rw-r--r-- {other}, not {me}'s, "
        f"who runs ws-slurm here: made by a run as {other}?"
    )
    assert said in run.text()
    assert f"chown {me}: {run.lock})" in run.text()
    assert "install -d" not in run.text()
    assert run.scontrol.down["c1"].startswith(
        "ws: suspend could not check for its workspace: config: "
        f"lock file {run.lock}: Permission denied (it is"
    )


def test_a_lock_file_whose_directory_is_a_file_is_said_so(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    locks = NodeLocks(str(tmp_path / "state" / "nodes.lock"))
    with pytest.raises(LockFileError, match=f"lock file .*: {tmp_path / 'state'} is not a dir"):
        locks.try_acquire(["c1"])


def _refused(monkeypatch: pytest.MonkeyPatch, lock: Path) -> None:
    """os.open of ``lock`` fails with EACCES (as root every file opens)."""
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == str(lock):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)


def test_a_lock_file_of_ones_own_with_its_modes_right_is_not_told_to_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused for another reason than its modes (an AppArmor or SELinux policy): the
    error said "it is -rw------- slurm: chmod 0600 FILE", which changes nothing."""
    lock = tmp_path / "nodes.lock"
    lock.write_text("")
    lock.chmod(0o600)
    _refused(monkeypatch, lock)
    with pytest.raises(LockFileError) as raised:
        NodeLocks(str(lock)).try_acquire(["c1"])
    assert "chmod" not in raised.value.message, raised.value.message
    assert f"lock file {lock}: Permission denied (ws-slurm locks its nodes" in raised.value.message


def test_a_lock_file_of_another_users_by_a_user_without_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose uid has no passwd entry (a container's): the KeyError of its name's
    lookup ended the run in a traceback, the nodes not told to Slurm."""
    lock = tmp_path / "nodes.lock"
    lock.write_text("")
    os.chown(lock, 65534, 65534)
    _refused(monkeypatch, lock)
    real = pwd.getpwuid

    def nameless(uid: int) -> pwd.struct_passwd:
        if uid == os.geteuid():
            raise KeyError(uid)
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", nameless)
    with pytest.raises(LockFileError) as raised:
        NodeLocks(str(lock)).try_acquire(["c1"])
    assert f"not uid {os.geteuid()}'s, who runs ws-slurm here" in raised.value.message
    assert raised.value.message.endswith(f"chown {os.geteuid()} {lock})"), raised.value.message


def test_the_cli_module_runs_as_a_program() -> None:
    """``python -m workspace.slurm.cli`` printed nothing and did nothing."""
    out = subprocess.run(
        [sys.executable, "-m", "workspace.slurm.cli", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(workspace.__file__).parents[1])},
        check=False,
        timeout=60,
    )
    assert (out.returncode, out.stdout.split()[0]) == (0, "ws-slurm"), out


def test_the_directories_ws_slurm_makes_are_its_own(run: Run, umask: None) -> None:
    """A lock file and a log file in directories that are not there yet: every directory
    made for the lock file is 0700 (only the last was; the ones above it were 0755), and
    every one made for the log file 0750 (they were 0755: any local user could list
    them), its group reaching the 0640 log."""
    lock = run.tmp / "srv" / "ws" / "state" / "nodes.lock"
    log = run.tmp / "logs" / "ws" / "ws-slurm.log"
    text = run.config.read_text().replace(str(run.lock), str(lock))
    run.config.write_text(text.replace(str(run.log), str(log)))
    run.log = log
    assert run("suspend", "c1") == 0
    assert "suspend c1" in run.text()
    made = [run.tmp / "srv", run.tmp / "srv" / "ws", lock.parent]
    assert [oct(_mode(d)) for d in made] == [oct(0o700)] * 3
    assert [oct(_mode(d)) for d in (run.tmp / "logs", log.parent)] == [oct(0o750)] * 2
    assert _mode(lock) == 0o600
    assert _mode(log) == 0o640
