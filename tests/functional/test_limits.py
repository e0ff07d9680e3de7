"""Limits a caller cannot push past: kernel cmdline, signatures per image, wait for
capacity, and the size of one node's orders (its AssignmentSet) — each refused with a
clear error that leaves nothing behind."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from images import signing
from tests.functional.harness import WS, Site
from workspace.codec.v1 import image_spec_from_proto
from workspace.node.v1 import nodes_pb2
from workspace.ops.order_size import node_orders_bytes
from workspace.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    common_pb2,
    images_pb2,
    trust_pb2,
    trust_pb2_grpc,
    workspaces_pb2,
)

MiB = 1024 * 1024


def _refused(fn, *args, **kw) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)
    return err.value


def _kernel_image(site: Site, name: str, cmdline: str, context: str = "") -> images_pb2.Image:
    kernel = site.stubs.upload(b"\x7fELF kernel")
    root = site.stubs.upload(b"\0" * 65536)
    return site.stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name=name,
            partitions=[
                common_pb2.Partition(
                    name="root", digest=root, format="raw", mode=common_pb2.PARTITION_MODE_COW
                )
            ],
            kernel_digest=kernel,
            cmdline=cmdline,
            context=context,
        )
    )


def _script(size: int) -> bytes:
    """User-data of ``size`` bytes: a shell script (the rest a comment)."""
    head = b"#!/bin/sh\n#"
    return head + b"u" * (size - len(head))


def _image_names(site: Site) -> set[str]:
    return {i.name for i in site.stubs.images.ListImages(images_pb2.ListImagesRequest()).images}


def test_a_kernel_cmdline_over_the_limit_is_refused_at_import(ready_site: Site) -> None:
    err = _refused(_kernel_image, ready_site, "long", "x" * 4097)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the kernel cmdline is 4097 bytes, more than the 4096 allowed" in err.details()
    assert "long" not in _image_names(ready_site)
    assert _kernel_image(ready_site, "ok", "x" * 4096).cmdline == "x" * 4096


@pytest.mark.parametrize("bad", ["\x00", "\x1b[0m", "\x07", "\ufffe"])
def test_a_kernel_cmdline_with_a_control_character_is_refused_at_import(
    ready_site: Site, bad: str
) -> None:
    """The node writes the cmdline into the domain's XML, which cannot carry these: the
    import took them (PostgreSQL refused only a NUL), and the node's define failed at
    every boot, the workspace FAILED. Tabs and newlines are whitespace, as the kernel
    reads them."""
    err = _refused(_kernel_image, ready_site, "ctl", f"console=ttyS0{bad} init=/bin/sh")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the kernel cmdline has a character it cannot have ({bad[0]!r} at" in err.details()
    assert "ctl" not in _image_names(ready_site)
    ok = _kernel_image(ready_site, "ok", "console=ttyS0\tquiet\n")
    assert ok.cmdline == "console=ttyS0\tquiet\n"


def test_a_wait_for_capacity_over_the_limit_is_refused(ready_site: Site) -> None:
    week = 7 * 24 * 3600
    err = _refused(ready_site.stubs.create, name="w", wait_for_capacity_s=week + 1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"wait_for_capacity_s must be between 0 and {week} s" in err.details()
    clusters = clusters_pb2_grpc.ClustersStub(ready_site.stubs.channel)
    member = clusters_pb2.ClusterMember(role="web", count=1, image="img")
    err = _refused(
        clusters.CreateCluster,
        clusters_pb2.CreateClusterRequest(name="c", members=[member], wait_for_capacity_s=-1),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    rows = ready_site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    assert list(rows.workspaces) == []


@pytest.fixture
def two_signature_site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path, limits={"max_signatures_per_image": 2})
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        yield site
    finally:
        site.close()


def _envelopes(site: Site, image: str, n: int) -> list[str]:
    """``n`` signatures of ``image`` by ``n`` keys the site trusts."""
    trust = trust_pb2_grpc.TrustStub(site.stubs.channel)
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name=image))
    manifest = image_spec_from_proto(img)
    boot = signing.Boot(img.context, img.login_user)  # what `ws image sign` covers too
    envelopes = []
    for _ in range(n):
        private_pem, public_pem = signing.generate_key()
        trust.AddKey(trust_pb2.AddKeyRequest(public_key_pem=public_pem, image_patterns=["*"]))
        envelopes.append(signing.sign(manifest, signing.load_private_key(private_pem), boot))
    return envelopes


def test_signatures_per_image_are_capped_by_config(two_signature_site: Site) -> None:
    site = two_signature_site
    trust = trust_pb2_grpc.TrustStub(site.stubs.channel)
    envelopes = _envelopes(site, "img", 3)
    for env in envelopes[:2]:
        trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json=env))
    err = _refused(
        trust.AddSignature, trust_pb2.AddSignatureRequest(image="img", envelope_json=envelopes[2])
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 2 signatures" in err.details()
    assert "limits.max_signatures_per_image" in err.details()
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name="img"))
    assert img.name == "img"


def test_an_envelope_nested_thousands_deep_is_invalid(ready_site: Site) -> None:
    """JSON nested thousands deep, within the 64 KiB an envelope may have, made the
    service's JSON parser recurse past Python's limit: AddSignature was an INTERNAL
    error. The envelope, or the statement signed in it, is refused as malformed."""
    trust = trust_pb2_grpc.TrustStub(ready_site.stubs.channel)
    deep = "[" * 20000 + "]" * 20000
    payload = base64.b64encode(deep.encode()).decode()
    for env in (
        deep,
        json.dumps(
            {
                "payloadType": signing.PAYLOAD_TYPE,
                "payload": payload,
                "signatures": [{"keyid": "k", "sig": base64.b64encode(b"s").decode()}],
            }
        ),
    ):
        err = _refused(
            trust.AddSignature, trust_pb2.AddSignatureRequest(image="img", envelope_json=env)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nested too deep" in err.details()


@pytest.fixture
def big_orders_site(tmp_path: Path) -> Iterator[Site]:
    # Large enough that two such workspaces would take one node's AssignmentSet past the
    # 16 MiB message limit (6 MiB of user-data, 8 MiB in the seed as base64, + a 3 MiB
    # cmdline each).
    # The node's budget is raised to its most (12 MiB) so that one such workspace fits.
    limits = {
        "max_user_data_bytes": 6 * MiB,
        "max_cmdline_bytes": 3 * MiB,
        "max_node_orders_bytes": 12 * MiB,
    }
    site = Site(tmp_path, limits=limits)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        yield site
    finally:
        site.close()


def _first_set(site: Site, node: str) -> nodes_pb2.AssignmentSet:
    stream = site.stubs.nodes.WatchAssignments(
        nodes_pb2.WatchAssignmentsRequest(node=node), timeout=10
    )
    try:
        return next(stream)
    finally:
        stream.cancel()


def test_orders_that_would_overflow_a_nodes_message_are_refused_at_placement(
    big_orders_site: Site,
) -> None:
    site = big_orders_site
    site.add_agent("node1")
    _kernel_image(site, "big", "c" * 3 * MiB, "nocloud")
    first = site.stubs.create(name="first", image="big", user_data=_script(6 * MiB))
    site.stubs.wait_state(first.id, WS.WORKSPACE_STATE_RUNNING)

    err = _refused(site.stubs.create, name="second", image="big", user_data=_script(6 * MiB))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "second does not fit on node node1" in err.details()
    assert "limits.max_node_orders_bytes" in err.details()
    names = {
        w.name
        for w in site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    }
    assert names == {"first"}

    # The node still gets its whole set, and new orders keep reaching it.
    aset = _first_set(site, "node1")
    assert [a.name for a in aset.assignments] == ["first"]
    assert aset.ByteSize() < 16 * MiB
    # The bound placement used covers what the node is really sent, and closely.
    bare = nodes_pb2.AssignmentSet(
        generation=aset.generation, prefetch=aset.prefetch, policy=aset.policy
    )
    sent = aset.ByteSize() - bare.ByteSize()
    assert site.service is not None
    with site.service.store.read() as s:
        bound = node_orders_bytes(s, "node1")
    assert sent <= bound <= sent * 1.01 + 4096
    small = site.stubs.create(name="small", image="img")
    site.stubs.wait_state(small.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(first.id))
    site.stubs.wait_state(first.id, WS.WORKSPACE_STATE_TERMINATED)


def test_the_orders_bound_covers_signed_images_with_nics(ready_site: Site) -> None:
    site = ready_site
    trust = trust_pb2_grpc.TrustStub(site.stubs.channel)
    _kernel_image(site, "cloud", "console=ttyS0", "nocloud")
    for env in _envelopes(site, "cloud", 2):
        trust.AddSignature(trust_pb2.AddSignatureRequest(image="cloud", envelope_json=env))
    for i in range(3):
        user_data = b"#cloud-config\n" * (i + 1)
        w = site.stubs.create(name=f"w{i}", image="cloud", user_data=user_data)
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    aset = _first_set(site, "node1")
    assert len(aset.assignments) == 3 and all(a.envelopes_json for a in aset.assignments)
    bare = nodes_pb2.AssignmentSet(
        generation=aset.generation, prefetch=aset.prefetch, policy=aset.policy
    )
    sent = aset.ByteSize() - bare.ByteSize()
    assert ready_site.service is not None
    with ready_site.service.store.read() as s:
        bound = node_orders_bytes(s, "node1")
    assert sent <= bound <= sent * 1.5 + 1024


@pytest.fixture
def small_orders_site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path, limits={"max_node_orders_bytes": 4096})
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        yield site
    finally:
        site.close()


def test_a_signature_that_would_overflow_a_nodes_orders_is_refused(
    small_orders_site: Site,
) -> None:
    site = small_orders_site
    ids = [site.stubs.create(name=f"w{i}").id for i in range(3)]
    for wid in ids:
        site.stubs.wait_state(wid, WS.WORKSPACE_STATE_RUNNING)
    trust = trust_pb2_grpc.TrustStub(site.stubs.channel)
    (envelope,) = _envelopes(site, "img", 1)
    err = _refused(
        trust.AddSignature, trust_pb2.AddSignatureRequest(image="img", envelope_json=envelope)
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "image img: the signature would take node node1's orders to" in err.details()
    assert "3 workspace(s) of the image there" in err.details()
    sigs = trust.GetSignatures(trust_pb2.ImageSignaturesRequest(image="img"))
    assert list(sigs.envelopes_json) == []
    # Once fewer workspaces of the image are there, it fits.
    for wid in ids[:2]:
        site.stubs.ws.DestroyWorkspace(site.stubs.ref(wid))
        site.stubs.wait_state(wid, WS.WORKSPACE_STATE_TERMINATED)
    trust.AddSignature(trust_pb2.AddSignatureRequest(image="img", envelope_json=envelope))
    assert _first_set(site, "node1").assignments[0].envelopes_json == [envelope]
