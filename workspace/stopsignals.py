"""How the daemons (workspace-service, workspace-agent) wait for the signal that stops
them: SIGTERM, SIGINT, or SIGHUP (a closed terminal; there is nothing to reload).

The main thread polls a flag the handler sets, rather than blocking in
``threading.Event.wait()``: the kernel hands a process's signal to any thread that does
not block it (gRPC's threads do not), and a main thread blocked without a timeout is
then never woken to run the Python handler — the signal was lost for good. The handler
takes no lock and writes nothing (it runs between two bytecodes of the main thread,
whatever that thread holds); the main thread says which signal it got.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long a stopping agent may take before it is killed: it finishes the operations
# under way first, a guest's stop up to its stop timeout (``default_stop_timeout_s``,
# 60 s, unless `ws stop --timeout` said more). Its systemd unit's ``TimeoutStopSec``
# (conf/systemd/workspace-agent.service) and `ws-admin site down` give it this.
AGENT_STOP_BUDGET_S = 90.0
# How long a signal another thread received may wait for the main thread to see it.
POLL_S = 0.25


class StopSignals:
    def __init__(self) -> None:
        self.received: list[int] = []
        self._before: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: the hangup stays ignored
            self._before[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        """Put back the handlers ``install`` replaced (a start that failed returns)."""
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self) -> int:
        """Block until a stop signal came; returns it."""
        while not self.received:
            time.sleep(POLL_S)
        return self.received[0]
