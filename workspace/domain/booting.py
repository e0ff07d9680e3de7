"""A guest that has just started: RUNNING for the service some time before its guest
agent and sshd answer (under TCG a Debian cloud guest needs about a minute), and how
long that may last.

``ws exec``, ``ws ssh`` and ``ws scp`` wait for a workspace that became RUNNING (or
changed: a start, a reboot) within ``BOOT_WINDOW_S``, until the window ends; past it
a guest that never answered is most likely one whose image has no guest agent, and the
service says so (``no_guest_agent_since``). When it changed comes from the workspace's
``updated_at``, the service's time of its last state change (also moved by a reboot, a
lease extension or an update: then the wait is longer, never shorter).

No I/O here: the agent, the service and the CLI share these words and numbers.
"""

from __future__ import annotations

# How long after a workspace became RUNNING its guest may still be booting: the CLI
# waits for its guest agent or sshd until then; after it, no answer is reported plainly.
BOOT_WINDOW_S = 300.0
# What every "no guest agent answers" message starts with (an older agent's included):
# how a client tells that refusal from the others (not running, a guest-exec refused).
NO_GUEST_AGENT = "no QEMU guest agent"


def no_guest_agent_yet(name: str) -> str:
    """No guest agent answers, in a guest that may still be booting."""
    return (
        f"{NO_GUEST_AGENT} answers in workspace {name} yet: the guest may still be "
        "booting (try again shortly), or its image lacks qemu-guest-agent"
    )


def no_guest_agent_since(name: str, up_s: float, named: str = "") -> str:
    """No guest agent has answered in the ``up_s`` seconds since the guest started.
    ``named``: how the caller names the workspace in the hint (OWNER/NAME for another
    user's; ``name`` by default)."""
    return (
        f"{NO_GUEST_AGENT} has answered in workspace {name} since it started {up_s:.0f} s "
        f"ago: its image most likely lacks qemu-guest-agent (`ws console {named or name} --attach` "
        "reaches it)"
    )


def is_no_guest_agent(message: str) -> bool:
    """Whether an error ``message`` says that no guest agent answers."""
    return message.startswith(NO_GUEST_AGENT)


def up_for(since: float, now: float) -> float | None:
    """Seconds since ``since`` (the last state change, epoch seconds); None when not
    known (0: unset); never negative (a client's clock behind the service's)."""
    if since <= 0:
        return None
    return max(0.0, now - since)


def boot_left(running: bool, since: float, now: float) -> float:
    """Seconds left of the boot window of a workspace that is ``running`` and last
    changed at ``since``; 0 when it is not running, the time is not known or the window
    is over."""
    up = up_for(since, now)
    if not running or up is None:
        return 0.0
    return max(0.0, BOOT_WINDOW_S - up)
