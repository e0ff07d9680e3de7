"""`workspace-service backup|restore DIR` that cannot write where it is told says so in
one line and exits 1: run from cron, a traceback was all an admin got when DIR was a
file, under a file, on a disk not mounted or full."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workspace import config
from workspace.config import ServiceConfig
from workspace.service import main as service_main
from workspace.store import Store


def _site(tmp_path: Path) -> Path:
    """A service config whose data_dir holds a store (migrated, empty)."""
    data = tmp_path / "data"
    Store(f"sqlite:///{data / 'service.db'}").close()
    cfg = ServiceConfig(listen="127.0.0.1:0", data_dir=str(data), insecure=True)
    return config.write(tmp_path / "service.toml", cfg)


def _says(conf: Path, capsys: pytest.CaptureFixture[str], *command: str) -> str:
    capsys.readouterr()  # what making the store wrote (a test before may have set logging)
    assert service_main.main(["--config", str(conf), *command]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_backup_into_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _site(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("kept")
    said = _says(conf, capsys, "backup", str(a_file))
    assert said == (
        f"workspace-service: error: {a_file} is not a directory: give a directory to back up into"
    )
    assert a_file.read_text() == "kept"


def test_a_backup_where_no_directory_can_be_made_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _site(tmp_path)
    (tmp_path / "a-file").write_text("")
    dest = tmp_path / "a-file" / "backup"
    said = _says(conf, capsys, "backup", str(dest))
    assert said == f"workspace-service: error: backup {dest}: {dest}: Not a directory"


def test_a_restore_into_a_data_dir_it_cannot_make_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _site(tmp_path)
    dest = tmp_path / "backup"
    assert service_main.main(["--config", str(conf), "backup", str(dest)]) == 0
    capsys.readouterr()
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    cfg = ServiceConfig(listen="127.0.0.1:0", data_dir=str(data), insecure=True)
    other = config.write(tmp_path / "other.toml", cfg)
    said = _says(other, capsys, "restore", str(dest))
    assert said == f"workspace-service: error: restore {dest}: {data}: Not a directory"


def test_a_backup_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """docs/design/store.md: a DIR on a disk full is one line, exit 1. SQLite's copy of the
    store failed with sqlite3.OperationalError, no OSError: a traceback. The disk is
    made full for the copy by a file size limit (SQLite's writes then fail)."""
    conf = _site(tmp_path)
    dest = tmp_path / "backup"
    code = (
        "import resource, signal, sys\n"
        "from workspace.service import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
        f"sys.exit(main.main(['--config', {str(conf)!r}, 'backup', {str(dest)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"workspace-service: error: the store could not be copied into {dest}: "
    ), out.stderr
    assert list(dest.iterdir()) == []  # no half copy left
