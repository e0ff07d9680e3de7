#!/usr/bin/env python3
"""Preemption planning at site scale: the cost of choosing the fewest victims.

Pure scheduler figures (no service, no store) on ``--nodes`` nodes (default 1,000), each
full of 1-GiB preemptible workspaces (16 GiB nodes: 14 victims each), with a same-run
baseline:

* ``place_fail_ms``: the ordinary placement of a normal 4 GiB request that does not fit
  (what every such request already pays before preemption is tried: the baseline);
* ``preempt_plan_ms``: ``scheduler.preempt.plan`` for the same request (the fewest
  victims: 3 on one node, exact search; ``preempt_victims``);
* ``preempt_plan_cluster8_ms``: an 8-member cluster of 4 GiB members, hard anti-affinity;
* ``preempt_plan_big_ms``: a 12 GiB request (11 victims of a node's 14).

    .venv/bin/python benchmarks/preempt.py [--nodes 1000] [--repeat 5]

Prints name=value lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit
from workspace.config import SchedulerConfig
from workspace.scheduler import Affinity, NodeView, Request, memory_claim_mib, place
from workspace.scheduler.preempt import Victim, plan

GIB = 1024


def site(count: int, cfg: SchedulerConfig) -> tuple[list[NodeView], list[Victim]]:
    claim = memory_claim_mib(cfg, Request(1, GIB))
    nodes: list[NodeView] = []
    victims: list[Victim] = []
    for n in range(count):
        name = f"node-{n:04d}"
        mine = [Victim(f"{name}-v{i}", name, 1, claim, rank=i) for i in range(14)]
        victims += mine
        nodes.append(
            NodeView(
                name=name,
                state="READY",
                cpus=16,
                memory_mib=16 * GIB,
                used_cpus=len(mine),
                used_memory_mib=sum(v.memory_mib for v in mine),
                hypervisor="kvm",
                networks=("default",),
            )
        )
    return nodes, victims


def timed(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cfg = SchedulerConfig()
    nodes, victims = site(args.nodes, cfg)
    req = Request(2, 4 * GIB, ("default",))
    assert place(nodes, req, cfg).node is None
    found = plan(nodes, victims, [req], cfg)
    assert found is not None
    members = [Request(2, 4 * GIB, ("default",), member=f"m{i}") for i in range(8)]
    big = Request(2, 12 * GIB, ("default",))
    emit(
        {
            "nodes": args.nodes,
            "victims": len(victims),
            "place_fail_ms": timed(lambda: place(nodes, req, cfg), args.repeat),
            "preempt_plan_ms": timed(lambda: plan(nodes, victims, [req], cfg), args.repeat),
            "preempt_victims": len(found.victims),
            "preempt_plan_cluster8_ms": timed(
                lambda: plan(nodes, victims, members, cfg, Affinity.HARD_ANTI), args.repeat
            ),
            "preempt_plan_big_ms": timed(
                lambda: plan(nodes, victims, [big], cfg), max(1, args.repeat // 5)
            ),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
