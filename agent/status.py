"""What the node says of each workspace: the domain's state as the driver shows it,
unless an operation is under way or failed (an override), with a note when the agent
repaired something behind the owner's back."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence

from agent.virt.base import DomainInfo, DomainState
from workspace.domain.model import Observation
from workspace.domain.states import Observed

OBSERVED_FROM_DOMAIN = {
    DomainState.RUNNING: Observed.RUNNING,
    DomainState.PAUSED: Observed.PAUSED,
    DomainState.SHUTOFF: Observed.STOPPED,
    DomainState.OTHER: Observed.STARTING,
}


class StatusBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Overrides of what the driver shows, while an operation runs or after it failed.
        self._overrides: dict[str, tuple[Observed, str]] = {}
        # Why a workspace was repaired behind the owner's back, until its desired state changes.
        self._notes: dict[str, str] = {}

    def set(self, workspace_id: str, state: Observed, reason: str = "") -> None:
        with self._lock:
            self._overrides[workspace_id] = (state, reason)

    def get(self, workspace_id: str) -> tuple[Observed, str] | None:
        """The override of ``workspace_id`` (state, reason), if any."""
        with self._lock:
            return self._overrides.get(workspace_id)

    def clear(self, workspace_id: str) -> None:
        """The operation succeeded: the driver's view holds again."""
        with self._lock:
            self._overrides.pop(workspace_id, None)

    def note(self, workspace_id: str, text: str) -> None:
        with self._lock:
            self._notes[workspace_id] = text

    def drop_note(self, workspace_id: str) -> None:
        with self._lock:
            self._notes.pop(workspace_id, None)

    def release_failed(self, keep: Collection[str]) -> list[str]:
        """FAILED workspaces not in ``keep`` become ABSENT (a create that failed before
        anything reached the host, no longer desired); returns them."""
        with self._lock:
            gone = [
                wid
                for wid, (state, _) in self._overrides.items()
                if state is Observed.FAILED and wid not in keep
            ]
            for wid in gone:
                self._overrides[wid] = (Observed.ABSENT, "")
        return gone

    def observe(
        self,
        ids: Sequence[str] | None,
        domains: Mapping[str, DomainInfo],
        desired: Collection[str],
    ) -> list[Observation]:
        """What to report of ``ids`` (None: every workspace desired, with a domain or an
        override), given the driver's ``domains`` and the ``desired`` workspace ids."""
        with self._lock:
            if ids is None:
                ids = sorted(set(desired) | set(domains) | set(self._overrides))
            out = []
            for wid in ids:
                if wid in self._overrides:
                    state, reason = self._overrides[wid]
                elif wid in domains:
                    state = OBSERVED_FROM_DOMAIN[domains[wid].state]
                    reason = self._notes.get(wid, "")
                elif wid in desired:
                    state, reason = Observed.PROPAGATING, ""
                else:
                    state, reason = Observed.ABSENT, ""
                out.append(Observation(wid, state, reason))
            return out
