"""The site events' filters name something the site has or had (docs/design/
observability.md, "Filters"): an unknown one is NOT_FOUND, not an empty stream that looks
like a quiet site. Through the operations with a real SQLite store
(tests/unit/test_request_validation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import build_site
from workspace.domain.events import EventFilter
from workspace.errors import NotFound
from workspace.identity import Identity
from workspace.identity import Kind as IdKind
from workspace.ops import nodes, site_events


def test_an_unknown_node_filter_is_not_found(tmp_path: Path) -> None:
    """`ws-admin events --node n9` (a typo, or a node the site never had) was an empty
    stream, "no events": a node where nothing happened. It is NOT_FOUND, as an unknown
    workspace or cluster is; a node removed still streams its history."""
    site = build_site(tmp_path)
    env = site.core.env
    admin = Identity(IdKind.USER, "root", admin=True)

    def on_node(name: str) -> list[str]:
        return [
            e.kind
            for e in site_events.of_site(env, admin, 0.0, False, which=EventFilter(node=name))
        ]

    with pytest.raises(NotFound, match="no node 'n9'"):
        on_node("n9")
    assert on_node("n1") == ["node.registered"]
    nodes.remove(env, "n1")
    assert on_node("n1") == ["node.registered", "node.removed"]
