"""States of workspaces, nodes and clusters, and the workspace state machine as pure
functions.

Desired state (what the owner asked for) and state (what the system observed or
is doing) are separate. A user operation checks the current state, then moves
the desired state and the state it shows while the node works on it; the node's
reports move the state the rest of the way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from workspace.errors import FailedPrecondition

# The reason a workspace shows once the site's trust policy stopped it (ops/trust_admin.py:
# a revocation under ENFORCE with stop_running_on_revoke); it keeps it when stopped.
TRUST_STOPPED = "stopped by the site's trust policy: "
# How the reason of a workspace LOST with its node ends (ops/liveness.py); its node's
# next word of it (ops/reports.py) says what it is instead.
NOT_MOVED = "; the workspace was not restarted elsewhere"


class State(enum.StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PROPAGATING = "PROPAGATING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"
    LOST = "LOST"


class Desired(enum.StrEnum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    TERMINATED = "TERMINATED"


class Observed(enum.StrEnum):
    """What a node reports of one workspace."""

    PROPAGATING = "PROPAGATING"  # fetching blobs / preparing disks
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ABSENT = "ABSENT"  # nothing of it exists on the node
    FAILED = "FAILED"


class NodeState(enum.StrEnum):
    READY = "READY"
    DRAINING = "DRAINING"
    DOWN = "DOWN"


# The conditions an agent reports of a node (NodeCondition.code, domain/model.py); a
# service keeps any code it is sent, and the scheduler reads these three.
NO_ISOLATION = "no-isolation"  # bridged IPv4 does not pass the inet hooks (br_netfilter)
NETWORK_NOT_READY = "network-not-ready"  # subject: the network the node could not make ready
# The agent cannot reach its hypervisor (libvirtd is down): the node can run no VM.
HYPERVISOR_UNREACHABLE = "hypervisor-unreachable"


class ClusterState(enum.StrEnum):
    PENDING = "PENDING"  # waiting for capacity; nothing placed yet
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


class FailurePolicy(enum.StrEnum):
    """What a cluster does when a member fails."""

    KEEP = "KEEP"  # keep the others; the cluster is FAILED until fixed
    TEARDOWN = "TEARDOWN"  # destroy the whole cluster


class Op(enum.StrEnum):
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    PAUSE = "pause"
    RESUME = "resume"
    DESTROY = "destroy"


# Lifecycle states in which the VM is being brought up.
BOOTING = frozenset({State.PENDING, State.SCHEDULED, State.PROPAGATING, State.STARTING})

_ALLOWED: dict[Op, frozenset[State]] = {
    Op.START: frozenset({State.STOPPED, State.FAILED}),
    # Also while it stops: a second stop sets its timeout and --force anew.
    Op.STOP: frozenset({*BOOTING, State.RUNNING, State.PAUSED, State.FAILED, State.STOPPING}),
    Op.REBOOT: frozenset({State.RUNNING}),
    Op.PAUSE: frozenset({State.RUNNING}),
    Op.RESUME: frozenset({State.PAUSED}),
    Op.DESTROY: frozenset(set(State) - {State.TERMINATED}),
}

# (new desired, state shown while the node works on it; None keeps the state)
_EFFECT: dict[Op, tuple[Desired, State | None]] = {
    Op.START: (Desired.RUNNING, State.STARTING),
    Op.STOP: (Desired.STOPPED, State.STOPPING),
    Op.REBOOT: (Desired.RUNNING, None),
    Op.PAUSE: (Desired.PAUSED, None),
    Op.RESUME: (Desired.RUNNING, None),
    Op.DESTROY: (Desired.TERMINATED, State.STOPPING),
}


# An operation whose effect was already asked for, and holds or is under way: accepted
# again, changing nothing. A client that lost the first answer retries it, on another
# replica too (workspace/failover.py), and a script may simply make sure. A stop under
# way (STOPPING) is not: a second one sets its timeout and --force anew (``_ALLOWED``).
# A pause or resume under way shows the state before it (``_UNDER_WAY``).
_ALREADY: dict[Op, tuple[Desired, frozenset[State]]] = {
    Op.START: (Desired.RUNNING, frozenset({*BOOTING, State.RUNNING})),
    Op.STOP: (Desired.STOPPED, frozenset({State.STOPPED})),
    Op.PAUSE: (Desired.PAUSED, frozenset({State.RUNNING, State.PAUSED})),
    Op.RESUME: (Desired.RUNNING, frozenset({State.PAUSED, State.RUNNING})),
}


# A pause or resume asked for that the node has not carried out yet, by (state shown,
# desired): the state is still the one before it. The opposite operation withdraws it
# (a resume of a workspace still RUNNING, being paused, keeps it running: refused as
# "it is RUNNING" before); the same one again was already asked (``_ALREADY``); a start
# or a reboot is refused, saying so (a reboot, allowed by the RUNNING state alone, undid
# the pause).
_UNDER_WAY: dict[tuple[State, Desired], tuple[Op, str]] = {
    (State.RUNNING, Desired.PAUSED): (
        Op.RESUME,
        "it is being paused (still RUNNING); resume it first",
    ),
    (State.PAUSED, Desired.RUNNING): (
        Op.PAUSE,
        "it is being resumed (still PAUSED); wait until it is RUNNING",
    ),
}


# The state a withdrawal shows (by the withdrawing op): the withdrawn one may have been
# carried out already, its node's report on its way, so the guest is not known to be in
# the state the withdrawing op wants until its node reports it. A resume shows PAUSED,
# being resumed; a pause RUNNING, being paused: a `ws resume|pause --wait` ends when the
# node reports the guest running (paused), not at the answer (a pause withdrawing a
# resume answered PAUSED, and `ws pause --wait` ended while the guest ran).
_WITHDRAWN_SHOWS: dict[Op, State] = {Op.RESUME: State.PAUSED, Op.PAUSE: State.RUNNING}


@dataclass(frozen=True)
class Transition:
    desired: Desired
    state: State


def apply_op(op: Op, state: State, desired: Desired, name: str = "workspace") -> Transition | None:
    """The effect of a user operation; None when it was already asked for (nothing
    changes: ``_ALREADY``, and a destroy once destroy was asked); FailedPrecondition
    saying why it is refused."""
    if desired is Desired.TERMINATED:
        if op is Op.DESTROY:
            return None
        if state is State.TERMINATED:
            raise FailedPrecondition(f"{name} was destroyed; nothing to {op.value}")
        raise FailedPrecondition(f"{name} is being destroyed; it cannot {op.value}")
    already = _ALREADY.get(op)
    if already is not None and desired is already[0] and state in already[1]:
        return None
    under_way = _UNDER_WAY.get((state, desired))
    if under_way is not None and op in (Op.START, Op.REBOOT, Op.PAUSE, Op.RESUME):
        withdraws, refusal = under_way
        if op is withdraws:  # not reported done yet: it need not be
            # The node may have carried it out already (its report is on its way): a
            # resume shows PAUSED, being resumed, until the node reports RUNNING, rather
            # than RUNNING before the guest runs (`ws resume --wait` ended at once); a
            # pause, RUNNING until the node reports PAUSED.
            return Transition(_EFFECT[op][0], _WITHDRAWN_SHOWS[op])
        # The same one again was already asked for (above): a start or a reboot.
        raise FailedPrecondition(f"cannot {op.value} {name}: {refusal}")
    if state not in _ALLOWED[op]:
        hint = {
            Op.START: "only a STOPPED or FAILED workspace can be started",
            Op.STOP: "it is not running",
            Op.REBOOT: "only a RUNNING workspace can be rebooted",
            Op.PAUSE: "only a RUNNING workspace can be paused",
            Op.RESUME: "only a PAUSED workspace can be resumed",
            Op.DESTROY: "",
        }[op]
        raise FailedPrecondition(f"cannot {op.value} {name}: it is {state.value}; {hint}")
    new_desired, shown = _EFFECT[op]
    return Transition(new_desired, shown if shown is not None else state)


# What a node may still report of a workspace after a stop was asked for, before it acts
# on the stop.
_BEFORE_STOPPING = frozenset({State.PROPAGATING, State.STARTING, State.RUNNING, State.PAUSED})


def state_from_report(state: State, desired: Desired, observed: Observed) -> State | None:
    """The state a node's observation moves a workspace to (None: no change).

    A workspace that is meant to be gone becomes TERMINATED only when the node
    says nothing of it is left (ABSENT).
    """
    observed = Observed(observed)
    if state is State.TERMINATED:
        return None
    if desired is Desired.TERMINATED:
        return State.TERMINATED if observed is Observed.ABSENT else State.STOPPING
    if observed is Observed.ABSENT:  # while it should exist: the node is (re)creating it
        return None
    new = State(observed.value)
    # A report sent before the node started stopping it must not undo STOPPING (a stop
    # asked for while the node was still making it: PROPAGATING, STARTING).
    if desired is Desired.STOPPED and state is State.STOPPING and new in _BEFORE_STOPPING:
        return None
    # A node that shows a stopped domain while the owner wants it running is about to
    # start it: keep showing STARTING rather than flapping to STOPPED.
    if new is State.STOPPED and desired in (Desired.RUNNING, Desired.PAUSED) and (state in BOOTING):
        return None
    return new
