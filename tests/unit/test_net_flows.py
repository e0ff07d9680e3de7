"""agent/net/flows.py: which conntrack entries are deleted (a fake conntrack table; the
real one is deleted from in tests/host/test_net_spoof.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agent.net import flows


class _Table:
    """A conntrack table of (original source, destination) flows, NAT-free: the reply
    tuple is the original reversed."""

    def __init__(self, flows_: list[tuple[str, str]]) -> None:
        self.entries = [
            SimpleNamespace(
                tuple_orig=SimpleNamespace(saddr=a, daddr=b),
                tuple_reply=SimpleNamespace(saddr=b, daddr=a),
            )
            for a, b in flows_
        ]
        self.deleted: list[tuple[str, str]] = []

    def __call__(self, netns: str | None = None) -> _Table:
        return self

    def dump_entries(self) -> list[Any]:
        return list(self.entries)

    def delete(self, entry: Any) -> None:
        self.deleted.append((entry.tuple_orig.saddr, entry.tuple_orig.daddr))

    def close(self) -> None:
        pass


def test_only_the_flows_between_a_dropped_pair_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member that left (10.0.0.9) loses its flows with the NIC it left (10.0.0.2), in
    either direction; its flows with others, and the NIC's with others, stay."""
    table = _Table(
        [
            ("10.0.0.2", "10.0.0.9"),
            ("10.0.0.9", "10.0.0.2"),
            ("10.0.0.9", "10.0.0.3"),
            ("10.0.0.2", "10.0.0.3"),
            ("10.0.0.4", "10.0.0.5"),
        ]
    )
    monkeypatch.setattr(flows, "Conntrack", table)
    pairs = [("10.0.0.2", "10.0.0.9"), ("10.0.0.4", "10.0.0.6"), ("10.0.0.7", "10.0.0.7")]
    assert flows.forget_pairs(pairs) == 2
    assert table.deleted == [("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.2")]


def test_every_flow_of_a_moved_address_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _Table([("10.0.0.2", "10.0.0.9"), ("10.0.0.3", "10.0.0.2"), ("10.0.0.4", "10.0.0.5")])
    monkeypatch.setattr(flows, "Conntrack", table)
    assert flows.forget(["10.0.0.2"]) == 2
    assert table.deleted == [("10.0.0.2", "10.0.0.9"), ("10.0.0.3", "10.0.0.2")]
    assert flows.forget([]) == 0
