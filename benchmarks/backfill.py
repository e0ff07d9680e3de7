#!/usr/bin/env python3
"""Backfill's idle cost: what the leader's pass (ops/backfill.py ``Backfiller.run``) costs
when nothing changes, next to a same-run baseline.

An in-process service with a fake-driver node, ``--entries`` backfill entries (one image
each): first each filled to its max (``pass_full``: counts only), then each wanting more
than the node holds (``pass_blocked``: counts, and the nodes' capacity compared with the
one remembered at the last create that did not fit; no create tried). Baseline: the
capacity queue's pass with nothing waiting (``queue_idle``), which the leader runs
every 2 s anyway.

    .venv/bin/python benchmarks/backfill.py [--entries 20] [--passes 200]

Prints name=value lines (p50 in ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, percentile, timed
from tests.functional.harness import Site
from workspace.ops import queue
from workspace.ops.backfill import Backfiller
from workspace.v1 import admin_pb2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--entries", type=int, default=20)
    p.add_argument("--passes", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsb-bench-") as tmp:
        site = Site(Path(tmp), backfill_interval_s=3600.0)
        try:
            site.stubs.network()
            images = [f"img{i}" for i in range(args.entries)]
            for name in images:
                site.stubs.import_image(name)
            site.add_agent("node1", memory_mib=args.entries * 2 * 600)
            assert site.service is not None
            env = site.service.env
            filler = Backfiller(env)
            for name in images:
                site.stubs.admin.SetBackfill(
                    admin_pb2.BackfillEntry(image=name, max=1, memory_mib=64)
                )
            made = filler.run()
            assert made == args.entries, made
            full = timed(lambda: filler.run(), args.passes)
            # Each wants far more than fits: the first pass fills the node, the rest block.
            for name in images:
                site.stubs.admin.SetBackfill(
                    admin_pb2.BackfillEntry(image=name, max=1000, memory_mib=512)
                )
            filler.run()
            assert filler.run() == 0
            blocked = timed(lambda: filler.run(), args.passes)
            idle = timed(lambda: queue.process(env), args.passes)
        finally:
            site.close()
    emit(
        {
            "entries": args.entries,
            "pass_full_p50_ms": percentile(full, 50) * 1000,
            "pass_blocked_p50_ms": percentile(blocked, 50) * 1000,
            "queue_idle_p50_ms": percentile(idle, 50) * 1000,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
