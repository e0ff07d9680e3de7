"""Into a running guest: a command through its guest agent (``exec``), the interactive
serial console (``open_console``). Both go to the node's agent over its task stream
(``ops/taskhub.py``); the service keeps nothing of them.

Only the workspace's owner and admins may: project members see each other's workspaces
but do not get into them (PERMISSION_DENIED); others do not see it at all (NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workspace.domain import booting
from workspace.domain.model import ExecResult
from workspace.domain.states import State
from workspace.domain.tasks import ExecTask
from workspace.errors import FailedPrecondition, InvalidArgument
from workspace.identity import Identity
from workspace.ops.lifecycle import check_owner, named_for, resolve_workspace
from workspace.ops.projects import as_identity
from workspace.ops.taskhub import ConsoleLink, TaskHub
from workspace.ops.unit import Env

# How much longer than the command's timeout the service waits for the agent's answer
# (the agent's queue, the guest agent's own calls).
ANSWER_GRACE_S = 30.0


@dataclass(frozen=True)
class Target:
    """A running workspace the caller may get into, and where it runs."""

    workspace_id: str
    name: str
    node: str
    # When it last changed (its updated_at): since then it has been running.
    since: float = 0.0
    # How the caller names it in a hint (``named_for``: OWNER/NAME if not theirs).
    named: str = ""


def target(env: Env, who: Identity | str, ref: str, what: str) -> Target:
    """The caller's running workspace ``ref`` (any one's for an admin)."""
    ident = as_identity(who)
    with env.store.read() as s:
        # Not a read: by a bare name only the caller's own (an admin's, who may get into
        # anyone's, is not a guess at whose).
        ws = resolve_workspace(s, ident, ref, acting=what, owner_only=True)
        wid, name, owner, state, node = ws.id, ws.name, ws.owner, ws.state, ws.node
        since = ws.updated_at
    check_owner(ident, owner, name, what)
    named = named_for(ident, owner, name)
    if state != State.RUNNING.value or not node:
        hint = f"; `ws start {named}` first" if state == State.STOPPED.value else ""
        raise FailedPrecondition(f"workspace {name} is {state}{hint}")
    return Target(wid, name, node, since, named)


def check_exec(env: Env, argv: Sequence[str], stdin: bytes, timeout_s: int) -> int:
    """Refuse a request beyond the limits; returns the timeout to use."""
    limits = env.cfg.limits
    if not argv or not argv[0]:
        raise InvalidArgument("give a command to run (`ws exec NAME -- CMD [ARG...]`)")
    size = sum(len(a.encode()) for a in argv)
    if size > limits.max_exec_argv_bytes:
        raise InvalidArgument(
            f"the command line is {size} bytes; at most {limits.max_exec_argv_bytes} "
            "(limits.max_exec_argv_bytes)"
        )
    if len(stdin) > limits.max_exec_stdin_bytes:
        raise InvalidArgument(
            f"stdin is {len(stdin)} bytes; at most {limits.max_exec_stdin_bytes} "
            "(limits.max_exec_stdin_bytes)"
        )
    if timeout_s == 0:
        return limits.exec_default_timeout_s
    if not 1 <= timeout_s <= limits.max_exec_timeout_s:
        raise InvalidArgument(
            f"timeout {timeout_s} s is not between 1 and {limits.max_exec_timeout_s} s "
            "(limits.max_exec_timeout_s)"
        )
    return timeout_s


def exec(
    env: Env,
    hub: TaskHub,
    who: Identity | str,
    ref: str,
    argv: Sequence[str],
    stdin: bytes = b"",
    timeout_s: int = 0,
) -> ExecResult:
    """Run ``argv`` in workspace ``ref`` through its guest agent; its exit code, output
    and whether it timed out. FailedPrecondition when the workspace is not running or
    no guest agent answers: "may still be booting" within the boot window after it
    started, plainly that its image most likely has none after it."""
    timeout = check_exec(env, argv, stdin, timeout_s)
    t = target(env, who, ref, "run commands in")
    try:
        outcome = hub.exec(
            t.node, t.workspace_id, ExecTask(tuple(argv), stdin, timeout), timeout + ANSWER_GRACE_S
        )
    except FailedPrecondition as exc:
        up = booting.up_for(t.since, env.clock())
        if (
            booting.is_no_guest_agent(exc.message)
            and up is not None
            and (up > booting.BOOT_WINDOW_S)
        ):
            raise FailedPrecondition(booting.no_guest_agent_since(t.name, up, t.named)) from None
        raise
    return ExecResult(t.workspace_id, t.name, outcome)


def open_console(env: Env, hub: TaskHub, who: Identity | str, ref: str) -> ConsoleLink:
    """The interactive console of workspace ``ref``: send keystrokes with ``send``, read
    ``next`` until a ConsoleClosed, ``close`` when the client leaves."""
    t = target(env, who, ref, "attach to the console of")
    return hub.open_console(t.node, t.workspace_id)
