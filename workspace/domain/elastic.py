"""Elastic clusters as values: a scale's outcome, a role's autoscaler and its decisions
(pure: no store, no protos). docs/design/elastic-clusters.md.

A role's autoscaler is stored in ``Cluster.autoscale`` as ``role → {"min", "max",
"signal", "cooldown_s", "last_action_at", "last": {"at", "wanted", "current", "action",
"detail"}}``; ``AutoscaleInfo.from_dict``/``to_dict`` are that form.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SLURM = "slurm-queue"
COMMAND = "command"
# What a decision did.
GREW, SHRANK, HOLD, FAILED, STEADY = "grew", "shrank", "hold", "failed", "steady"


@dataclass(frozen=True)
class Signal:
    """Where a role's wanted count comes from: Slurm's queue (in one partition, "": all)
    or a command's stdout."""

    kind: str  # SLURM | COMMAND
    arg: str = ""  # the partition, or the command's absolute path

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_signal(text: str) -> Signal:
    """``slurm-queue``, ``slurm-queue:PARTITION`` or ``command:/ABS/PATH``; ValueError
    (with a message for the user) otherwise."""
    kind, _, arg = text.strip().partition(":")
    if kind == SLURM:
        if any(c.isspace() or c == "," for c in arg):
            raise ValueError(f"signal {text!r}: the partition name {arg!r} is not valid")
        return Signal(SLURM, arg)
    if kind == COMMAND:
        if not arg.startswith("/"):
            raise ValueError(f"signal {text!r}: give the command's absolute path (command:/PATH)")
        return Signal(COMMAND, arg)
    raise ValueError(
        f"signal {text!r} is not one of slurm-queue, slurm-queue:PARTITION, command:/PATH"
    )


@dataclass(frozen=True)
class Decision:
    """One evaluation of a role's autoscaler."""

    at: float
    wanted: int  # what the signal asked for, before clamping (-1: the signal failed)
    current: int  # the role's count then
    action: str  # GREW | SHRANK | HOLD | FAILED | STEADY
    detail: str  # one line: why

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "wanted": self.wanted,
            "current": self.current,
            "action": self.action,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls(
            float(d.get("at", 0.0)),
            int(d.get("wanted", -1)),
            int(d.get("current", 0)),
            str(d.get("action", "")),
            str(d.get("detail", "")),
        )


@dataclass(frozen=True)
class AutoscaleInfo:
    """A role that scales on a signal, and its last decision (None: not evaluated yet)."""

    role: str
    min: int
    max: int
    signal: str
    cooldown_s: int
    last_action_at: float = 0.0  # epoch s of the last change it made; 0 = none
    last: Decision | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "min": self.min,
            "max": self.max,
            "signal": self.signal,
            "cooldown_s": self.cooldown_s,
            "last_action_at": self.last_action_at,
            "last": self.last.to_dict() if self.last else {},
        }

    @classmethod
    def from_dict(cls, role: str, d: Mapping[str, Any]) -> AutoscaleInfo:
        last = d.get("last") or {}
        return cls(
            role,
            int(d.get("min", 0)),
            int(d.get("max", 0)),
            str(d.get("signal", "")),
            int(d.get("cooldown_s", 0)),
            float(d.get("last_action_at", 0.0)),
            Decision.from_dict(last) if last else None,
        )


def infos(stored: Mapping[str, Any] | None) -> tuple[AutoscaleInfo, ...]:
    """The ``Cluster.autoscale`` column as values, by role."""
    return tuple(AutoscaleInfo.from_dict(r, d) for r, d in sorted((stored or {}).items()))


def decide(a: AutoscaleInfo, wanted: int, current: int, now: float) -> tuple[int, str, str]:
    """(the count to scale to, the action, why) for a signal that wants ``wanted``.

    The wanted count is clamped to [min, max]; a change waits for the cool-down since
    the last change (``last_action_at``)."""
    target = max(a.min, min(a.max, wanted))
    clamp = ""
    if target != wanted:
        clamp = f" (clamped to {target})"
    if target == current:
        return current, STEADY, f"signal wants {wanted}{clamp}, have {current}: no change"
    until = a.last_action_at + a.cooldown_s
    if a.last_action_at and now < until:
        return (
            current,
            HOLD,
            f"signal wants {wanted}{clamp}, have {current}: hold, cool-down until "
            f"{clock_time(until)}",
        )
    action = GREW if target > current else SHRANK
    return target, action, f"signal wants {wanted}{clamp}, have {current} → {action} to {target}"


def clock_time(at: float) -> str:
    """HH:MM:SS in UTC."""
    return time.strftime("%H:%M:%S", time.gmtime(at))


def describe(a: AutoscaleInfo) -> str:
    """One line: ``autoscale worker 1..4 on slurm-queue:debug, cool-down 60 s; last
    decision 10:02:11: signal wants 3, have 2 → grew to 3``."""
    head = f"autoscale {a.role} {a.min}..{a.max} on {a.signal}, cool-down {a.cooldown_s} s"
    if a.last is None:
        return head + "; no decision yet"
    return f"{head}; last decision {clock_time(a.last.at)}: {a.last.detail}"


@dataclass(frozen=True)
class ScaleResult:
    """What a scale did."""

    previous: int  # the role's count before
    count: int  # its count now
    added: tuple[str, ...]  # names of the new members
    removed: tuple[str, ...]  # names of the members being destroyed
    message: str  # one line
