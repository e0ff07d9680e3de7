"""A node's conditions: what keeps it from serving some workspaces, as its agent found
it (docs/design/agent.md, "Node conditions"). Each full report that says them replaces
those the service holds; one that appears or clears is a ``node.condition`` site event
and a line in the service's log naming the node."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from workspace import callctx
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.model import NodeCondition
from workspace.store import Node, journal
from workspace.store.mapping import node_conditions, set_conditions

log = logging.getLogger("workspace.ops.nodes")

APPEARED = "appeared"
CLEARED = "cleared"


def replace(s: Session, node: Node, found: Sequence[NodeCondition]) -> None:
    """``node``'s conditions are now ``found``; what changed is said (events, log).
    A condition whose message alone changed is kept with its new message, silently."""
    before = {c.label: c for c in node_conditions(node)}
    after = {c.label: c for c in set_conditions(node, found)}
    for label in sorted(after.keys() - before.keys()):
        cond = after[label]
        log.warning("node %s: condition %s: %s", node.name, label, cond.message)
        journal.add(s, _event(node, label, APPEARED, cond.message))
    for label in sorted(before.keys() - after.keys()):
        log.info("node %s: condition %s cleared", node.name, label)
        journal.add(s, _event(node, label, CLEARED, ""))


def _event(node: Node, label: str, state: str, reason: str) -> SiteEvent:
    return SiteEvent(
        at=time.time(),
        kind=Kind.NODE_CONDITION.value,
        who=callctx.current().who,
        node=node.name,
        subject=label,
        state=state,
        reason=reason,
    )
