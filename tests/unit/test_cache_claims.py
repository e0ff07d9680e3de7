"""A node's claims to cache blobs it was never let have (ops/cache_claims.py): refused,
and refused again at each heartbeat without a query while the node's workspaces are as
they were (after migration 0030 every node reports such blobs for a while)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from workspace.ops import cache_claims
from workspace.store import Node, Store

CLAIMED = "sha256:" + "c" * 64
PREFETCHED = "sha256:" + "p" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with st.write() as s:
        s.add(Node(name="n1", hypervisor="fake", cpus=4, memory_mib=4096, state="READY"))
    try:
        yield st
    finally:
        st.close()


def test_a_claim_refused_is_refused_again_without_a_query_until_the_node_changes(
    store: Store,
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(store.engine, "before_cursor_execute", count)
    with store.write() as s:
        node = s.get(Node, "n1")
        assert node is not None
        node.prefetch = [PREFETCHED]
        s.flush()
        statements.clear()
        assert cache_claims.believed(s, node, [CLAIMED, PREFETCHED]) == [PREFETCHED]
        assert statements  # the node's uploads and workspaces were read
        statements.clear()
        assert cache_claims.believed(s, node, [CLAIMED, PREFETCHED]) == [PREFETCHED]
        assert statements == []  # the same claim, the same node: refused from memory
        node.orders_gen += 1  # a workspace placed on it, say
        assert cache_claims.believed(s, node, [CLAIMED]) == []
        assert statements  # checked again
