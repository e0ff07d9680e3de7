"""What the node says of each workspace: the domain's state as the driver shows it,
unless an operation is under way or failed (an override), with a note when the agent
repaired something behind the owner's back."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from agent.virt.base import DomainInfo, DomainState
from workspace.domain.model import Observation
from workspace.domain.states import Observed

OBSERVED_FROM_DOMAIN = {
    DomainState.RUNNING: Observed.RUNNING,
    DomainState.PAUSED: Observed.PAUSED,
    DomainState.SHUTOFF: Observed.STOPPED,
    DomainState.OTHER: Observed.STARTING,
}


@dataclass(frozen=True)
class Sight:
    """What the node can tell of its workspaces now: ``observations``, and the ids of
    those it cannot (``unknown``: the hypervisor does not answer). A report says the
    unknown ones with no state (UNSPECIFIED): the service keeps what it holds of them and
    counts them as present in a full report."""

    observations: list[Observation]
    unknown: tuple[str, ...] = field(default=())
    # The ``NodeOrders.sequence`` of the orders taken before this was seen (0: none): a
    # full report says it, and the service does not take a workspace ordered in a later
    # set as gone for not being named (workspace/ops/sent_orders.py).
    orders_sequence: int = 0


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

    def clear_failed(self, workspace_id: str) -> bool:
        """Drop a FAILED override of ``workspace_id`` (what failed is no longer asked);
        True if there was one."""
        with self._lock:
            if self._overrides.get(workspace_id, (None, ""))[0] is not Observed.FAILED:
                return False
            del self._overrides[workspace_id]
            return True

    def note(self, workspace_id: str, text: str) -> None:
        with self._lock:
            self._notes[workspace_id] = text

    def drop_note(self, workspace_id: str) -> None:
        with self._lock:
            self._notes.pop(workspace_id, None)

    def drop_note_if(self, workspace_id: str, text: str) -> bool:
        """Drop the note of ``workspace_id`` if it is ``text``; True if it was."""
        with self._lock:
            if self._notes.get(workspace_id) != text:
                return False
            del self._notes[workspace_id]
            return True

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

    def drop_absent(self, ids: Collection[str]) -> None:
        """Forget the ABSENT overrides of ``ids`` (``release_failed``'s, once reported):
        a full report no longer names them, which the service takes as gone."""
        with self._lock:
            for wid in ids:
                if self._overrides.get(wid, (None, ""))[0] is Observed.ABSENT:
                    del self._overrides[wid]

    def observe(
        self,
        ids: Sequence[str] | None,
        domains: Mapping[str, DomainInfo] | None,
        desired: Collection[str],
        known: Collection[str] = (),
    ) -> Sight:
        """What to report of ``ids`` (None: every workspace desired, with a domain or an
        override), given the driver's ``domains`` and the ``desired`` workspace ids.

        ``domains`` None: the hypervisor did not answer. Only an override (what an
        operation of ours found) is known then; the rest are unknown, ``known`` (the
        domains and files the node had when last seen) among them, so that a full report
        still names every workspace the node may have."""
        with self._lock:
            if ids is None:
                have = known if domains is None else domains
                ids = sorted(set(desired) | set(have) | set(self._overrides))
            out, unknown = [], []
            for wid in ids:
                if wid in self._overrides:
                    state, reason = self._overrides[wid]
                elif domains is None:
                    unknown.append(wid)
                    continue
                elif wid in domains:
                    state = OBSERVED_FROM_DOMAIN[domains[wid].state]
                    reason = self._notes.get(wid, "")
                elif wid in desired:
                    state, reason = Observed.PROPAGATING, ""
                else:
                    state, reason = Observed.ABSENT, ""
                out.append(Observation(wid, state, reason))
            return Sight(out, tuple(unknown))
