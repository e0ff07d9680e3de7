"""A blob's digest grants nothing: over real mutual TLS, a user may build an image on a
blob only if they sent its bytes, may use an image made of it, or are an admin
(workspace/ops/blob_access.py). Anyone else is told it is missing, and sends it.

The world is the access matrix's: alice (project p) has the private image ``img-a`` made
of ``world.image_digest``; bob is in project q, carol in p.
"""

from __future__ import annotations

import grpc
import pytest

from tests.functional import test_access_matrix
from tests.functional.test_access_matrix import World
from workspace.v1 import common_pb2, images_pb2, workspaces_pb2

world = test_access_matrix.world  # its fixture: a service of this module's own

ROOT_BYTES = b"\0" * 65536  # img-a's root partition, as the world's alice sent it


def _import(caller: object, name: str, digest: str) -> images_pb2.Image:
    part = common_pb2.Partition(
        name="root", digest=digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
    )
    req = images_pb2.ImportImageRequest(name=name, partitions=[part])
    return caller.images.ImportImage(req)  # type: ignore[attr-defined, no-any-return]


def _missing(caller: object, *digests: str) -> list[str]:
    req = images_pb2.HasBlobsRequest(digests=list(digests))
    return list(caller.images.HasBlobs(req).missing)  # type: ignore[attr-defined]


def _images(caller: object) -> set[str]:
    got = caller.images.ListImages(images_pb2.ListImagesRequest())  # type: ignore[attr-defined]
    return {i.name for i in got.images}


def test_another_projects_blob_is_missing_to_a_user_until_they_send_it(world: World) -> None:
    d = world.image_digest
    bob, admin = world.callers["B"], world.callers["admin"]
    # Not a yes/no oracle: bob is told it is missing, as one never stored is.
    never = "sha256:" + "ab" * 32
    assert _missing(bob, d, never) == [d, never]
    # Naming it in an image is refused as a blob never sent, and nothing is made.
    with pytest.raises(grpc.RpcError) as err:
        _import(bob, "stolen:1", d)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"blob {d} has not been uploaded" in (err.value.details() or "")
    assert "stolen:1" not in _images(admin)
    # ... so no workspace of bob's boots alice's disk.
    with pytest.raises(grpc.RpcError) as err:
        bob.ws.CreateWorkspace(workspaces_pb2.CreateWorkspaceRequest(image="stolen:1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Sending the bytes is the proof of holding them: then bob builds on the blob (the
    # repository keeps the one copy it had).
    ref = bob.images.UploadBlob(iter([images_pb2.BlobChunk(data=ROOT_BYTES)]))
    assert ref.digest == d
    assert _missing(bob, d) == []
    made = _import(bob, "bobs-own:1", d)
    assert (made.owner, made.project) == ("bob", "q")


def test_what_a_user_may_use_lends_its_blobs(world: World) -> None:
    d = world.image_digest
    carol, admin = world.callers["C"], world.callers["admin"]
    # carol sees img-a (her project's): she may build on its blobs without sending them.
    assert _missing(carol, d) == []
    made = _import(carol, "carols:1", d)
    assert (made.owner, made.project) == ("carol", "p")
    # An admin may build on any blob.
    assert _missing(admin, d) == []


def test_a_blob_sent_but_not_imported_is_its_senders_only(world: World) -> None:
    alice, bob = world.callers["A"], world.callers["B"]
    ref = bob.images.UploadBlob(iter([images_pb2.BlobChunk(data=b"bob's secret data" * 100)]))
    assert _missing(bob, ref.digest) == []
    assert _missing(alice, ref.digest) == [ref.digest]
    with pytest.raises(grpc.RpcError) as err:
        _import(alice, "peek:1", ref.digest)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
