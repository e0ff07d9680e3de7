"""What one tenant's requests and streams tell of another's objects: nothing (docs/
security.md, "Roles"; a real SQLite store, the operations and the servicers' methods,
no gRPC). tests/functional/test_tenant_privacy.py has the same over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_held_addresses import full_report
from tests.unit.test_leases import HOUR, RUNNING, env, member, row
from tests.unit.test_leases import site as site
from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.states import Op, State
from workspace.domain.tenancy import ProjectSpec
from workspace.edge.workspaces import WorkspacesServicer
from workspace.errors import InvalidArgument, NotFound
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, create, operate, projects
from workspace.v1 import common_pb2, images_pb2, workspaces_pb2

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


class Context:
    """The part of a grpc.ServicerContext a watch uses: a client that stays."""

    def is_active(self) -> bool:
        return True

    def add_callback(self, _fn: object) -> None:
        pass


def test_a_watch_carries_nothing_of_the_old_project_of_a_name_made_again(site: Site) -> None:
    """`ws watch` took every workspace whose project has a name of the caller's: carol,
    a member of a physics made again after alice's was deleted, was sent alice's
    workspace of the old physics (its name, owner, id and address) when its node, back
    from DOWN, confirmed its VM gone. `ws list`, `ws show` and `ws events` already left
    the old project's rows out (Scope.made); the watch does now."""
    e = env(site)
    alice = member("alice", "physics")
    spec = CreateSpec(image="img", name="old-secret")
    old = create.create(e, alice, CreateRequest(spec, project="physics")).id
    site.report(old, RUNNING)
    operate.operate(e, alice, old, Op.DESTROY)
    site.clock.now += HOUR
    assert site.nodes.check_liveness() == ["n1"]  # TERMINATED, held until n1's word
    projects.delete_project(e, "physics")
    site.clock.now += 60
    projects.create_project(e, ProjectSpec("physics"))
    projects.add_user(e, "physics", "carol")
    # n1 is back, and still runs the old VM: the address stays held.
    full_report(site, nodes_pb2.ObservedWorkspace(workspace_id=old, state=RUNNING))
    carol = Identity(Kind.USER, "carol")
    mine = create.create(e, carol, CreateRequest(CreateSpec(image="img", name="mine"))).id
    site.report(mine, RUNNING)
    watch = WorkspacesServicer.WatchWorkspaces.__wrapped__(  # the RPC's body, as carol
        site.core, workspaces_pb2.WatchWorkspacesRequest(), Context(), carol
    )
    try:
        assert next(watch).workspace.id == mine  # the snapshot: hers alone
        # n1 says the old VM is gone (alice's row changes), then carol stops hers.
        full_report(site, nodes_pb2.ObservedWorkspace(workspace_id=mine, state=RUNNING))
        assert "confirmed the VM is gone" in row(site, old).reason
        operate.operate(e, carol, mine, Op.STOP)
        sent = next(watch).workspace
        assert (sent.id, sent.owner) == (mine, "carol")
        assert sent.state == common_pb2.WORKSPACE_STATE_STOPPING
    finally:
        watch.close()
    assert row(site, old).state == State.TERMINATED.value
