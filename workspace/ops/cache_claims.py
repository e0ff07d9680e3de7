"""Which of the blobs a node says it caches the service believes (docs/design/cache.md,
"What a node's cache report is believed for").

A node's reports list the digests it holds. The service acts on that list: placement
prefers the nodes holding a request's blobs (the image-cache weigher, x100 under
``pack``), other nodes' orders name them as peers for those blobs, and a preload skips
them. A digest is no secret, so a compromised node that claimed an image's digests drew
every launch of the image, other tenants' workspaces with their user-data and disks,
and was named a source to every node fetching it.

A node can hold a blob only if the service let it have it: the service's FetchBlob and
the peers' grants (workspace/grants.py) serve a node only the blobs of its orders and
its prefetch list (``reports.may_fetch``), and a node that sent a blob (a save's disk,
``Nodes.PutBlob``) had its bytes. So a claim counts only for such a blob; the rest of
the list is kept out of ``nodes.cached_digests``, the column everything above reads.
A blob believed once stays believed while the node keeps reporting it (it was checked
then, and it may outlive the workspace it came for); one the node stops reporting is
checked again if it comes back. Only digests the column does not hold yet are checked,
so a heartbeat that says what the last one said costs one set difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from workspace.domain.states import State
from workspace.ops import blob_access
from workspace.ops.save import holder
from workspace.store import Node, Workspace
from workspace.store.mapping import bound_spec

log = logging.getLogger("workspace.ops.reports")

# Per node, the digests last refused and the node's ``orders_gen`` then (a new value
# whenever its workspaces or prefetch list change, store/orders_gen.py): until it
# changes, the same claims are refused again without a query. This process's own (a
# replica that has not seen them checks them once).
_doubted: dict[str, tuple[int, frozenset[str]]] = {}


def assigned(s: Session, node_name: str) -> set[str]:
    """The blobs of the workspaces on ``node_name`` (those not terminated): what the
    service serves it and grants it from peers for its orders."""
    digests: set[str] = set()
    for w in s.execute(
        select(Workspace).where(
            Workspace.node == node_name, Workspace.state != State.TERMINATED.value
        )
    ).scalars():
        digests.update(bound_spec(w).digests())
    return digests


def believed(
    s: Session, node: Node, reported: Sequence[str], said: int = logging.DEBUG
) -> list[str]:
    """Of the digests ``node`` reports cached, those the service believes (in the order
    said): those it believed before, and new ones it let the node have (its prefetch
    list, the blobs of its workspaces, the blobs it sent). The others are logged at
    level ``said`` (a heartbeat's at DEBUG: a node repeats them every few seconds)."""
    before = set(node.cached_digests or ())
    new = {d for d in reported if d not in before}
    if new:
        new -= set(node.prefetch or ())
    doubted = _doubted.get(node.name)
    if new and doubted is not None and doubted[0] == node.orders_gen and new <= doubted[1]:
        # Refused already, and the node's workspaces are as they were (a save's upload
        # changes its workspace too): the heartbeat of a node caching blobs of
        # workspaces long gone (every node, the first hours after migration 0030) costs
        # no query.
        return [d for d in reported if d not in new]
    if new:
        new -= blob_access.held(s, holder(node.name))
    if new:
        new -= assigned(s, node.name)
    if new:
        _doubted[node.name] = (node.orders_gen, frozenset(new))
        log.log(
            said,
            "node %s reports %d cached blob(s) the service did not let it have (%s%s); "
            "they do not count for placement nor as a peer source",
            node.name,
            len(new),
            min(new)[:80],
            ", ..." if len(new) > 1 else "",
        )
    return [d for d in reported if d not in new]
