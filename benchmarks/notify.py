#!/usr/bin/env python3
"""What one change costs the service's waiting threads, with many agents connected.

Every connected agent has a stream waiting for its node's orders to change
(``Notifier.wait_node``). A create changes one node. This script starts ``--streams``
threads waiting as those streams do (one per node), then makes ``--changes`` changes of
one node each, and measures the process's CPU per change (all threads, from
``time.process_time``).

Same-run baseline: ``resync`` calls (a tenth as many, each given more time to settle),
which wake every stream at once. Each change cost about that much while all streams
waited on one shared condition.

    .venv/bin/python benchmarks/notify.py [--streams 1000] [--changes 300]

Prints name=value lines: streams, node_change_cpu_us, wake_all_cpu_us,
wake_all_vs_node_change_ratio.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit
from workspace.ops.events import Notifier

# As long as the streams' own poll (edge/calls.py STREAM_POLL_S): no timeouts in a run.
WAIT_S = 60.0


def stream(n: Notifier, node: str, ready: threading.Barrier) -> None:
    seen = n.generation(node)
    ready.wait()
    while not n.closed:
        seen = n.wait_node(node, seen, WAIT_S)


def cpu_per_call(fn: object, calls: int, settle_s: float) -> float:
    """Process CPU seconds per call of ``fn``, the woken threads' included (each call is
    followed by a pause in which they run)."""
    assert callable(fn)
    cpu0 = time.process_time()
    for _ in range(calls):
        fn()
        time.sleep(settle_s)
    return (time.process_time() - cpu0) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--changes", type=int, default=300)
    p.add_argument("--settle-ms", type=float, default=2.0)
    args = p.parse_args()
    threading.stack_size(256 * 1024)
    n = Notifier()
    ready = threading.Barrier(args.streams + 1)
    threads = [
        threading.Thread(target=stream, args=(n, f"node{i}", ready), daemon=True)
        for i in range(args.streams)
    ]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.5)  # every stream waiting
    settle = args.settle_ms / 1000
    quiet = cpu_per_call(lambda: None, args.changes, settle)  # the pauses alone
    one = cpu_per_call(lambda: n.node_changed("node0"), args.changes, settle) - quiet
    every = cpu_per_call(n.resync, max(10, args.changes // 10), settle * 10) - quiet
    n.close()
    for t in threads:
        t.join(5)
    emit(
        {
            "streams": args.streams,
            "node_change_cpu_us": one * 1e6,
            "wake_all_cpu_us": every * 1e6,
            "wake_all_vs_node_change_ratio": every / one if one > 0 else float("inf"),
        }
    )


if __name__ == "__main__":
    main()
