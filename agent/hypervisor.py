"""Whether the node's hypervisor answers (docs/design/agent.md, "Node conditions").

A dead libvirtd leaves QEMU and the agent running: the agent keeps heartbeating (its
liveness is not the hypervisor's), reports the ``hypervisor-unreachable`` condition with
the error, and reports its workspaces as unknown, never as stopped or gone. The outage
is logged once when it starts and once when it ends, not at every pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from workspace.domain.model import HYPERVISOR_UNREACHABLE, NodeCondition

log = logging.getLogger("agent")


class HypervisorWatch:
    """The last error of a call that lists the domains ("" once one succeeded).
    ``on_change`` is called (never under a lock) when the hypervisor stops or starts
    answering: the condition should reach the service at once."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._error = ""
        self._since = ""

    def failed(self, error: str) -> None:
        """A call failed with ``error``: the hypervisor does not answer."""
        error = error or "no error message"
        with self._lock:
            was, self._error = self._error, error
            if not was:
                self._since = time.strftime("%H:%M:%S")
        if was:
            return
        log.error(
            "the hypervisor does not answer: %s; the node reports condition %s, its "
            "workspaces as unknown (not stopped, not gone), and acts on none until it does",
            error,
            HYPERVISOR_UNREACHABLE,
        )
        self._on_change()

    def answered(self) -> None:
        """A call succeeded: the hypervisor answers (again)."""
        with self._lock:
            was, since, self._error = self._error, self._since, ""
        if not was:
            return
        log.warning("the hypervisor answers again (it did not since %s: %s)", since, was)
        self._on_change()

    @property
    def error(self) -> str:
        """Why the hypervisor does not answer ("": it does)."""
        with self._lock:
            return self._error

    def conditions(self) -> tuple[NodeCondition, ...]:
        """``hypervisor-unreachable`` with the error while it does not answer."""
        error = self.error
        if not error:
            return ()
        return (NodeCondition(HYPERVISOR_UNREACHABLE, f"the hypervisor does not answer: {error}"),)
