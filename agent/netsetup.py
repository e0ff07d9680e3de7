"""Networking on the node, projected from the desired state (level-triggered)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from workspace.domain.model import NodeCondition, Order


class Networking(Protocol):
    def sync(self, orders: Sequence[Order]) -> Mapping[str, str]:
        """Make bridges and DHCP entries match the NICs of these workspaces; returns the
        networks that could not be made ready (name → why: a bridge, an uplink or a DHCP
        server that failed, whatever the error). Their workspaces wait; the others go
        on. Raises only for what concerns every workspace (the filter); the executor
        then holds every workspace with a NIC and does the rest of its pass."""

    def holds(self) -> Mapping[str, str]:
        """The workspaces the last ``sync`` found must not start on this node (id →
        why): their connectivity policy cannot be enforced here."""

    def reattach(self, running: Sequence[Order]) -> None:
        """Put the taps of these workspaces (their domains run now, no operation under
        way) back on their bridges if they are on none: a bridge deleted behind the
        agent's back and made again by ``sync`` comes back without its ports, and
        libvirt attaches a tap only when the domain starts. Each tap put back is logged,
        naming the workspace and the node."""

    def conditions(self) -> Sequence[NodeCondition]:
        """What the last ``sync`` found keeps the node from serving some workspaces (no
        isolation, networks not ready); the node reports them (docs/design/agent.md)."""

    def close(self) -> None:
        """Stop what this object started (DHCP servers); leave bridges."""


class NullNetworking:
    """For the fake driver: no bridges, no DHCP."""

    def sync(self, orders: Sequence[Order]) -> Mapping[str, str]:
        return {}

    def holds(self) -> Mapping[str, str]:
        return {}

    def reattach(self, running: Sequence[Order]) -> None:
        return None

    def conditions(self) -> Sequence[NodeCondition]:
        return ()

    def close(self) -> None:
        return None
