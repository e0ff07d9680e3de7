"""Shared helpers for the benchmark scripts (not a test module)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# Random bytes are written in pieces this large.
WRITE_CHUNK = 4 * MIB


def random_file(path: Path, size_mib: int) -> None:
    """``size_mib`` MiB of random bytes (real data: nothing sparse, nothing compressible)."""
    with open(path, "wb") as f:
        left = size_mib * MIB
        while left:
            n = min(WRITE_CHUNK, left)
            f.write(os.urandom(n))
            left -= n


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


def create_as_clients_do(stubs: Any, **kw: Any) -> Any:
    """``stubs.create(**kw)`` with a request id of its own, as the Python client and
    `ws` send every create (so the service checks it: the idempotency lookup counts)."""
    return stubs.create(request_id=str(uuid.uuid4()), **kw)


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


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrent(
    fn: Callable[[int], object], clients: int, per_client: int
) -> tuple[float, list[float]]:
    """``clients`` threads each making ``per_client`` sequential calls ``fn(i)`` (``i``
    unique over all calls): (calls per second over the whole run, every call's latency
    in seconds)."""
    import threading

    lat: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        mine = []
        start.wait()
        for j in range(per_client):
            t0 = time.perf_counter()
            fn(k * per_client + j)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return len(lat) / (time.perf_counter() - t0), lat


class Database:
    """Where a benchmark's service keeps its store: SQLite in the run's directory (the
    default), or a throwaway PostgreSQL server started the way tests/pg.py does (its own
    data directory and unix socket, stopped by its pid) but with fsync on, as a site runs
    it (``--database postgresql``)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.server: Any = None  # tests.pg.PgServer (imported only when used)
        if kind == "postgresql":
            sys.path.insert(0, str(ROOT))
            from tests.pg import PgServer

            server = PgServer(durable=True)
            server.start()
            self.server = server
            self.url = server.database("bench")
        else:
            (tmp / "data").mkdir(exist_ok=True)
            self.url = f"sqlite:///{tmp / 'data' / 'service.db'}"

    def config(self) -> str:
        """The service.toml line that points the service at it."""
        return f'database_url = "{self.url}"\n'

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def add_database_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the store's engine (postgresql: a throwaway server, fsync on)",
    )
