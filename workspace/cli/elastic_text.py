"""How an elastic cluster's autoscaled roles read (``ws cluster show``, ``ws cluster
autoscale``)."""

from __future__ import annotations

import time
from typing import Any

from workspace.v1 import clusters_pb2


def _hms(t: Any) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t.seconds)) if t.seconds else ""


def autoscale_line(a: clusters_pb2.AutoscaleInfo) -> str:
    """``autoscale worker 1..4 on slurm-queue:debug, cool-down 60 s; last decision
    10:02:11: signal wants 3, have 2 → grew to 3``."""
    head = f"autoscale {a.role} {a.min}..{a.max} on {a.signal}, cool-down {a.cooldown_s} s"
    if not a.action:
        return head + "; no decision yet"
    return f"{head}; last decision {_hms(a.decided_at)}: {a.detail}"
