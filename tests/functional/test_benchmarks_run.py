"""Each benchmark that needs no real VM runs, small, and prints its figures as
``name=value`` lines: the issue's goals are read from them (docs/design/control-plane.md),
and a change elsewhere had left api.py, create_floor.py and replicas.py failing at their
first call (a node they registered bigger than Register now takes) without a test
noticing. Only that they run and what they print is checked here, never how fast."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pg

REPO = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^[a-z][a-z0-9_]*=-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")

# Each script with small arguments, and figures it must print (the goals' among them).
RUNS = {
    "api": (
        ["--workspaces", "5", "--requests", "20", "--creates", "10", "--clients", "2"],
        {"health_p50_ms", "create_p50_ms", "create16_rps", "create_vs_health_p50_ratio"},
    ),
    "create_floor": (["--workspaces", "5", "--requests", "20"], set()),
    "scheduler": (
        [
            "--nodes",
            "520",
            "--workspaces",
            "1000",
            "--placements",
            "50",
            "--calls",
            "10",
            "--repeat",
            "1",
        ],
        {"api_create16_rps", "api_create16_p99_ms"},
    ),
    "flood": (["--streams", "10", "--requests", "10", "--cap", "4"], set()),
    "notify": (["--streams", "10", "--changes", "10"], set()),
    "backfill": (["--entries", "2", "--passes", "5"], set()),
    "preempt": (["--nodes", "20", "--repeat", "1"], set()),
    "tls": (["--calls", "10", "--connects", "3"], set()),
    "replicas": (["--creates", "10"], set()),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_benchmark_runs_and_prints_its_figures(name: str) -> None:
    if name == "replicas" and pg.bindir() is None:
        pytest.skip("PostgreSQL's server is not installed (make deps installs it)")
    args, wanted = RUNS[name]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines, done.stderr[-3000:]
    assert [line for line in lines if not FIGURE.match(line)] == []
    printed = {line.split("=", 1)[0] for line in lines}
    assert wanted <= printed, wanted - printed
