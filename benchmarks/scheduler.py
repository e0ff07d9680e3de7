#!/usr/bin/env python3
"""Scheduler at site scale: 1,000 nodes carrying 20,000 workspaces' worth of usage.

Pure scheduler figures (no service, no store), with a same-run baseline:

* ``snapshot_copy_ms``: one pass that only copies the node views into a snapshot (the floor
  any placement pays once per transaction);
* ``placements_per_s``: single-VM placements, sequential, each consuming one snapshot
  (how fast a queue drains); ``place_call_per_s``: stateless ``place(nodes, req, cfg)``
  calls, each building its own snapshot (the service's create path);
* ``cluster500_s``: one 500-member cluster with 2 roles and soft anti-affinity, placed
  all-or-nothing on a fresh snapshot (built inside the timing); ``cluster500_hard_anti_s``
  the same with hard anti-affinity.

    .venv/bin/python benchmarks/scheduler.py [--nodes 1000] [--workspaces 20000] [--seed 1]

Then the service at the same scale (``benchmarks/_scale_api.py``; skip with ``--no-api``):
``get_p99_ms``, ``list_p99_ms`` (a page of 500) and ``list_all_p99_ms`` (all in one
response), single creates over 1,000 nodes, creates from 16 clients at once
(``api_create16_rps``, ``api_create16_p99_ms``), ``service_rss_mib``. With ``--database
postgresql`` the service's store is a throwaway PostgreSQL server (fsync on); the names
printed are the same.

Prints name=value lines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_database_option, emit
from workspace.config import SchedulerConfig
from workspace.scheduler import (
    Affinity,
    NodeView,
    Request,
    Snapshot,
    memory_claim_mib,
    place,
    place_group,
    place_on,
)

GIB = 1024
IMAGES = [(f"sha256:{i:064x}", f"sha256:{i + 1000:064x}") for i in range(40)]
SIZES = [(1, 1 * GIB), (1, 2 * GIB), (2, 4 * GIB), (4, 8 * GIB), (8, 16 * GIB)]


@dataclass(frozen=True)
class Site:
    nodes: list[NodeView]
    cfg: SchedulerConfig


def make_site(n_nodes: int, n_workspaces: int, seed: int) -> Site:
    """Nodes of mixed sizes, 2% DRAINING and 1% DOWN, some GPU and Xen nodes, and the usage
    of ``n_workspaces`` existing VMs spread over them (placed here with a cheap first fit)."""
    rng = random.Random(seed)
    cfg = SchedulerConfig()
    shapes = [(32, 128 * GIB), (64, 256 * GIB), (128, 512 * GIB)]
    views = []
    for i in range(n_nodes):
        cpus, memory = rng.choice(shapes)
        roll = rng.random()
        views.append(
            NodeView(
                name=f"node-{i:04d}",
                state="DOWN" if roll < 0.01 else "DRAINING" if roll < 0.03 else "READY",
                cpus=cpus,
                memory_mib=memory,
                hypervisor="xen" if rng.random() < 0.1 else "kvm",
                labels={"gpu": "a100"} if rng.random() < 0.05 else {},
                networks=("default", "storage") if rng.random() < 0.5 else ("default",),
                cached_digests=frozenset(d for img in rng.sample(IMAGES, 3) for d in img),
            )
        )
    used_cpus = [0] * n_nodes
    used_memory = [0] * n_nodes
    for _ in range(n_workspaces):
        cpus, memory = rng.choice(SIZES)
        claim = memory_claim_mib(cfg, Request(cpus, memory))
        for _attempt in range(20):
            k = rng.randrange(n_nodes)
            v = views[k]
            if (
                used_cpus[k] + cpus <= v.cpus * cfg.cpu_overcommit
                and used_memory[k] + claim <= v.memory_mib
            ):
                used_cpus[k] += cpus
                used_memory[k] += claim
                break
    nodes = [
        replace(v, used_cpus=c, used_memory_mib=m)
        for v, c, m in zip(views, used_cpus, used_memory, strict=True)
    ]
    return Site(nodes, cfg)


def random_request(rng: random.Random, member: str = "") -> Request:
    cpus, memory = rng.choice(SIZES)
    roll = rng.random()
    networks = ("default", "storage") if roll < 0.2 else ("default",)
    requirements = {"gpu": "a100"} if roll > 0.97 else {}
    return Request(cpus, memory, networks, rng.choice(IMAGES), requirements, member)


def snapshot_copy_ms(site: Site, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        Snapshot(site.nodes, site.cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def placements_per_s(site: Site, count: int, seed: int) -> tuple[float, int]:
    rng = random.Random(seed)
    requests = [random_request(rng) for _ in range(count)]
    snapshot = Snapshot(site.nodes, site.cfg)
    placed = 0
    t0 = time.perf_counter()
    for req in requests:
        if place_on(snapshot, req).node is not None:
            placed += 1
    return count / (time.perf_counter() - t0), placed


def place_call_per_s(site: Site, count: int, seed: int) -> float:
    rng = random.Random(seed)
    requests = [random_request(rng) for _ in range(count)]
    t0 = time.perf_counter()
    for req in requests:
        place(site.nodes, req, site.cfg)
    return count / (time.perf_counter() - t0)


def cluster500(site: Site, affinity: Affinity) -> tuple[float, int]:
    """Seconds to place 100 head-ish members (4 vCPU, 8 GiB) + 400 workers (2 vCPU, 4 GiB)."""
    image = IMAGES[0]
    requests = [
        Request(4, 8 * GIB, ("default",), image, member=f"server-{i}") for i in range(100)
    ] + [Request(2, 4 * GIB, ("default",), image, member=f"worker-{i}") for i in range(400)]
    t0 = time.perf_counter()
    result = place_group(site.nodes, requests, site.cfg, affinity)
    elapsed = time.perf_counter() - t0
    if result.placements is None:
        raise SystemExit(f"cluster did not fit: member {result.failed_member}: {result.reason()}")
    return elapsed, len({p.node for p in result.placements})


def scheduler_figures(args: argparse.Namespace) -> dict[str, float]:
    site = make_site(args.nodes, args.workspaces, args.seed)
    figures: dict[str, float] = {"nodes": len(site.nodes), "existing_workspaces": args.workspaces}
    figures["snapshot_copy_ms"] = snapshot_copy_ms(site, 20)
    place_on(Snapshot(site.nodes, site.cfg), random_request(random.Random(0)))  # warm-up
    rate, placed = placements_per_s(site, args.placements, args.seed)
    figures["placements_per_s"] = rate
    figures["placements_placed"] = placed
    figures["place_call_per_s"] = place_call_per_s(site, args.calls, args.seed)
    runs = [cluster500(site, Affinity.SOFT_ANTI) for _ in range(args.repeat)]
    figures["cluster500_s"] = statistics.median(r[0] for r in runs)
    figures["cluster500_nodes_used"] = runs[0][1]
    figures["cluster500_hard_anti_s"] = statistics.median(
        cluster500(site, Affinity.HARD_ANTI)[0] for _ in range(args.repeat)
    )
    figures["cluster500_vs_copy_ratio"] = (
        figures["cluster500_s"] * 1000 / figures["snapshot_copy_ms"]
    )
    return figures


def api_figures(args: argparse.Namespace) -> dict[str, float]:
    """Service-level figures at the same scale: see benchmarks/_scale_api.py."""
    from benchmarks._scale_api import api_figures as measure

    return measure(args.nodes, args.workspaces, args.seed, database=args.database)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--workspaces", type=int, default=20_000)
    p.add_argument("--placements", type=int, default=5000, help="sequential single placements")
    p.add_argument("--calls", type=int, default=500, help="stateless place() calls")
    p.add_argument("--repeat", type=int, default=5, help="cluster500 runs (median reported)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--no-api",
        dest="api",
        action="store_false",
        help="skip the service-level figures (get/list p99, RSS; see _scale_api.py)",
    )
    add_database_option(p)
    args = p.parse_args(argv)
    figures = scheduler_figures(args)
    if args.api:
        figures |= api_figures(args)
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
