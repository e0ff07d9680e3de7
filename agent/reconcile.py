"""What to do for each workspace: a pure function of desired vs actual state."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass

from agent.virt.base import DomainState
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
