"""Peer fetch pieces: an agent's Peers server over its cache, the client source with
fallback, and the service's choice of sources."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cache import BlobCache, Source
from agent.peers import PeerChannels, PeerServer, advertised_address
from workspace.config import TlsConfig
from workspace.ops.reports import MAX_SOURCES, peer_sources
from workspace.store import Node, Store


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


DATA = bytes(range(256)) * 8192  # 2 MiB: more than one 1 MiB chunk
DIGEST = digest_of(DATA)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[BlobCache, PeerServer]]:
    cache = BlobCache(tmp_path / "peer-cache")
    cache.ensure(DIGEST, lambda _d, o: iter([DATA[o:]]))
    server = PeerServer(cache, "peer1", f"unix:{tmp_path / 'peer.sock'}", "", TlsConfig())
    server.start()
    try:
        yield cache, server
    finally:
        server.stop()


def never(digest: str, offset: int) -> Iterator[bytes]:
    raise AssertionError("the service should not be asked")


def test_blob_comes_from_the_peer(tmp_path: Path, peer: tuple[BlobCache, PeerServer]) -> None:
    _, server = peer
    channels = PeerChannels("node2", TlsConfig())
    try:
        cache = BlobCache(tmp_path / "cache")
        path = cache.ensure(
            DIGEST, [channels.source(server.address), Source("service", never)], len(DATA)
        )
        assert path.read_bytes() == DATA
        assert cache.received_bytes == {"peer": len(DATA)}
        assert server.servicer.served_bytes == len(DATA)
    finally:
        channels.close()


def test_peer_resumes_at_an_offset(tmp_path: Path, peer: tuple[BlobCache, PeerServer]) -> None:
    _, server = peer
    channels = PeerChannels("node2", TlsConfig())
    try:
        cache = BlobCache(tmp_path / "cache")
        (cache.partial_dir / DIGEST.split(":")[1]).write_bytes(DATA[:1000])
        assert cache.ensure(DIGEST, [channels.source(server.address)]).read_bytes() == DATA
        assert server.servicer.served_bytes == len(DATA) - 1000
    finally:
        channels.close()


def test_peer_without_the_blob_falls_back_to_the_service(
    tmp_path: Path, peer: tuple[BlobCache, PeerServer]
) -> None:
    _, server = peer
    other = b"something else"
    channels = PeerChannels("node2", TlsConfig())
    served: list[int] = []

    def service(digest: str, offset: int) -> Iterator[bytes]:
        served.append(offset)
        yield other[offset:]

    try:
        cache = BlobCache(tmp_path / "cache")
        sources = [channels.source(server.address), Source("service", service)]
        assert cache.ensure(digest_of(other), sources).read_bytes() == other
        assert served == [0]
    finally:
        channels.close()


def test_unreachable_peer_falls_back_to_the_service(tmp_path: Path) -> None:
    channels = PeerChannels("node2", TlsConfig())
    try:
        cache = BlobCache(tmp_path / "cache")
        sources = [
            channels.source(f"unix:{tmp_path / 'nobody.sock'}"),
            Source("service", lambda _d, o: iter([DATA[o:]])),
        ]
        assert cache.ensure(DIGEST, sources).read_bytes() == DATA
        assert cache.received_bytes.get("peer", 0) == 0
    finally:
        channels.close()


def test_peer_never_serves_a_corrupted_blob(
    tmp_path: Path, peer: tuple[BlobCache, PeerServer]
) -> None:
    peer_cache, server = peer
    # The peer restarts with a damaged entry: it re-hashes before serving and refuses.
    peer_cache.path(DIGEST).write_bytes(b"damaged")
    restarted = BlobCache(peer_cache.root)
    server.servicer.cache = restarted
    channels = PeerChannels("node2", TlsConfig())
    try:
        cache = BlobCache(tmp_path / "cache")
        sources = [
            channels.source(server.address),
            Source("service", lambda _d, o: iter([DATA[o:]])),
        ]
        assert cache.ensure(DIGEST, sources).read_bytes() == DATA
        assert server.servicer.served_bytes == 0
        assert not restarted.has(DIGEST)
    finally:
        channels.close()


def test_advertised_address() -> None:
    assert advertised_address("unix:/run/p.sock", 0) == "unix:/run/p.sock"
    assert advertised_address("10.0.0.5:0", 40123) == "10.0.0.5:40123"
    assert not advertised_address("0.0.0.0:7071", 7071).startswith("0.0.0.0")


# -- the service's choice of sources --------------------------------------------------------


def _node(name: str, state: str = "READY", address: str = "", cached: tuple[str, ...] = ()) -> Node:
    return Node(
        name=name,
        hypervisor="fake",
        cpus=4,
        memory_mib=4096,
        state=state,
        peer_address=address,
        cached_digests=list(cached),
    )


def _sources(
    tmp_path: Path, nodes: list[Node], requester: str, digest: str
) -> list[tuple[str, str]]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with store.write() as s:
            s.add_all(nodes)
        with store.read() as s:
            return peer_sources(s, requester, {digest}).get(digest, [])
    finally:
        store.close()


def test_sources_are_peers_that_hold_the_blob(tmp_path: Path) -> None:
    d = DIGEST
    nodes = [
        _node("me", address="me:1", cached=(d,)),
        _node("a", address="a:1", cached=(d,)),
        _node("b", address="b:1"),  # does not hold it
        _node("c", cached=(d,)),  # serves no peers
        _node("down", state="DOWN", address="down:1", cached=(d,)),
        _node("drain", state="DRAINING", address="drain:1", cached=(d,)),
    ]
    got = _sources(tmp_path, nodes, "me", d)
    # READY first; never itself, DOWN or non-serving; each with its node (checked with TLS)
    assert got == [("a", "a:1"), ("drain", "drain:1")]


def test_at_most_three_sources_spread_over_requesters(tmp_path: Path) -> None:
    d = DIGEST
    peers = [_node(f"p{i}", address=f"p{i}:1", cached=(d,)) for i in range(8)]
    requesters = [_node(f"r{i}") for i in range(8)]
    store_nodes = peers + requesters
    firsts = set()
    for i, r in enumerate(requesters):
        got = _sources(tmp_path / str(i), [_copy(n) for n in store_nodes], r.name, d)
        assert len(got) == MAX_SOURCES
        firsts.add(got[0])
    assert len(firsts) > 1  # not every requester is sent to the same peer first


def _copy(n: Node) -> Node:
    return _node(n.name, n.state, n.peer_address, tuple(n.cached_digests))
