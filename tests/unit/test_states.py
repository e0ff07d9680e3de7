"""The workspace state machine: user operations and node reports (workspace/states.py)."""

from __future__ import annotations

import pytest

from workspace.codec import node as codec_node
from workspace.domain.states import (
    BOOTING,
    Desired,
    Observed,
    Op,
    State,
    apply_op,
    state_from_report,
)
from workspace.errors import FailedPrecondition
from workspace.node.v1 import nodes_pb2

S = State
D = Desired

# The expected effect of each operation, written out independently of the code:
# op -> {state it is allowed from: (new desired, state shown while the node works)}.
_AFTER_START = (D.RUNNING, S.STARTING)
_AFTER_STOP = (D.STOPPED, S.STOPPING)
_AFTER_DESTROY = (D.TERMINATED, S.STOPPING)
EXPECTED: dict[Op, dict[State, tuple[Desired, State]]] = {
    Op.START: {S.STOPPED: _AFTER_START, S.FAILED: _AFTER_START},
    Op.STOP: {
        s: _AFTER_STOP
        for s in (
            S.PENDING,
            S.SCHEDULED,
            S.PROPAGATING,
            S.STARTING,
            S.RUNNING,
            S.PAUSED,
            S.FAILED,
            S.STOPPING,  # again: its timeout and --force anew
        )
    },
    Op.REBOOT: {S.RUNNING: (D.RUNNING, S.RUNNING)},
    Op.PAUSE: {S.RUNNING: (D.PAUSED, S.RUNNING)},
    Op.RESUME: {S.PAUSED: (D.RUNNING, S.PAUSED)},
    Op.DESTROY: {s: _AFTER_DESTROY for s in State if s is not S.TERMINATED},
}
# Where the op's effect was already asked for (the desired state that goes with the
# state): accepted again, changing nothing (None), as a retried request must be.
ALREADY: dict[Op, set[State]] = {
    Op.START: {S.PENDING, S.SCHEDULED, S.PROPAGATING, S.STARTING, S.RUNNING},
    Op.STOP: {S.STOPPED},
    Op.REBOOT: set(),
    Op.PAUSE: {S.PAUSED},
    Op.RESUME: {S.RUNNING},
    Op.DESTROY: set(),
}


def _natural_desired(state: State) -> Desired:
    """A desired state that goes with `state` for a workspace nobody is destroying."""
    if state in (S.STOPPED, S.STOPPING):
        return D.STOPPED
    if state is S.PAUSED:
        return D.PAUSED
    return D.RUNNING


def test_every_op_has_an_expectation() -> None:
    assert set(EXPECTED) == set(Op)


@pytest.mark.parametrize("state", [s for s in State if s is not S.TERMINATED], ids=str)
@pytest.mark.parametrize("op", list(Op), ids=str)
def test_op_from_every_state(op: Op, state: State) -> None:
    desired = _natural_desired(state)
    allowed = EXPECTED[op]
    if state in ALREADY[op]:
        assert apply_op(op, state, desired, "workspace web1") is None
    elif state in allowed:
        t = apply_op(op, state, desired, "workspace web1")
        assert t is not None and (t.desired, t.state) == allowed[state]
    else:
        with pytest.raises(FailedPrecondition) as exc:
            apply_op(op, state, desired, "workspace web1")
        msg = exc.value.message
        assert state.value in msg, msg
        assert op.value in msg, msg
        assert "web1" in msg, msg


NOT_DESTROY = [op for op in Op if op is not Op.DESTROY]


@pytest.mark.parametrize("op", NOT_DESTROY, ids=str)
def test_every_op_refused_on_terminated_workspace(op: Op) -> None:
    with pytest.raises(FailedPrecondition, match=r"web1 was destroyed"):
        apply_op(op, S.TERMINATED, D.TERMINATED, "web1")


@pytest.mark.parametrize("state", [S.STOPPING, S.RUNNING, S.LOST, S.FAILED], ids=str)
@pytest.mark.parametrize("op", NOT_DESTROY, ids=str)
def test_every_op_refused_while_being_destroyed(op: Op, state: State) -> None:
    """Once destroy was asked for, nothing but destroy again is accepted."""
    with pytest.raises(FailedPrecondition, match=r"web1 is being destroyed"):
        apply_op(op, state, D.TERMINATED, "web1")


