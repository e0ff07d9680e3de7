"""What ws-slurm tells Slurm of nodes that cannot run: the reasons it marks them DOWN
with (``sinfo -R``, ``scontrol show node``; ``scontrol.reason_text`` fits each into
ws-slurm's 200 characters) and the power-downs that go with them (``refuse``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from workspace import errors
from workspace.client_address import ServiceUnreachable, connect_reason
from workspace.slurm.hostlist import brief
from workspace.slurm.scontrol import Scontrol
from workspace.v1 import common_pb2

log = logging.getLogger("ws-slurm")
WS = common_pb2.WorkspaceState
# What grpc-core says before a connection's cause (``connect_reason`` keeps it).
CONNECT_WRAPPING = ("connect failed: ", "failed to connect to remote host: ")


def silence(ws: common_pb2.Workspace) -> str:
    """``its node n1 has not reported since ...`` for a workspace whose node is silent
    (the service's ``node_silent_since``), else ""."""
    if not ws.HasField("node_silent_since"):
        return ""
    since = ws.node_silent_since.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"its node {ws.node} has not reported since {since}"


def service_problem(exc: errors.WorkspaceError) -> str:
    """A service error as a node's reason, its cause first: ``service unreachable: Connection
    refused at 10.0.0.5:7070`` (each address once, with what gRPC said of it), ``service
    unreachable: it did not answer within 30 s``, ``service refused ws-slurm: ...``. (Until
    session 44: ``the workspace service cannot be reached: cannot reach the workspace
    service at ADDRESS: ...``, whose cause the 200 characters cut off after a long
    socket path, behind a suspend's own words, or with replicas.)"""
    if isinstance(exc, ServiceUnreachable) and exc.failures:
        return f"service unreachable: {unreachable(exc)}"
    if isinstance(exc, errors.Unavailable):
        return f"service unreachable: {exc.message}"
    return f"service refused ws-slurm: {exc.message}"


def unreachable(exc: ServiceUnreachable) -> str:
    """Why no connection could be made, cause first: ``No such file or directory at
    unix:/run/ws.sock``; replicas that failed alike as one (``Connection refused at a:1,
    b:1``); then what the client added (``hint``: no identity given, a certificate the
    service closed the connection on, a local site's services down). Until session 44
    replicas lost that: an expired certificate was ``Connection reset by peer``."""
    by_cause: dict[str, list[str]] = {}
    for address, details in exc.failures:
        by_cause.setdefault(_cause(details), []).append(address)
    said = "; ".join(f"{cause} at {', '.join(where)}" for cause, where in by_cause.items())
    return said + exc.hint


def _cause(details: str) -> str:
    """gRPC's words for a connection that could not be made, its wrapping and the
    address taken off: ``Connection refused``, ``No such file or directory``."""
    said = connect_reason(details)
    for wrap in CONNECT_WRAPPING:
        if said.lower().startswith(wrap):
            return said[len(wrap) :] or said
    return said or "unavailable"


def refuse(
    scontrol: Scontrol, group_nodes: Sequence[str], down: Sequence[str], reason: str
) -> None:
    """A group that cannot be created: ``down`` (the nodes at fault: all of them, or
    those no rule maps) DOWN with ``reason``, so their job is requeued now and the admin
    sees why (``sinfo -R``); then every node of the group powered down, so none waits
    POWERING_UP for ResumeTimeout (which would overwrite the reason). The DOWN nodes get
    POWER_DOWN (they keep state and reason); the others, not DOWN, need POWER_DOWN_FORCE
    (plain POWER_DOWN waits for a POWERING_UP node to be idle: until ResumeTimeout). Force
    only once the DOWN has requeued the job: it cancels what still runs on the node."""
    marked = bool(down) and scontrol.set_down(down, reason)
    if down and not marked:
        log.warning("could not mark %s DOWN in Slurm (reason: %s)", brief(down), reason)
    elif down:
        log.info("%s marked DOWN in Slurm: %s", brief(down), reason)
    others = [n for n in group_nodes if n not in set(down)]
    if down and not scontrol.power_down(down):
        log.warning("could not power %s down in Slurm", brief(down))
    if others and not scontrol.power_down(others, force=marked or not down):
        log.warning("could not power %s down in Slurm", brief(others))


def fail_nodes(scontrol: Scontrol, command: str, nodes: Sequence[str], why: str) -> None:
    """ws-slurm cannot do ``command`` at all (its config, its identity, the service):
    Slurm is told, so that ``sinfo -R`` says why instead of a silent timeout.

    * resume: the nodes DOWN with ``why`` and powered down (their jobs requeued now);
    * suspend: the nodes DOWN (``suspend could not check for its workspace ...``; a node
      DOWN already is left as it is): Slurm thinks them powered off, but a workspace may
      be left; DOWN keeps them from being resumed onto it until the admin returns them,
      and a later run destroys it (``sweep``);
    * resume-fail: the nodes DOWN with why they could not be cleaned up.
    """
    if not nodes:
        return
    if command == "resume":
        refuse(scontrol, nodes, nodes, why)
        return
    if command == "suspend":
        # A node DOWN already keeps its reason: it is the cause (resume's refusal, which
        # powered the node down and so made Slurm run this suspend), and DOWN is what
        # this would set. A leftover is destroyed by a later run all the same (``sweep``).
        down = scontrol.already_down(nodes)
        nodes = [n for n in nodes if n not in down]
        reason = f"suspend could not check for its workspace: {why}"
    else:
        reason = f"did not register in ResumeTimeout; could not clean up: {why}"
    mark_down(scontrol, command, {n: reason for n in nodes})


def mark_down(scontrol: Scontrol, command: str, reasons: Mapping[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for n, r in reasons.items():
        by_reason.setdefault(r, []).append(n)
    for reason, nodes in by_reason.items():
        if scontrol.set_down(nodes, reason):
            log.info("%s: %s marked DOWN in Slurm: %s", command, brief(nodes), reason)
        else:
            log.warning(
                "%s: could not mark %s DOWN in Slurm (reason: %s)", command, brief(nodes), reason
            )


def fail_reason(node: str, mine: Sequence[common_pb2.Workspace]) -> str:
    """Why a node's resume failed, from its workspace: what the admin reads in
    ``sinfo -R`` (after ``ws: ``)."""
    for ws in mine:
        if ws.state in (WS.WORKSPACE_STATE_FAILED, WS.WORKSPACE_STATE_LOST):
            state = WS.Name(ws.state).removeprefix("WORKSPACE_STATE_")
            return f"workspace {ws.name} {state}: {ws.reason or 'no reason given'}"
    if mine:
        ws = mine[0]
        state = WS.Name(ws.state).removeprefix("WORKSPACE_STATE_")
        # The service's reason, if any: why it is still SCHEDULED (held while the
        # preempted workspaces on its node stop, ops/preempt.py), or the node's silence.
        why = "".join(f"; {x}" for x in (ws.reason, silence(ws)) if x)
        return f"did not register in ResumeTimeout (workspace {ws.name} was {state}{why})"
    # No workspace: resume made none (refused it, and powered the node down: see the log),
    # so "did not register" would send the admin looking at a guest that never was.
    return "resume made no workspace for it (see the ws-slurm log)"
