"""The real-VM tests in two lanes (`make test`: ``pytest -n 2 --host-lanes -m host``).

The modules whose guests run the cloud image (cloud-init under TCG: a minute and more of
a core per boot, and seconds of it for each command in a guest) and those that hold the
real-VM lock from start to end (``realsite.appliance_site``) are one unit of work: one
pytest-xdist worker runs them one after another, so their guests never take the cores
from each other's and no worker waits on the lock. Every other module is a unit of its
own (its module fixtures made once), run whole by the other worker beside them.

pytest-xdist's own ``--dist loadgroup`` would do this with ``xdist_group`` marks, but
with pytest 9 it puts every test in a group of its own (it renames ``item._nodeid``,
which pytest 9 no longer reads): module fixtures were then made once per worker.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling

CLOUD_LANE = "cloud-lane"
CLOUD_LANE_MODULES = frozenset(
    {"test_e2e_context", "test_e2e_network", "test_slurm_real", "test_backfill_real",
     "test_preempt_real"}
)  # fmt: skip


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: the cloud lane, or its own module."""
    module = nodeid.split("::", 1)[0]
    return CLOUD_LANE if PurePosixPath(module).stem in CLOUD_LANE_MODULES else module


class HostLanes(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with ``unit_of`` as the scope: the largest unit
    (the cloud lane) goes out first, every worker takes the next unit as its own ends."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)