@pytest.mark.parametrize("state", [S.STOPPING, S.RUNNING, S.LOST, S.TERMINATED], ids=str)
def test_a_second_destroy_changes_nothing_and_is_not_refused(state: State) -> None:
    """A destroy retried (its first answer lost, maybe on another replica) or repeated
    gets the workspace as it is, being destroyed or destroyed."""
    assert apply_op(Op.DESTROY, state, D.TERMINATED, "web1") is None


def test_refusal_hints_say_what_would_work() -> None:
    with pytest.raises(FailedPrecondition, match="only a STOPPED or FAILED workspace"):
        apply_op(Op.START, S.PAUSED, D.PAUSED)
    with pytest.raises(FailedPrecondition, match="only a PAUSED workspace can be resumed"):
        apply_op(Op.RESUME, S.STOPPED, D.STOPPED)
    with pytest.raises(FailedPrecondition, match="only a RUNNING workspace can be paused"):
        apply_op(Op.PAUSE, S.STOPPED, D.STOPPED)


def test_a_pause_not_carried_out_yet_is_withdrawn_by_a_resume() -> None:
    """Pause shows the workspace RUNNING until its node pauses it. A resume then was
    refused, "it is RUNNING; only a PAUSED workspace can be resumed", though it was
    being paused; it now keeps it running. Likewise a pause of one being resumed.
    The node may have paused it already (its report on its way): the resume shows it
    PAUSED, being resumed, until the node reports RUNNING; it answered RUNNING at once,
    while the guest stayed paused, and `ws resume --wait` ended there. Likewise a pause
    withdrawing a resume the node may have made shows RUNNING, being paused, until the
    node reports PAUSED (it answered PAUSED: `ws pause --wait` ended, the guest running).
    Each is then what a plain resume (pause) under way shows, and withdrawn as it is."""
    t = apply_op(Op.RESUME, S.RUNNING, D.PAUSED, "workspace web1")
    assert t is not None and (t.desired, t.state) == (D.RUNNING, S.PAUSED)
    t = apply_op(Op.PAUSE, S.PAUSED, D.RUNNING, "workspace web1")
    assert t is not None and (t.desired, t.state) == (D.PAUSED, S.RUNNING)
    # Back and forth: each withdraws the one before, never an "already asked".
    t = apply_op(Op.RESUME, t.state, t.desired, "workspace web1")
    assert t is not None and (t.desired, t.state) == (D.RUNNING, S.PAUSED)
    # The same again was already asked for: accepted, changing nothing (None), as a
    # start again while it boots is; it was a new change (a new event to every watcher).
    assert apply_op(Op.PAUSE, S.RUNNING, D.PAUSED, "workspace web1") is None
    assert apply_op(Op.RESUME, S.PAUSED, D.RUNNING, "workspace web1") is None
    # Stop and destroy are as from the state.
    t = apply_op(Op.STOP, S.RUNNING, D.PAUSED, "workspace web1")
    assert t is not None and (t.desired, t.state) == (D.STOPPED, S.STOPPING)
    t = apply_op(Op.DESTROY, S.PAUSED, D.RUNNING, "workspace web1")
    assert t is not None and t.desired is D.TERMINATED


@pytest.mark.parametrize(
    ("op", "state", "desired", "why"),
    [
        # A reboot, allowed by RUNNING alone, made it RUNNING again: the pause undone.
        (Op.REBOOT, S.RUNNING, D.PAUSED, "it is being paused (still RUNNING); resume it first"),
        (Op.START, S.RUNNING, D.PAUSED, "it is being paused (still RUNNING); resume it first"),
        (Op.REBOOT, S.PAUSED, D.RUNNING, "being resumed (still PAUSED); wait until it is RUNNING"),
        (Op.START, S.PAUSED, D.RUNNING, "being resumed (still PAUSED); wait until it is RUNNING"),
    ],
)
def test_what_a_pause_or_resume_under_way_refuses_says_so(
    op: Op, state: State, desired: Desired, why: str
) -> None:
    with pytest.raises(FailedPrecondition) as exc:
        apply_op(op, state, desired, "workspace web1")
    assert exc.value.message.startswith(f"cannot {op.value} workspace web1: ")
    assert exc.value.message.endswith(why)


def test_lost_workspace_can_only_be_destroyed() -> None:
    for op in Op:
        if op is Op.DESTROY:
            t = apply_op(op, S.LOST, D.RUNNING)
            assert t is not None and t.desired is D.TERMINATED
        else:
            with pytest.raises(FailedPrecondition, match="LOST"):
                apply_op(op, S.LOST, D.RUNNING)


# -- node reports ---------------------------------------------------------------------

OBSERVED_NAMES = [o.value for o in Observed]


