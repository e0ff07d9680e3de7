"""Agents refused a node's name, where the site admin looks.

The service refuses an agent a node's name when another agent reports for that node
(ops/reports.py ``check_one_agent``: two hosts, or two state directories, configured
with the same ``node``) or when the node is bound to another certificate
(``check_bound``). The refused agent says so in its own log and tries again every few
seconds; the node, served by the other agent, looks fine. So each refusal is also:

* a ``node.refused`` site event (`ws-admin events`): at most one per node, refused agent
  and ``EVENT_EVERY_S``, the next one saying how many refusals it stands for, so a
  looping agent does not flood the events;
* while the refusals go on (the last one within the service's ``node_grace_s``), an
  ``agent-refused`` condition of the node in `ws-admin node list` and `node show`
  (as the replica the agent called saw it: refusals are kept in memory). A refusal for
  another certificate than the bound one is over once the node is bound to another
  (its old one revoked, the agent registered with its new one): through whichever
  replica, since the binding is in the store, so no replica goes on showing it.

A DOWN node says it in its reason instead (ops/reports.py ``refused``).
"""

from __future__ import annotations

import dataclasses
import logging

from workspace import callctx
from workspace.domain.events import Kind, SiteEvent
from workspace.domain.model import NodeCondition, NodeStatus
from workspace.domain.states import NodeState
from workspace.ops import refusals
from workspace.ops.unit import Env

log = logging.getLogger("workspace.ops.nodes")

# How a node's remembered refusal begins (``refused``'s ``why``), and a DOWN node's
# reason when the service refuses its agent.
REFUSED = "its agent is refused: "
# At most one node.refused event per node, refused agent and this many seconds.
EVENT_EVERY_S = 300.0
# The condition `ws-admin node show` lists while a node's name is refused to an agent.
CONDITION = "agent-refused"
# What the event's state says the agent was refused for.
ANOTHER_AGENT = "another-agent"
CERTIFICATE = "certificate"


def refused(
    env: Env, node: str, agent_key: str, why: str, what: str, message: str, bound: str = ""
) -> None:
    """The agent ``agent_key`` ("": one that does not say its key) was refused ``node``'s
    name for ``what`` (``ANOTHER_AGENT``, ``CERTIFICATE``: then ``bound`` is the serial
    the node is bound to): remembered for the node's condition and DOWN reason (``why``:
    ``REFUSED`` and a few words), and recorded as a site event (``message``: the refusal
    the agent got) unless one was for the same agent within ``EVENT_EVERY_S``."""
    env.refused_nodes[node] = (env.clock(), why, bound)
    muted = env.warned.due((Kind.NODE_REFUSED.value, node, agent_key))
    if muted is None:
        return
    agent = f"agent {agent_key}: " if agent_key else ""
    log.warning("node %s: an agent is refused: %s%s", node, agent, message)
    more = f" ({muted} more refusal(s) since the last such event)" if muted else ""
    event = SiteEvent(
        at=env.clock(),
        kind=Kind.NODE_REFUSED.value,
        who=callctx.current().who,
        node=node,
        subject=agent_key,
        state=what,
        reason=f"{agent}{message}{more}",
    )
    refusals.record(env.store, env.notifier, [event])


def last(env: Env, node: str, bound: str) -> tuple[float, str]:
    """When and why this replica last refused an agent ``node``'s name ((0, "") if never,
    or if it refused another certificate than the one ``node`` is bound to now, ``bound``:
    that refusal is over, the agent registered with its new certificate)."""
    when, why, about = env.refused_nodes.get(node, (0.0, "", ""))
    return (0.0, "") if about and about != bound else (when, why)


def shown(env: Env, status: NodeStatus, bound: str) -> NodeStatus:
    """``status`` with an ``agent-refused`` condition while an agent is refused its name
    (the last refusal within ``node_grace_s``) and it is not DOWN (its reason says it);
    ``bound``: the serial of the certificate the node is bound to."""
    when, why = last(env, status.name, bound)
    if not why or status.state is NodeState.DOWN:
        return status
    age = env.clock() - when
    if age > env.cfg.node_grace_s:
        return status
    said = why.removeprefix(REFUSED)
    message = f"an agent is refused this node's name (last {max(age, 0):.0f} s ago): {said}"
    cond = NodeCondition(CONDITION, message)
    return dataclasses.replace(status, conditions=(*status.conditions, cond))
