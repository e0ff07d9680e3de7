"""Which workspaces each node was sent in which of its order sets, so that a full report
is not read as saying more than its node knew when it built it.

A full report names every workspace the node may have; one it does not name is taken as
gone from the node (ops/reports.py): its address and capacity are given back. But the
node built the report from the orders it had then. A workspace ordered in a later set
(created after those orders were read) is not named because the node had not heard of
it yet, and the node may be making it now. Each set this service process builds gets a
number (``NodeOrders.sequence``, strictly increasing), the workspaces in it are recorded
against it, and a full report says the number of the last set its node had taken
(``NodeReport.orders_sequence``): a workspace sent in a later set is not judged by it
(``may_have``). The next full report, built once the node took that set, judges it.

Kept in this process's memory only: a number this process did not give out (another
replica's, or one from before a restart) is not compared, and no workspace is judged by
such a report (another replica may have sent the node a workspace after that set: a
report that failed over to this replica while the node's order stream stayed on the
other); the node's next report, once it took a set from this process, judges them. A
report that says no number (an agent older than it) is taken as before. A number's high
bits are this process's own random prefix and its low bits a counter, so any number this
process gave out is known as its own however many sets were sent since (a node sent
more sets between two of its reports than a list of the last few could hold would
otherwise never be judged).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable

# A number: this process's prefix (PREFIX_BITS random bits) above a counter of COUNT_BITS,
# 63 bits in all (the proto's int64 stays positive).
COUNT_BITS = 40
PREFIX_BITS = 23


class SentOrders:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = (secrets.randbits(PREFIX_BITS) | 1) << COUNT_BITS  # never 0
        self._count = 0
        # node -> workspace id -> the last set it was sent in.
        self._last: dict[str, dict[str, int]] = {}

    def stamp(self, node: str, ids: Iterable[str]) -> int:
        """A new number for a set of ``node``'s orders holding ``ids``."""
        with self._lock:
            self._count += 1
            seq = self._prefix | self._count
            last = self._last.setdefault(node, {})
            for wid in ids:
                last[wid] = seq
            return seq

    def _ours(self, sequence: int) -> bool:
        """Whether this process gave out ``sequence``."""
        count = sequence & ((1 << COUNT_BITS) - 1)
        return sequence >> COUNT_BITS << COUNT_BITS == self._prefix and 0 < count <= self._count

    def may_have(self, node: str, sequence: int) -> frozenset[str] | None:
        """The workspaces a full report of ``node`` built with the set ``sequence`` may
        leave out while the node has them (or is making them): those sent in a later set.
        None when ``sequence`` is not a number this process gave out (another replica's,
        the report having failed over without its order stream; one from before a
        restart): the report judges no workspace, since what another process sent after
        that set is not known here. ``sequence`` 0 (not said): none."""
        with self._lock:
            last = self._last.get(node, {})
            if not sequence:
                last.clear()  # an agent older than numbers: nothing to keep for it
                return frozenset()
            if not self._ours(sequence):
                return None
            later = frozenset(wid for wid, seq in last.items() if seq > sequence)
            # What was sent up to this set is judged by this report: no later report of
            # the node says an older number (one report at a time, in order).
            for wid in [w for w, seq in last.items() if seq <= sequence]:
                del last[wid]
            return later
