"""What one tenant's requests and streams tell of another's objects: nothing (docs/
security.md, "Roles"; a real SQLite store, the operations and the servicers' methods,
no gRPC). tests/functional/test_tenant_privacy.py has the same over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.errors import InvalidArgument, NotFound
from workspace.identity import Identity, Kind
from workspace.ops import clusters
from workspace.v1 import common_pb2, images_pb2

CLOUD_CONFIG = b"#cloud-config\nhostname: x\n"


def private_image(site: Site, owner: str, name: str) -> None:
    """An image of ``owner``'s outside any project (context none): theirs alone."""
    ref = site.catalog.upload_blob(iter([b"\1" * 4096]), owner)
    part = common_pb2.Partition(
        name="root", digest=ref.digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
    )
    site.catalog.import_image(owner, images_pb2.ImportImageRequest(name=name, partitions=[part]))


def cluster_of(image: str) -> ClusterRequest:
    return ClusterRequest("c", (MemberSpec(role="w", image=image, user_data=CLOUD_CONFIG),))


def test_a_cluster_with_user_data_tells_nothing_of_another_users_private_image(
    tmp_path: Path,
) -> None:
    """A cluster create checked its roles' user-data against their image before it
    checked that the caller may use the image: naming carol's private image, bob was
    told it "takes no user-data (its context is none)" (INVALID_ARGUMENT), and of a name
    no image has "not found": which private images exist, and how they boot."""
    site = build_site(tmp_path)
    env = site.core.env
    private_image(site, "carol", "secret:1")
    bob = Identity(Kind.USER, "bob")
    told = {}
    for name in ("secret:1", "nothing:1"):
        with pytest.raises(NotFound) as info:
            clusters.create(env, bob, cluster_of(name))
        told[name] = info.value.message.replace(name, "NAME")
    assert told["secret:1"] == told["nothing:1"]
    assert told["secret:1"] == (
        "cluster c, member w: image 'NAME' not found; `ws image list` shows them"
    )
    assert site.workspaces() == []
    # Its owner, and anyone of an image they may use, is still told why.
    with pytest.raises(InvalidArgument, match="takes no user-data"):
        clusters.create(env, Identity(Kind.USER, "carol"), cluster_of("secret:1"))
    with pytest.raises(InvalidArgument, match="image img takes no user-data"):
        clusters.create(env, bob, cluster_of("img"))
