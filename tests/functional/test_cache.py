"""The node cache through the real service and fake-driver agents over gRPC: reports
and ListCache, PreloadImage, eviction under a tiny budget, pins after a restart, and
peer fetch (a node gets a blob from another node, not from the service, for a
workspace or a preload)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace.store import Node
from workspace.v1 import admin_pb2, images_pb2

KIB = 1024


def image(site: Site, name: str, fill: int, size: int = 64 * KIB) -> str:
    """Import image ``name`` with one distinct blob; returns its digest."""
    site.stubs.import_image(name, bytes([fill]) * size)
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=name))
    return str(img.partitions[0].digest)


def cache(site: Site, node: str) -> admin_pb2.ListCacheResponse:
    return site.stubs.admin.ListCache(admin_pb2.NodeRef(name=node))


def cached(site: Site, node: str) -> dict[str, admin_pb2.CacheEntry]:
    return {e.digest: e for e in cache(site, node).entries}


def on(node: str) -> dict[str, dict[str, str]]:
    return {"requirements": {"node": node}}


def add(site: Site, node: str, **kw: object) -> None:
    site.add_agent(node, labels={"node": node}, **kw)


@pytest.fixture
def net_site(site: Site) -> Site:
    site.stubs.network()
    return site


# -- ListCache ----------------------------------------------------------------------------------


def test_list_cache_after_create_and_destroy(net_site: Site) -> None:
    site = net_site
    digest = image(site, "img", 1)
    add(site, "node1", cache_budget_bytes=10 * 1024**2)
    ws = site.stubs.create(name="w1")
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)

    entry = wait_for(lambda: cached(site, "node1").get(digest), what="the blob reported")
    assert entry.size_bytes == 64 * KIB and entry.pinned
    assert entry.last_used.seconds > 0
    resp = cache(site, "node1")
    assert resp.budget_bytes == 10 * 1024**2
    assert resp.used_bytes == 64 * KIB

    site.stubs.ws.DestroyWorkspace(site.stubs.ref(ws.id))
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_TERMINATED)
    wait_for(lambda: not cached(site, "node1")[digest].pinned, what="the blob unpinned")


def test_list_cache_of_unknown_node(site: Site) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cache(site, "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- PreloadImage -------------------------------------------------------------------------------


def test_preload_fills_the_cache_without_a_workspace(net_site: Site) -> None:
    site = net_site
    digest = image(site, "img", 2)
    add(site, "node1")
    add(site, "node2")
    resp = site.stubs.admin.PreloadImage(
        admin_pb2.PreloadImageRequest(image="img", nodes=["node2"])
    )
    assert list(resp.nodes) == ["node2"] and list(resp.digests) == [digest]

    entry = wait_for(lambda: cached(site, "node2").get(digest), what="node2 to hold the blob")
    assert not entry.pinned
    assert digest not in cached(site, "node1")
    assert site.agents["node2"].cache.path(digest).read_bytes() == bytes([2]) * 64 * KIB

    # Once reported cached, the digest leaves the node's prefetch list.
    def prefetch_cleared() -> bool:
        assert site.service is not None
        with site.service.store.read() as s:
            node = s.get(Node, "node2")
            return node is not None and not node.prefetch

    wait_for(prefetch_cleared, what="node2's prefetch list to empty")


def test_preload_defaults_to_every_ready_node(net_site: Site) -> None:
    site = net_site
    digest = image(site, "img", 3)
    add(site, "node1")
    add(site, "node2")
    resp = site.stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image="img"))
    assert sorted(resp.nodes) == ["node1", "node2"]
    for node in ("node1", "node2"):
        wait_for(lambda n=node: digest in cached(site, n), what=f"{node} to hold the blob")


def test_preload_errors(net_site: Site) -> None:
    site = net_site
    image(site, "img", 4)
    with pytest.raises(grpc.RpcError) as err:
        site.stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image="img"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no READY node
    add(site, "node1")
    for req, code in (
        (admin_pb2.PreloadImageRequest(image="nope"), grpc.StatusCode.NOT_FOUND),
        (admin_pb2.PreloadImageRequest(image="img", nodes=["x"]), grpc.StatusCode.NOT_FOUND),
        (admin_pb2.PreloadImageRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.admin.PreloadImage(req)
        assert err.value.code() == code


def prefetch_of(site: Site, node: str) -> list[str]:
    assert site.service is not None
    with site.service.store.read() as s:
        row = s.get(Node, node)
        return list(row.prefetch or ()) if row is not None else []


def test_a_deleted_image_leaves_the_prefetch_lists(net_site: Site) -> None:
    """A preload the node had not done when the image was deleted: the blobs that left
    the repository leave the node's prefetch list (it would fetch them, and fail, every
    few minutes for ever); a blob another image still uses stays."""
    site = net_site
    gone = image(site, "img", 5)
    site.stubs.import_image("other", bytes([6]) * 64 * KIB)
    shared = image(site, "both", 6)
    add(site, "node1")
    site.stop_agent("node1")  # away: the preload waits for it
    for name in ("img", "both"):
        site.stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image=name, nodes=["node1"]))
    assert prefetch_of(site, "node1") == [gone, shared]
    for name in ("img", "both"):
        site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name=name))
    assert prefetch_of(site, "node1") == [shared]  # "other" still has it


# -- budget -------------------------------------------------------------------------------------


def test_eviction_under_a_tiny_budget(net_site: Site) -> None:
    site = net_site
    a, b, c, _ = (image(site, f"img-{n}", n) for n in range(4))
    add(site, "node1", cache_budget_bytes=150 * KIB)  # room for two 64 KiB blobs

    wa = site.stubs.create(name="wa", image="img-0")
    site.stubs.wait_state(wa.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(wa.id))
    site.stubs.wait_state(wa.id, WS.WORKSPACE_STATE_TERMINATED)
    wb = site.stubs.create(name="wb", image="img-1")
    site.stubs.wait_state(wb.id, WS.WORKSPACE_STATE_RUNNING)
    wc = site.stubs.create(name="wc", image="img-2")  # a (unused, LRU) must go
    site.stubs.wait_state(wc.id, WS.WORKSPACE_STATE_RUNNING)
    wait_for(lambda: set(cached(site, "node1")) == {b, c}, what="a evicted")
    assert not site.agents["node1"].cache.path(a).exists()

    # b and c are in use: a fourth blob cannot fit, and the failure says why.
    wd = site.stubs.create(name="wd", image="img-3")
    failed = site.stubs.wait_state(wd.id, WS.WORKSPACE_STATE_FAILED)
    assert "cache_budget_bytes" in failed.reason
    assert set(cached(site, "node1")) == {b, c}


# -- pins after an agent restart ----------------------------------------------------------------


def test_pins_are_recomputed_after_a_restart(net_site: Site) -> None:
    site = net_site
    digest = image(site, "img", 5)
    add(site, "node1")
    ws = site.stubs.create(name="w1")
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    agent = site.agents["node1"]
    pins = agent.cache.root / "pins"
    site.stop_agent("node1")
    # Lose the pin of the real workspace; leave one of a workspace that is gone.
    shutil.rmtree(pins)
    pins.mkdir()
    (pins / "gone").write_text(f'["{digest}"]')

    add(site, "node1")
    again = site.agents["node1"]
    wait_for(lambda: again.cache.pin_owners() == {ws.id}, what="pins recomputed")
    wait_for(lambda: cached(site, "node1")[digest].pinned, what="the blob reported pinned")


# -- peer fetch ---------------------------------------------------------------------------------


@contextlib.contextmanager
def service_copy_hidden(site: Site, digest: str) -> Iterator[None]:
    """The service's copy of ``digest`` out of reach meanwhile: a node that gets the blob
    got it from a peer."""
    assert site.service is not None
    service_copy = site.service.catalog.blobs.path(digest)
    os.rename(service_copy, service_copy.with_name("hidden"))
    try:
        yield
    finally:
        os.rename(service_copy.with_name("hidden"), service_copy)


def assert_node2_has_it_from_node1(site: Site, digest: str, content: bytes) -> None:
    """node2 holds ``digest`` (``content``), every byte of it from a peer, node1's
    server having served them."""
    node2 = site.agents["node2"]
    assert node2.cache.received_bytes == {"peer": len(content)}
    assert node2.cache.path(digest).read_bytes() == content
    peer_server = site.agents["node1"].peer_server
    assert peer_server is not None
    assert peer_server.servicer.served_bytes == len(content)


def test_blob_is_fetched_from_a_peer(net_site: Site, tmp_path: Path) -> None:
    site = net_site
    digest = image(site, "img", 6, size=3 * 1024 * KIB)  # 3 MiB: several chunks
    for node in ("node1", "node2"):
        add(site, node, peer_listen=f"unix:{tmp_path / (node + '-peers.sock')}")
    w1 = site.stubs.create(name="w1", **on("node1"))
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    wait_for(lambda: digest in cached(site, "node1"), what="node1 to report the blob")
    assert site.agents["node1"].cache.received_bytes == {"service": 3 * 1024 * KIB}

    with service_copy_hidden(site, digest):  # node2's copy cannot come from the service
        w2 = site.stubs.create(name="w2", **on("node2"))
        site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
    assert_node2_has_it_from_node1(site, digest, bytes([6]) * 3 * 1024 * KIB)

    # The assignment named node1 as the source.
    assert site.service is not None
    aset = site.service.nodes.assignments("node2")
    (disk,) = aset.assignments[0].disks
    assert list(disk.sources) == [site.agents["node1"].peer_address]


def test_preload_fetches_from_a_peer(net_site: Site, tmp_path: Path) -> None:
    site = net_site
    digest = image(site, "img", 9, size=3 * 1024 * KIB)
    for node in ("node1", "node2"):
        add(site, node, peer_listen=f"unix:{tmp_path / (node + '-peers.sock')}")
    site.stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image="img", nodes=["node1"]))
    wait_for(lambda: digest in cached(site, "node1"), what="node1 to report the blob")
    assert site.agents["node1"].cache.received_bytes == {"service": 3 * 1024 * KIB}

    with service_copy_hidden(site, digest):  # node2's copy cannot come from the service
        site.stubs.admin.PreloadImage(admin_pb2.PreloadImageRequest(image="img", nodes=["node2"]))
        # The orders name node1 as the source of the prefetch blob, as for a disk.
        assert site.service is not None
        (named,) = site.service.nodes.assignments("node2").prefetch_sources
        assert named.digest == digest
        assert list(named.sources) == [site.agents["node1"].peer_address]
        assert list(named.source_nodes) == ["node1"]
        wait_for(lambda: digest in cached(site, "node2"), what="node2 to hold the blob")
    assert_node2_has_it_from_node1(site, digest, bytes([9]) * 3 * 1024 * KIB)


def test_failed_peer_falls_back_to_the_service(net_site: Site, tmp_path: Path) -> None:
    site = net_site
    digest = image(site, "img", 7)
    for node in ("node1", "node2"):
        add(site, node, peer_listen=f"unix:{tmp_path / (node + '-peers.sock')}")
    w1 = site.stubs.create(name="w1", **on("node1"))
    site.stubs.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
    wait_for(lambda: digest in cached(site, "node1"), what="node1 to report the blob")
    peer_server = site.agents["node1"].peer_server
    assert peer_server is not None
    peer_server.stop()  # node1 still says it serves peers, but nobody answers

    w2 = site.stubs.create(name="w2", **on("node2"))
    site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
    assert site.agents["node2"].cache.received_bytes == {"service": 64 * KIB}


# -- ws-admin cache -----------------------------------------------------------------------------


def test_ws_admin_cache_list_and_preload(
    net_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    from workspace.cli import admin

    site = net_site
    digest = image(site, "img", 8)
    add(site, "node1")
    svc = ["--service", site.address]
    assert admin.main([*svc, "cache", "preload", "img", "--nodes", "node1"]) == 0
    assert "1 blob(s) to be fetched in the background by node1" in capsys.readouterr().out
    wait_for(lambda: digest in cached(site, "node1"), what="node1 to hold the blob")
    assert admin.main([*svc, "cache", "preload", "img", "--nodes", "node1"]) == 0
    assert capsys.readouterr().out == "image img: already cached on node1\n"

    assert admin.main([*svc, "cache", "list", "node1", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["digest"] for e in data["entries"]] == [digest]
    assert data["entries"][0]["pinned"] is False
    assert admin.main([*svc, "cache", "list", "node1"]) == 0
    assert digest in capsys.readouterr().out

    assert admin.main([*svc, "cache", "list", "nope"]) == 1
    assert capsys.readouterr().err.startswith("ws-admin: error: no node 'nope'")
    assert admin.main([*svc, "cache", "preload", "missing:1"]) == 1
    assert "image 'missing:1' not found" in capsys.readouterr().err
