"""The network limit of a workspace (``net_mbps``): an nftables policer per tap device.

libvirt's own ``<bandwidth>`` needs tc's ``sfq`` qdisc (towards the guest) and the
``police`` action with the ``u32`` classifier (from it); kernels built without them
(this project's test machines among them) refuse to start such a domain at all. An
nftables ``limit`` does the same policing with what the node's filter needs anyway
(nf_tables), so the limit is one table of its own, ``bridge ws_shape``, in the node's
network namespace (where the taps are):

* a named limit ``<tap>_out`` (from the guest: frames whose input port is the tap) and
  ``<tap>_in`` (to it: output port the tap), each shared by the forward chain (to and
  from other ports of the bridge: VMs, the uplink) and the input/output chains (to and
  from the host's own address on the bridge), so a direction has one budget;
* frames over the rate are dropped, as libvirt's ingress policer does; the burst is
  100 ms of the rate (at least 64 KiB), which keeps TCP close to the rate.

The whole table is rewritten atomically from the list of limited taps (one ``nft -f``
transaction: the table is created, deleted and created again), so applying is
level-triggered and idempotent. Pure rendering here; ``apply`` runs nft, and a
``Shaper`` checks the table on every pass and rewrites it when it is not what it wrote.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping

from agent.net.nftstate import Lister, TableWatch, list_table
from workspace.errors import DriverError

log = logging.getLogger(__name__)

TABLE = "ws_shape"
BURST_S = 0.1
MIN_BURST_BYTES = 64 * 1024


def rate_bytes(mbps: int) -> int:
    """Mbit/s (10^6 bits) in bytes per second."""
    return mbps * 1_000_000 // 8


def burst_bytes(mbps: int) -> int:
    return max(MIN_BURST_BYTES, int(rate_bytes(mbps) * BURST_S))


def ruleset(taps: Mapping[str, int]) -> str:
    """The ``nft -f`` text that makes the table police ``taps`` (tap -> Mbit/s, each
    direction) and nothing else; with no taps the table is removed."""
    lines = [f"table bridge {TABLE}", f"delete table bridge {TABLE}"]
    limited = {tap: mbps for tap, mbps in sorted(taps.items()) if mbps > 0}
    if not limited:
        return "\n".join(lines) + "\n"
    lines.append(f"table bridge {TABLE} {{")
    for tap, mbps in limited.items():
        rate, burst = rate_bytes(mbps), burst_bytes(mbps)
        for way in ("in", "out"):
            lines.append(
                f"  limit {tap}_{way} {{ rate over {rate} bytes/second burst {burst} bytes }}"
            )
    chains = {
        "forward": ("iifname", "oifname"),
        "input": ("iifname",),
        "output": ("oifname",),
    }
    for chain, matches in chains.items():
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type filter hook {chain} priority 0; policy accept;")
        for tap in limited:
            for match in matches:
                way = "out" if match == "iifname" else "in"
                lines.append(f'    {match} "{tap}" limit name "{tap}_{way}" drop')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


class Shaper:
    """The table of this process's network namespace, kept as the agent last made it.

    ``apply`` is called after every change of the running domains' limits and on every
    reconcile pass (``Driver.resync_host``): it writes the table when the taps changed,
    when nothing was written yet by this process (a restarted agent rewrites it, whatever
    it finds), or when the table no longer holds what was written (deleted, flushed by
    an ``nftables.service`` restart, edited: logged as a warning)."""

    def __init__(self, lister: Lister = list_table) -> None:
        self._lock = threading.Lock()
        self._taps: dict[str, int] | None = None  # what was last written
        self._watch = TableWatch([("bridge", TABLE)], lister)

    def apply(self, taps: Mapping[str, int]) -> None:
        want = {tap: mbps for tap, mbps in taps.items() if mbps > 0}
        with self._lock:
            if want == self._taps:
                drifted = self._watch.drifted()
                if not drifted:
                    return
                log.warning(
                    "network limits: table %s missing or changed behind the agent's back;"
                    " writing it again",
                    drifted[0],
                )
            self._taps = None
            apply(want)
            self._watch.record()
            self._taps = want


def apply(taps: Mapping[str, int]) -> None:
    """Make the table police exactly ``taps`` in this process's network namespace."""
    nft = shutil.which("nft")
    if nft is None:
        if any(taps.values()):
            raise DriverError("network limits need nft (nftables), which is not installed")
        return
    if not any(taps.values()):
        listed = subprocess.run(
            [nft, "list", "table", "bridge", TABLE], capture_output=True, text=True, timeout=30
        )
        if listed.returncode != 0:
            return  # no table of ours here: nothing to remove (and nothing written)
    proc = subprocess.run(
        [nft, "-f", "-"], input=ruleset(taps), capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise DriverError(f"nft: shaping {sorted(taps)} failed: {proc.stderr.strip()}")
