"""Networking on the node, projected from the desired state (level-triggered)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from workspace.domain.model import Order


class Networking(Protocol):
    def sync(self, orders: Sequence[Order]) -> None:
        """Make bridges and DHCP entries match the NICs of these workspaces."""

    def close(self) -> None:
        """Stop what this object started (DHCP servers); leave bridges."""


class NullNetworking:
    """For the fake driver: no bridges, no DHCP."""

    def sync(self, orders: Sequence[Order]) -> None:
        return None

    def close(self) -> None:
        return None