@pytest.mark.parametrize("observed", OBSERVED_NAMES)
@pytest.mark.parametrize("desired", list(Desired), ids=str)
def test_terminated_is_final(desired: Desired, observed: str) -> None:
    assert state_from_report(S.TERMINATED, desired, observed) is None


@pytest.mark.parametrize("observed", OBSERVED_NAMES)
def test_being_destroyed_terminates_only_on_absent(observed: str) -> None:
    new = state_from_report(S.STOPPING, D.TERMINATED, observed)
    if observed == "ABSENT":
        assert new is S.TERMINATED
    else:
        assert new is S.STOPPING


@pytest.mark.parametrize("desired", [D.RUNNING, D.PAUSED, D.STOPPED], ids=str)
@pytest.mark.parametrize("state", [S.RUNNING, S.STOPPED, S.SCHEDULED, S.FAILED], ids=str)
def test_absent_does_not_terminate_a_workspace_that_should_exist(
    state: State, desired: Desired
) -> None:
    assert state_from_report(state, desired, "ABSENT") is None


@pytest.mark.parametrize("desired", [D.RUNNING, D.PAUSED], ids=str)
@pytest.mark.parametrize("state", sorted(BOOTING), ids=str)
def test_stale_stopped_while_booting_does_not_flap(state: State, desired: Desired) -> None:
    assert state_from_report(state, desired, "STOPPED") is None


def test_booting_states_are_the_bring_up_states() -> None:
    assert {S.PENDING, S.SCHEDULED, S.PROPAGATING, S.STARTING} == BOOTING


def test_stopped_report_is_shown_when_not_booting() -> None:
    # The guest shut itself down: the owner must see it.
    assert state_from_report(S.RUNNING, D.RUNNING, "STOPPED") is S.STOPPED
    # A requested stop completes.
    assert state_from_report(S.STOPPING, D.STOPPED, "STOPPED") is S.STOPPED
    # While booting but the owner asked for a stop, STOPPED is the truth.
    assert state_from_report(S.STARTING, D.STOPPED, "STOPPED") is S.STOPPED


def test_lost_recovers_on_running_report() -> None:
    assert state_from_report(S.LOST, D.RUNNING, "RUNNING") is S.RUNNING


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        ("PROPAGATING", S.PROPAGATING),
        ("STARTING", S.STARTING),
        ("RUNNING", S.RUNNING),
        ("PAUSED", S.PAUSED),
        ("STOPPING", S.STOPPING),
        ("FAILED", S.FAILED),
    ],
)
def test_report_moves_scheduled_workspace(observed: str, expected: State | None) -> None:
    assert state_from_report(S.SCHEDULED, D.RUNNING, observed) is expected


def test_pause_completes_on_paused_report() -> None:
    t = apply_op(Op.PAUSE, S.RUNNING, D.RUNNING)
    assert state_from_report(t.state, t.desired, "PAUSED") is S.PAUSED


def test_destroy_then_absent_walks_to_terminated() -> None:
    t = apply_op(Op.DESTROY, S.RUNNING, D.RUNNING)
    assert state_from_report(t.state, t.desired, "RUNNING") is S.STOPPING
    assert state_from_report(t.state, t.desired, "ABSENT") is S.TERMINATED


def test_stale_running_report_does_not_undo_stopping() -> None:
    for observed in ("RUNNING", "PAUSED", "STARTING"):
        assert state_from_report(State.STOPPING, Desired.STOPPED, observed) is None
    assert state_from_report(State.STOPPING, Desired.STOPPED, "STOPPED") is State.STOPPED


def test_unspecified_report_says_nothing() -> None:
    """A report without a state decodes to None at the edge; the service ignores it."""
    assert codec_node.observed_from_proto(nodes_pb2.OBSERVED_STATE_UNSPECIFIED) is None
    every = {codec_node.observed_from_proto(v) for v in nodes_pb2.ObservedState.values()}
    assert every == {None, *Observed}


@pytest.mark.parametrize("observed", ["PROPAGATING", "STARTING", "RUNNING", "PAUSED"])
def test_a_stop_asked_for_while_the_node_makes_it_stays_stopping(observed: str) -> None:
    # Stopped while SCHEDULED: the node's reports of its bring-up, sent before it acts on
    # the stop, must not walk the state back to RUNNING.
    assert state_from_report(S.STOPPING, D.STOPPED, observed) is None
    assert state_from_report(S.STOPPING, D.STOPPED, "STOPPED") is S.STOPPED
