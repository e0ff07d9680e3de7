"""What a refusal for a quota tells the user (a real SQLite store, the operations; no
gRPC): which quota, its limit, how much the project uses already and how much more the
request asks. It used to say only the sum ("5 asked in all, the limit is 4"), so a user
could not tell what the project held from what they had asked for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_request_validation import Site, build_site
from workspace.domain.model import ClusterRequest, CreateRequest, CreateSpec, MemberSpec
from workspace.domain.netpolicy import PolicyUpdate
from workspace.domain.states import Op
from workspace.domain.tenancy import ProjectSpec, Quota
from workspace.errors import NotFound, ResourceExhausted
from workspace.identity import Identity, Kind
from workspace.node.v1 import nodes_pb2
from workspace.ops import cluster_scale, clusters, create, projects, update
from workspace.v1 import common_pb2, images_pb2

ALICE = Identity(Kind.USER, "alice", projects=("p",))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = build_site(tmp_path, cpus=64, memory_mib=65536)
    yield s
    s.store.close()


def make(site: Site, **quota: int) -> None:
    projects.create_project(site.core.env, ProjectSpec("p", Quota(**quota)))


def new(site: Site, name: str, cpus: int = 1, memory_mib: int = 256) -> str:
    spec = CreateSpec(image="img", name=name, cpus=cpus, memory_mib=memory_mib)
    return create.create(site.core.env, ALICE, CreateRequest(spec, project="p")).id


def refusal(call: object) -> str:
    with pytest.raises(ResourceExhausted) as info:
        call()  # type: ignore[operator]
    return info.value.message


def test_a_create_says_what_is_in_use_and_what_it_asks(site: Site) -> None:
    make(site, vcpus=4)
    new(site, "a", cpus=3)
    why = refusal(lambda: new(site, "b", cpus=2))
    assert why.startswith("cannot create b: the vcpus quota of project p would be exceeded")
    assert "3 in use, 2 more asked: 5 in all, the limit is 4" in why


def test_a_cluster_and_a_grow_say_it_too(site: Site) -> None:
    make(site, instances=3)
    new(site, "a")
    env = site.core.env
    req = ClusterRequest(
        "c", (MemberSpec(role="w", image="img", count=3, memory_mib=256),), project="p"
    )
    why = refusal(lambda: clusters.create(env, ALICE, req))
    assert "instances quota of project p" in why
    assert "1 in use, 3 more asked: 4 in all, the limit is 3" in why
    one = ClusterRequest(
        "c", (MemberSpec(role="w", image="img", count=1, memory_mib=256),), project="p"
    )
    clusters.create(env, ALICE, one)
    why = refusal(lambda: cluster_scale.scale(env, ALICE, "c", "w", 4))
    assert "2 in use, 3 more asked: 5 in all, the limit is 3" in why


def stopped(site: Site, wid: str) -> None:
    site.report(wid, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.core.operate(ALICE, wid, Op.STOP)
    site.report(wid, nodes_pb2.OBSERVED_STATE_STOPPED)


def test_a_resize_says_it_and_one_over_a_lowered_quota_says_so(site: Site) -> None:
    make(site, vcpus=4, memory_mib=4096)
    env = site.core.env
    stopped(site, new(site, "a", cpus=2))
    new(site, "b", cpus=1)
    why = refusal(lambda: update.update(env, ALICE, PolicyUpdate("a", cpus=4)))
    assert why.startswith("cannot resize a: the vcpus quota of project p would be exceeded")
    assert "3 in use, 2 more asked: 5 in all, the limit is 4" in why
    # The admin lowers vCPUs under the use: growing the memory is refused for them, and
    # the message says the project is over already (not "0 more asked").
    projects.set_defaults(env, "p", None, quota=Quota(vcpus=2, memory_mib=4096))
    why = refusal(lambda: update.update(env, ALICE, PolicyUpdate("a", memory_mib=512)))
    assert "vcpus quota of project p is exceeded already (3 in use, the limit is 2)" in why
    assert "more asked" not in why


def test_an_import_says_the_bytes_in_use(site: Site) -> None:
    make(site, image_bytes=6000)
    catalog = site.catalog

    def push(name: str, data: bytes) -> None:
        digest = catalog.upload_blob(iter([data]), "alice").digest
        part = common_pb2.Partition(name="root", digest=digest, format="raw")
        catalog.import_image(
            ALICE, images_pb2.ImportImageRequest(name=name, project="p", partitions=[part])
        )

    push("one:1", b"\1" * 4000)
    why = refusal(lambda: push("two:1", b"\2" * 3000))
    assert "image-bytes quota of project p would be exceeded" in why
    assert "4000 bytes in use, 3000 bytes more asked: 7000 bytes in all" in why
    assert "the limit is 6000 bytes" in why


def test_an_unknown_project_points_each_caller_at_a_list_they_have(site: Site) -> None:
    """`ws-admin project show nosuch` said "`ws quota` shows yours", which shows an admin
    only the projects they are a member of (often none): an admin is pointed at
    `ws-admin project list`, a user still at `ws quota`."""
    env = site.core.env
    admin = Identity(Kind.USER, "root", admin=True)
    with pytest.raises(NotFound) as info:
        projects.quotas(env, admin, project="nosuch")
    assert info.value.message.endswith("`ws-admin project list` shows them")
    spec = CreateSpec(image="img", name="x")
    with pytest.raises(NotFound) as info:
        create.create(env, admin, CreateRequest(spec, project="nosuch"))
    assert "`ws-admin project list` shows them" in info.value.message
    # A user is told a project is missing only when their certificate names it (anyone
    # else is refused as a stranger: tests/unit/test_project_membership.py).
    named = Identity(Kind.USER, "carol", projects=("nosuch",))
    with pytest.raises(NotFound) as info:
        projects.quotas(env, named, project="nosuch")
    assert info.value.message.endswith("`ws quota` shows yours")


def test_a_workspace_being_destroyed_is_said_to_count(site: Site) -> None:
    """`ws destroy a && ws create b` in a full project: the create was refused with "1
    in use" while `ws list` showed a going (its node had not removed it yet). The refusal
    says it counts until then, and how to wait for it."""
    make(site, instances=1)
    a = new(site, "a")
    site.report(a, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.core.operate(ALICE, a, Op.DESTROY)  # its node has not removed it yet
    why = refusal(lambda: new(site, "b"))
    assert "1 in use, 1 workspace(s) being destroyed among them" in why
    assert "`ws destroy NAME --wait`" in why
    site.report(a, nodes_pb2.OBSERVED_STATE_ABSENT)
    assert new(site, "b")


def test_a_stopped_workspace_is_said_to_count(site: Site) -> None:
    """`ws stop a && ws create b` in a full project: a stopped workspace keeps its share
    of the quota (its node keeps its memory and disks), and the refusal said "1 in use"
    while `ws list` showed nothing running, so a user took stopping for freeing. It says
    how many of those in use are stopped, and that a destroy frees them."""
    make(site, instances=2, vcpus=8)
    a = new(site, "a")
    stopped(site, a)
    new(site, "b")
    why = refusal(lambda: new(site, "c"))
    assert "(2 in use, 1 more asked: 3 in all, the limit is 2)" in why
    assert "; 1 stopped workspace(s) of the project count too: a stopped workspace" in why
    assert "keeps its share until it is destroyed (`ws destroy NAME`)" in why
    assert why.endswith("; `ws quota` shows use and limits")
    # A resize of the stopped one is not told of itself.
    why = refusal(lambda: update.update(site.core.env, ALICE, PolicyUpdate("a", cpus=8)))
    assert "stopped workspace(s)" not in why
    # None stopped: nothing said of them.
    site.core.operate(ALICE, a, Op.DESTROY)
    site.report(a, nodes_pb2.OBSERVED_STATE_ABSENT)
    site.report(new(site, "c"), nodes_pb2.OBSERVED_STATE_RUNNING)
    assert "stopped" not in refusal(lambda: new(site, "d"))
