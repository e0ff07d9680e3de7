"""What to do for each workspace: a pure function of desired vs actual state."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass

from agent.virt.base import DomainState
from workspace.domain.netpolicy import Limits
from workspace.domain.states import Desired


class Action(enum.Enum):
    CREATE = "create"  # prepare disks, define, and start unless desired STOPPED
    START = "start"
    STOP = "stop"  # ACPI shutdown with a timeout, then power off
    FORCE_STOP = "force_stop"
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    REMOVE = "remove"  # power off, undefine, delete its files
    LIMITS = "limits"  # apply the order's limits to the domain, live and persistently


@dataclass(frozen=True)
class Want:
    desired: Desired  # RUNNING | PAUSED | STOPPED
    reboot_count: int = 0
    force_stop: bool = False


def plan(
    desired: Mapping[str, Want],
    actual: Mapping[str, DomainState],
    leftovers: Set[str],
    applied_reboots: Mapping[str, int],
) -> dict[str, Action]:
    """One action per workspace that is not yet as desired.

    ``leftovers`` are workspaces with files on the node (possibly without a domain).
    """
    out: dict[str, Action] = {}
    for wid, want in desired.items():
        state = actual.get(wid)
        if state is None:
            out[wid] = Action.CREATE
            continue
        act: Action | None = None
        if want.desired == Desired.RUNNING:
            if state is DomainState.SHUTOFF:
                act = Action.START
            elif state is DomainState.PAUSED:
                act = Action.RESUME
            elif state is DomainState.RUNNING and want.reboot_count > applied_reboots.get(wid, 0):
                act = Action.REBOOT
        elif want.desired == Desired.PAUSED:
            if state is DomainState.RUNNING:
                act = Action.PAUSE
            elif state is DomainState.SHUTOFF:
                act = Action.START
        elif want.desired == Desired.STOPPED and state is not DomainState.SHUTOFF:
            act = Action.FORCE_STOP if want.force_stop else Action.STOP
        if act is not None:
            out[wid] = act
    for wid in (set(actual) | set(leftovers)) - set(desired):
        out[wid] = Action.REMOVE
    return out


def limit_changes(
    wanted: Mapping[str, Limits],
    have: Mapping[str, Limits | None],
    planned: Set[str],
) -> set[str]:
    """Workspaces whose domain's limits differ from the order's (``wanted``).

    ``have``: the limits each existing domain reports (None: its driver cannot tell,
    so nothing is changed); ``planned``: workspaces with another action this pass
    (a create defines the new limits anyway; the rest wait for the next pass)."""
    return {
        wid
        for wid, limits in wanted.items()
        if wid not in planned and have.get(wid) is not None and have[wid] != limits
    }
