"""Connection tracking entries of addresses given to another NIC: forgotten.

The ``in_`` chains of CLUSTER and OUTBOUND NICs accept what conntrack calls established
or related (agent/net/filter.py). conntrack knows flows by addresses and ports, not by
workspaces: when a workspace of the node ends and its address is given to a new one
there, a flow of the old one (an SSH session, a UDP stream kept alive every few
seconds) went on being established for the new one, whose policy never allowed it.
So every address whose NIC changed (``moved``) has its flows deleted (``forget``) once
the new ruleset holds, before the new VM starts.

Which NIC held each address is kept in ``<state_dir>/addresses.json`` so that a
restarted agent compares with what the last one applied; without that file (a node's
first start, an upgrade) nothing is forgotten: an agent restart must not cut the
running VMs' connections.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
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


def forget(addresses: Iterable[str], netns: str | None = None) -> int:
    """Delete every conntrack entry with one of ``addresses`` as a source or destination
    (either direction); the number deleted. Raises OSError or NetlinkError."""
    wanted = set(addresses)
    if not wanted:
        return 0
    done = 0
    ct = Conntrack(netns=netns) if netns else Conntrack()
    try:
        stale = [
            e
            for e in ct.dump_entries()
            if {
                e.tuple_orig.saddr,
                e.tuple_orig.daddr,
                e.tuple_reply.saddr,
                e.tuple_reply.daddr,
            }
            & wanted
        ]
        for entry in stale:
            try:
                ct.delete(entry)
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: it ended meanwhile
                    raise
                continue
            done += 1
    finally:
        ct.close()
    return done
