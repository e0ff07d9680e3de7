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


def test_one_filter_picks_both_kinds_of_stale_flow() -> None:
    """``Stale.why``, the filter of the one dump a pass makes: an entry with a moved
    address is forgotten as moved, one between a dropped pair as a former peer's (either
    direction, also through a NAT's reply tuple), any other kept."""
    stale = flows.Stale.of(
        addresses=["10.0.0.2"], pairs=[("10.0.0.5", "10.0.0.9"), ("10.0.0.7", "10.0.0.7")]
    )
    assert stale.why({"10.0.0.2", "10.0.0.9"}) == flows.MOVED
    assert stale.why({"10.0.0.3", "10.0.0.2"}) == flows.MOVED
    assert stale.why({"10.0.0.9", "10.0.0.5"}) == flows.PEER
    assert stale.why({"10.0.0.5", "192.0.2.1", "10.0.0.9", "10.0.0.4"}) == flows.PEER
    assert stale.why({"10.0.0.5", "10.0.0.2", "10.0.0.9"}) == flows.MOVED  # both: once
    assert stale.why({"10.0.0.5", "10.0.0.3"}) == ""  # its other flows stay
    assert stale.why({"10.0.0.7"}) == ""  # a pair of one address is none
    assert not flows.Stale.of(pairs=[("10.0.0.7", "10.0.0.7")])


def test_both_clean_ups_of_a_pass_dump_the_table_once(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _Table([("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.5"), ("10.0.0.4", "10.0.0.5")])
    dumps: list[int] = []
    dump = table.dump_entries
    monkeypatch.setattr(table, "dump_entries", lambda: dumps.append(1) or dump())
    monkeypatch.setattr(flows, "Conntrack", table)
    stale = flows.Stale.of(addresses=["10.0.0.2"], pairs=[("10.0.0.5", "10.0.0.9")])
    assert flows.forget_stale(stale) == {flows.MOVED: 1, flows.PEER: 1}
    assert len(dumps) == 1
    assert table.deleted == [("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.5")]
