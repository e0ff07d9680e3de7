"""A service started against a PostgreSQL that is not there yet waits for it, saying so;
one started against a database that does not exist says "cannot start: ..." in one line
(JSON with log_format = "json") and exits non-zero (workspace/service/dbwait.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import PgServer
from workspace.errors import ConfigError
from workspace.service import dbwait

ROOT = Path(__file__).resolve().parents[2]


def test_a_database_that_does_not_exist_is_not_waited_for(pg_server: PgServer) -> None:
    with pytest.raises(ConfigError) as err:
        dbwait.wait_for_database(pg_server.url("nosuchdb"), sleep=_never)
    assert 'database "nosuchdb" does not exist' in err.value.message


def test_a_server_that_does_not_answer_is_waited_for_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://postgres@/x?host={tmp_path}"  # no server on that socket
    slept: list[float] = []
    with pytest.raises(ConfigError) as err:
        dbwait.wait_for_database(url, wait_s=0.5, sleep=lambda s: slept.append(s) or _nap(s))
    assert slept, "it did not wait"
    assert "did not answer" in err.value.message
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said and said[0].startswith("waiting for the database")


def test_the_service_says_cannot_start_in_one_json_line(
    tmp_path: Path, pg_server: PgServer
) -> None:
    conf = tmp_path / "service.toml"
    conf.write_text(
        f'listen = "unix:{tmp_path}/s.sock"\n'
        f'database_url = "{pg_server.url("nosuchdb")}"\n'
        f'data_dir = "{tmp_path}/data"\n'
        'log_format = "json"\ninsecure = true\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "workspace.service.main", "--config", str(conf)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 1
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0]["message"].startswith("cannot start: database ")
    assert 'database "nosuchdb" does not exist' in lines[0]["message"]


def _never(_s: float) -> None:
    raise AssertionError("waited for a database that does not exist")


def _nap(s: float) -> None:
    import time

    time.sleep(min(s, 0.1))
