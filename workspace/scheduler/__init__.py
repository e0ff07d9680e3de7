"""Placement as a pure function of (nodes snapshot, requests) → nodes, or reasons.

Filters (``filters.py``) say why they reject a node; weighers (``weighers.py``) order the
survivors; ``engine.py`` places one VM or a whole group, all-or-nothing, on a snapshot
(``snapshot.py``) that is consumed as each member is placed. The input can be saved as JSON
(``replay.py``) and replayed offline with each filter's verdict per node
(``python -m workspace.scheduler.explain FILE``). See docs/design/scheduler.md.

The explanation API lives in the submodule ``workspace.scheduler.explain`` (``explain``,
``explain_file``, ``main``); it is not imported here so that ``python -m`` runs it cleanly.
"""

from __future__ import annotations

from workspace.scheduler.engine import place, place_group, place_group_on, place_on
from workspace.scheduler.filters import FILTERS, Filter
from workspace.scheduler.model import (
    Affinity,
    GroupPlacement,
    MemberPlacement,
    NodeView,
    Placement,
    Request,
    affinity_from_proto,
    affinity_to_proto,
    memory_claim_mib,
    overhead_mib,
)
from workspace.scheduler.replay import from_json, to_json
from workspace.scheduler.reserve import Leaving, emptied, reserve
from workspace.scheduler.snapshot import Snapshot, capacity, shape_key
from workspace.scheduler.weighers import Weigher, weighers_for

__all__ = [
    "FILTERS",
    "Affinity",
    "Filter",
    "GroupPlacement",
    "Leaving",
    "MemberPlacement",
    "NodeView",
    "Placement",
    "Request",
    "Snapshot",
    "Weigher",
    "affinity_from_proto",
    "affinity_to_proto",
    "capacity",
    "emptied",
    "from_json",
    "memory_claim_mib",
    "overhead_mib",
    "place",
    "place_group",
    "place_group_on",
    "place_on",
    "reserve",
    "shape_key",
    "to_json",
    "weighers_for",
]
