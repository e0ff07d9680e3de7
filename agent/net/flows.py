"""Connection tracking entries of addresses given to another NIC: forgotten.

The ``in_`` chains of CLUSTER and OUTBOUND NICs accept what conntrack calls established
or related (agent/net/filter.py). conntrack knows flows by addresses and ports, not by
workspaces: when a workspace of the node ends and its address is given to a new one
there, a flow of the old one (an SSH session, a UDP stream kept alive every few
seconds) went on being established for the new one, whose policy never allowed it.
So every address whose NIC changed (``moved``) has its flows deleted (``forget``) once
the new ruleset holds, before the new VM starts.

The same holds for a CLUSTER NIC's peers: a member that left the cluster (destroyed, its
address soon another workspace's, on any node) is no peer in the new ruleset, but the
flows it had with the NIC stayed established, and whoever holds its address next could
go on in them. So the flows between a NIC and each address that left its peers
(``dropped_peers``) are deleted too (``forget_pairs``). Peers are compared with the
last pass of this agent process only: a restarted agent forgets none.

Which NIC held each address is kept in ``<state_dir>/addresses.json`` so that a
restarted agent compares with what the last one applied; without that file (a node's
first start, an upgrade) nothing is forgotten: an agent restart must not cut the
running VMs' connections.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from workspace.files import write_private

log = logging.getLogger("agent.net.flows")


def moved(before: Mapping[str, str] | None, now: Mapping[str, str]) -> set[str]:
    """The addresses of ``now`` (address → NIC) held by another NIC, or by none, in
    ``before``; none when ``before`` is unknown."""
    if before is None:
        return set()
    return {ip for ip, nic in now.items() if before.get(ip) != nic}


def load(path: Path) -> dict[str, str] | None:
    """The address → NIC map a previous agent recorded; None if there is none."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    if not isinstance(raw, dict):
        return None
    return {str(k): str(v) for k, v in raw.items()}


def save(path: Path, owners: Mapping[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(dict(owners), indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("cannot record the NICs' addresses in %s: %s", path, exc)


def dropped_peers(
    before: Mapping[str, tuple[str, frozenset[str]]] | None,
    now: Mapping[str, tuple[str, frozenset[str]]],
) -> set[tuple[str, str]]:
    """(address, former peer) pairs: for each NIC of ``now`` (NIC → its address and
    peers) that has the same address in ``before``, every peer it had there and has no
    more; none when ``before`` is unknown."""
    if before is None:
        return set()
    out: set[tuple[str, str]] = set()
    for key, (ip, peers) in now.items():
        old_ip, old_peers = before.get(key, ("", frozenset()))
        if old_ip == ip:
            out.update((ip, p) for p in old_peers - peers)
    return out


# Why ``Stale.why`` picks an entry: one of its addresses moved, or it is between a NIC
# and a former peer.
MOVED = "moved"
PEER = "peer"


@dataclass(frozen=True)
class Stale:
    """What one pass forgets, looked for in one dump of the table: every flow of
    ``addresses`` (``moved``), and every flow between the two addresses of one of
    ``pairs`` (``dropped_peers``), either direction."""

    addresses: frozenset[str] = frozenset()
    pairs: frozenset[frozenset[str]] = frozenset()

    @classmethod
    def of(cls, addresses: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> Stale:
        return cls(frozenset(addresses), frozenset(frozenset(p) for p in pairs if p[0] != p[1]))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.pairs)

    def why(self, ends: Set[str]) -> str:
        """Why the entry with these addresses (both tuples') is forgotten: ``MOVED``,
        ``PEER``, or "" (kept). An entry has at most four addresses, so at most six pairs
        to look up: its cost does not grow with the number of pairs dropped (a busy
        node's table times the pairs a cluster's shrink drops)."""
        if ends & self.addresses:
            return MOVED
        if self.pairs and any(frozenset(p) in self.pairs for p in combinations(sorted(ends), 2)):
            return PEER
        return ""


def forget(addresses: Iterable[str], netns: str | None = None) -> int:
    """Delete every conntrack entry with one of ``addresses`` as a source or destination
    (either direction); the number deleted. Raises OSError or NetlinkError."""
    stale = Stale.of(addresses=addresses)
    return forget_stale(stale, netns)[MOVED] if stale else 0


def forget_pairs(pairs: Iterable[tuple[str, str]], netns: str | None = None) -> int:
    """Delete every conntrack entry between the two addresses of one of ``pairs`` (either
    direction); the number deleted. Raises OSError or NetlinkError."""
    stale = Stale.of(pairs=pairs)
    return forget_stale(stale, netns)[PEER] if stale else 0


def forget_stale(stale: Stale, netns: str | None = None) -> dict[str, int]:
    """Delete the conntrack entries ``stale`` picks, from ONE dump of the table (it may
    hold hundreds of thousands of entries: the two clean-ups of a pass each dumped it
    whole); the number deleted for each reason (``MOVED``, ``PEER``). Raises OSError or
    NetlinkError."""
    done = {MOVED: 0, PEER: 0}
    if not stale:
        return done
    ct = Conntrack(netns=netns) if netns else Conntrack()
    try:
        picked = []
        for e in ct.dump_entries():
            ends = {
                e.tuple_orig.saddr,
                e.tuple_orig.daddr,
                e.tuple_reply.saddr,
                e.tuple_reply.daddr,
            }
            if why := stale.why(ends):
                picked.append((e, why))
        for entry, why in picked:
            try:
                ct.delete(entry)
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: it ended meanwhile
                    raise
                continue
            done[why] += 1
    finally:
        ct.close()
    return done
