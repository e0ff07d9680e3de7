"""Shared helpers for the benchmark scripts (not a test module)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Latencies in seconds of n sequential calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(name: str, lat: list[float]) -> dict[str, float]:
    total = sum(lat)
    return {
        f"{name}_rps": len(lat) / total if total else 0.0,
        f"{name}_p50_ms": percentile(lat, 50) * 1000,
        f"{name}_p99_ms": percentile(lat, 99) * 1000,
        f"{name}_mean_ms": statistics.fmean(lat) * 1000,
    }


def emit(figures: dict[str, float]) -> None:
    for k, v in figures.items():
        print(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    sys.stdout.flush()


def start_service(tmp: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], str]:
    sock = f"unix:{tmp / 'svc.sock'}"
    conf = tmp / "service.toml"
    conf.write_text(
        f'listen = "{sock}"\ndata_dir = "{tmp / "data"}"\nlog_level = "WARNING"\n'
        f"node_grace_s = 3600\ninsecure = true\n{extra}"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp / "service.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "workspace.service.main", "--config", str(conf)],
        stdout=log,
        stderr=log,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not Path(sock[5:]).exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"service did not start; see {tmp / 'service.log'}")
        time.sleep(0.05)
    return proc, sock


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
