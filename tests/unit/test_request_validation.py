"""Create / operate requests through the servicers' plain methods (codec + operations)
with a real SQLite store (no gRPC)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import select

from workspace.config import ServiceConfig, load
from workspace.domain.model import ClusterRequest, MemberSpec
from workspace.domain.states import Op
from workspace.edge.admin import AdminServicer
from workspace.edge.images import ImagesServicer as Catalog
from workspace.edge.nodes import NodesServicer as Nodes
from workspace.edge.workspaces import WorkspacesServicer as Core
from workspace.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from workspace.node.v1 import nodes_pb2
from workspace.ops import clusters, queue
from workspace.ops.events import Notifier
from workspace.ops.images import Catalog as CatalogOps
from workspace.ops.unit import Env
from workspace.store import IpAllocation, Node, Store, Workspace
from workspace.store.blobs import BlobRepository
from workspace.v1 import admin_pb2, common_pb2, images_pb2, workspaces_pb2

OWNER = "alice"
WS = common_pb2.WorkspaceState
DS = common_pb2.DesiredState


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    core: Core
    nodes: Nodes
    catalog: Catalog
    store: Store
    clock: Clock

    def create(self, owner: str = OWNER, **kw: object) -> common_pb2.Workspace:
        kw.setdefault("image", "img")
        return self.core.create(owner, workspaces_pb2.CreateWorkspaceRequest(**kw))  # type: ignore[arg-type]

    def report(self, wid: str, observed: int, full: bool = False) -> None:
        self.nodes.report(
            nodes_pb2.ReportStatusRequest(
                node="n1",
                full=full,
                workspaces=[nodes_pb2.ObservedWorkspace(workspace_id=wid, state=observed)],
            )
        )

    def destroy(self, wid: str, owner: str = OWNER) -> None:
        self.core.operate(owner, wid, Op.DESTROY)
        self.report(wid, nodes_pb2.OBSERVED_STATE_ABSENT)

    def allocations(self) -> list[IpAllocation]:
        with self.store.read() as s:
            return list(s.execute(select(IpAllocation).order_by(IpAllocation.ip)).scalars())

    def workspaces(self) -> list[Workspace]:
        with self.store.read() as s:
            return list(s.execute(select(Workspace)).scalars())

    def node_usage(self) -> tuple[int, int]:
        with self.store.read() as s:
            node = s.get(Node, "n1")
            assert node is not None
            return node.used_cpus, node.used_memory_mib


def build_site(
    tmp_path: Path,
    subnet: str = "10.0.0.0/24",
    cpus: int = 4,
    memory_mib: int = 8192,
    register: bool = True,
    max_name_len: int | None = None,
    database_url: str = "",
) -> Site:
    """A site of one node ``n1`` and a public image ``img``; its store on SQLite in
    ``tmp_path``, or at ``database_url`` (PostgreSQL: ``pg_url``)."""
    cfg = load(ServiceConfig, None, data_dir=str(tmp_path))
    if max_name_len is not None:
        cfg = replace(cfg, limits=replace(cfg.limits, max_name_len=max_name_len))
    store = Store(database_url or f"sqlite:///{tmp_path}/db.sqlite")
    clock = Clock()
    env = Env.of(cfg, store, Notifier(), clock=clock)
    core = Core(env)
    catalog = Catalog(CatalogOps(env, BlobRepository(tmp_path / "blobs")))
    admin = AdminServicer(env)
    admin.create_network(admin_pb2.Network(name="default", subnet=subnet))
    admin.create_network(admin_pb2.Network(name="storage", subnet="10.9.0.0/24"))
    ref = catalog.upload_blob(iter([b"\0" * 4096]), OWNER)
    part = common_pb2.Partition(
        name="root", digest=ref.digest, format="raw", mode=common_pb2.PARTITION_MODE_COW
    )
    catalog.import_image(OWNER, images_pb2.ImportImageRequest(name="img", partitions=[part]))
    # Several users create from it here: a site image every user sees.
    catalog.catalog.set_public("img", True)
    nodes = Nodes(env, catalog.catalog)
    if register:
        nodes.register(
            nodes_pb2.RegisterRequest(
                node="n1", hypervisor="fake", cpus=cpus, memory_mib=memory_mib, networks=["default"]
            )
        )
    return Site(core, nodes, catalog, store, clock)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


# -- a good create --------------------------------------------------------------------


def test_create_defaults(site: Site) -> None:
    ws = site.create(name="web1")
    assert (ws.name, ws.owner, ws.image, ws.node) == ("web1", OWNER, "img", "n1")
    assert (ws.cpus, ws.memory_mib) == (1, 512)
    assert ws.state == WS.WORKSPACE_STATE_SCHEDULED
    assert ws.desired_state == DS.DESIRED_STATE_RUNNING
    assert len(ws.nics) == 1
    nic = ws.nics[0]
    assert (nic.network, nic.ip, nic.prefix_len, nic.gateway) == (
        "default",
        "10.0.0.2",
        24,
        "10.0.0.1",
    )
    assert nic.mac.startswith("52:54:00:")
    # The claim includes the hypervisor overhead (64 + 1 per part GiB + 8 per vCPU).
    assert site.node_usage() == (1, 512 + 73)


def test_name_is_generated_when_not_given(site: Site) -> None:
    ws = site.create()
    assert ws.name.startswith("ws-")
    assert ws.name == f"ws-{ws.id[:8]}"


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Web1", "-web", "web-", "web_1", "a" * 64, "wéb", "web.1", " "])
def test_invalid_name(site: Site, name: str) -> None:
    with pytest.raises(InvalidArgument, match="is not valid"):
        site.create(name=name)
    assert site.workspaces() == []


@pytest.mark.parametrize(
    "name", ["a", "7a", "web-1", "1-2", "0x", "0xg", "a" * 63, "dcc005af50d", "dcc005af50d5a"]
)
def test_valid_name(site: Site, name: str) -> None:
    assert site.create(name=name).name == name


def test_a_name_like_an_id_is_refused(site: Site) -> None:
    """`ws show REF` takes an id first: a workspace named like another one's id could
    not be reached by its name, and `ws destroy NAME` would destroy the other one."""
    first = site.create(name="alpha")
    for name in (first.id, "0123456789ab"):
        with pytest.raises(InvalidArgument, match="looks like an id"):
            site.create(name=name)
    members = (MemberSpec(role="w", image="img"),)
    with pytest.raises(InvalidArgument, match="cluster name 'c0123456789a' looks like an id"):
        clusters.create(site.core.env, "alice", ClusterRequest("c0123456789a", members))
    assert [w.name for w in site.workspaces()] == ["alpha"]


@pytest.mark.parametrize("name", ["7", "123", "0123", "0x7f", "0xabc"])
def test_a_name_resolvers_read_as_an_address_is_refused(site: Site, name: str) -> None:
    """`ws create --name 123` made a guest whose hostname resolvers read as 0.0.0.123:
    refused at create, saying why and what would do."""
    with pytest.raises(InvalidArgument) as info:
        site.create(name=name)
    assert info.value.message == (
        f"name {name!r} is not valid: it becomes the VM's hostname, and resolvers read a "
        "name of digits alone (or 0x and hex digits) as an IP address; put a letter in it "
        f"(e.g. 'ws-{name}')"
    )
    assert site.workspaces() == []


@pytest.mark.parametrize("name", ["web\n", "web1\n", "\nweb"])
def test_name_with_a_newline_is_refused(site: Site, name: str) -> None:
    with pytest.raises(InvalidArgument, match="is not valid"):
        site.create(name=name)
    assert site.workspaces() == []


def test_max_name_len_is_the_limit(tmp_path: Path) -> None:
    assert load(ServiceConfig, None).limits.max_name_len == 63  # the default
    site = build_site(tmp_path, max_name_len=8)
    assert site.create(name="a" * 8).name == "a" * 8
    with pytest.raises(InvalidArgument, match="use 1-8 lowercase letters"):
        site.create(name="b" * 9)


@pytest.mark.parametrize("cpus", [-1, -64, 65, 1000])
def test_cpus_out_of_range(site: Site, cpus: int) -> None:
    # Which setting bounds it: an admin finds it in the service's [limits].
    msg = rf"cpus must be between 1 and 64, got {cpus} \(the site's limits\.max_cpus\)"
    with pytest.raises(InvalidArgument, match=msg):
        site.create(cpus=cpus)


@pytest.mark.parametrize("memory_mib", [-512, 1, 15, 512 * 1024 + 1])
def test_memory_out_of_range(site: Site, memory_mib: int) -> None:
    with pytest.raises(
        InvalidArgument,
        match=rf"memory_mib must be between 16 and 524288, got {memory_mib} \(the site's limits",
    ):
        site.create(memory_mib=memory_mib)


def test_memory_bounds_are_inclusive(site: Site) -> None:
    assert site.create(memory_mib=16).memory_mib == 16
    # Valid but larger than the node: refused for capacity, not as invalid.
    with pytest.raises(ResourceExhausted):
        site.create(memory_mib=512 * 1024)


def test_user_data_too_large(site: Site) -> None:
    ref = site.catalog.upload_blob(iter([b"\0" * 4096]), OWNER)
    part = common_pb2.Partition(name="root", digest=ref.digest, format="raw")
    req = images_pb2.ImportImageRequest(name="cloud", partitions=[part], context="nocloud")
    site.catalog.import_image(OWNER, req)
    script = b"#!/bin/sh\n#"
    msg = "user-data is 65537 bytes, more than the limit of 65536 bytes"
    with pytest.raises(InvalidArgument, match=msg + r" \(limits.max_user_data_bytes\)"):
        site.create(image="cloud", user_data=script + b"x" * (65537 - len(script)))
    assert site.create(image="cloud", user_data=script + b"x" * (65536 - len(script))).id


def test_image_required(site: Site) -> None:
    with pytest.raises(InvalidArgument, match="an image is required"):
        site.create(image="")


def test_unknown_image(site: Site) -> None:
    with pytest.raises(NotFound, match="image 'nope' not found"):
        site.create(image="nope")


def test_unknown_image_of_a_name_longer_than_sqlite_matches(site: Site) -> None:
    # SQLite refuses a LIKE pattern over 50,000 bytes: looking for the versions of such a
    # NAME was an INTERNAL error, where any caller naming no image gets NOT_FOUND.
    huge = "x" * 60_000
    with pytest.raises(NotFound, match=r"image 'x+' not found"):
        site.create(image=huge)
    with pytest.raises(NotFound, match="not found"):
        site.catalog.catalog.get_image(OWNER, huge + ":1")
    with pytest.raises(NotFound, match="not found"):
        site.catalog.delete_image(OWNER, huge)


def test_unknown_network(site: Site) -> None:
    with pytest.raises(NotFound, match="network 'dmz' does not exist"):
        site.create(networks=["dmz"])


def test_network_named_twice(site: Site) -> None:
    with pytest.raises(InvalidArgument, match="network 'default' is named twice"):
        site.create(networks=["storage", "default", "default"])


def test_too_many_networks(site: Site) -> None:
    with pytest.raises(InvalidArgument, match=r"at most 8 networks .*limits\.max_nics\), got 9"):
        site.create(networks=["default"] * 9)


def test_duplicate_name(site: Site) -> None:
    first = site.create(name="web1")
    with pytest.raises(AlreadyExists, match=rf"'web1' \({first.id}\)"):
        site.create(name="web1")
    # Names are per owner.
    assert site.create(owner="bob", name="web1").owner == "bob"


def test_name_reusable_after_destroy(site: Site) -> None:
    first = site.create(name="web1")
    site.destroy(first.id)
    second = site.create(name="web1")
    assert second.id != first.id
    # By name, the live one is found.
    assert site.core.get(OWNER, "web1").id == second.id


# -- capacity -------------------------------------------------------------------------


def test_no_cpu_capacity_names_the_filter(site: Site) -> None:
    # 4 cpus x 4 overcommit = 16
    with pytest.raises(ResourceExhausted, match=r"1 node\(s\) have too few free CPUs"):
        site.create(name="big", cpus=17)
    assert site.node_usage() == (0, 0)


def test_no_memory_capacity_names_the_filter(site: Site) -> None:
    with pytest.raises(ResourceExhausted, match=r"cannot place big: .*too little free memory"):
        site.create(name="big", memory_mib=8192)  # the overhead does not fit


def test_queue_state_is_a_field(site: Site) -> None:
    """Why a request waits is stored as such; the API's text is derived from it."""
    site.create(name="hog", memory_mib=6000)
    ws = site.create(name="big", memory_mib=4096, wait_for_capacity_s=60)
    (row,) = [w for w in site.workspaces() if w.name == "big"]
    assert row.wait_reason.startswith("big does not fit: ")
    assert "too little free memory" in row.wait_reason
    assert row.reason == ""
    assert ws.state == WS.WORKSPACE_STATE_PENDING
    assert ws.reason == f"waiting for capacity: {row.wait_reason}"
    (entry,) = queue.list_queue(site.core.env)
    assert entry.reason == row.wait_reason
    site.clock.now += 61
    assert queue.process(site.core.env) == 0
    (row,) = [w for w in site.workspaces() if w.name == "big"]
    assert (row.state, row.wait_reason) == ("FAILED", "")
    assert site.core.get(OWNER, ws.id).reason == f"no capacity in time: {entry.reason}"
    assert queue.list_queue(site.core.env) == []


def test_destroying_a_workspace_that_was_never_placed_blames_no_node(site: Site) -> None:
    """A create that failed waiting for capacity has no node: its destroy ends it at once,
    and says "destroyed", not "destroyed (its node was not reachable)", which sent its
    owner (and the site admin) looking for a node that never had it."""
    site.create(name="hog", memory_mib=6000)
    ws = site.create(name="big", memory_mib=4096, wait_for_capacity_s=60)
    site.clock.now += 61
    queue.process(site.core.env)
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_FAILED
    site.core.operate(OWNER, ws.id, Op.DESTROY)
    gone = site.core.get(OWNER, ws.id)
    assert gone.state == WS.WORKSPACE_STATE_TERMINATED
    assert gone.reason == "destroyed"


def test_node_without_the_network(site: Site) -> None:
    with pytest.raises(ResourceExhausted, match="lack a requested network"):
        site.create(networks=["storage"])


def test_no_nodes_registered(tmp_path: Path) -> None:
    site = build_site(tmp_path, register=False)
    with pytest.raises(ResourceExhausted, match="no nodes are registered"):
        site.create()


def test_down_node_is_not_used(site: Site) -> None:
    site.clock.now += site.core.env.cfg.node_grace_s + 1
    assert site.nodes.check_liveness() == ["n1"]
    with pytest.raises(ResourceExhausted, match=r"1 node\(s\) are DOWN"):
        site.create()


def test_capacity_is_claimed_and_runs_out(site: Site) -> None:
    # Each 2 GiB workspace claims 2048 + 64 + 4 + 8 = 2124 MiB: three fit in 8192, four do not.
    for i in range(3):
        site.create(name=f"w{i}", memory_mib=2048)
    assert site.node_usage() == (3, 3 * 2124)
    with pytest.raises(ResourceExhausted, match="too little free memory"):
        site.create(name="w3", memory_mib=2048)
    assert site.node_usage() == (3, 3 * 2124)


def test_pool_exhaustion_leaves_no_partial_rows(tmp_path: Path) -> None:
    site = build_site(tmp_path, subnet="10.0.0.0/29")  # .2 - .6: five addresses
    made = [site.create(name=f"w{i}") for i in range(5)]
    assert sorted(w.nics[0].ip for w in made) == [f"10.0.0.{i}" for i in range(2, 7)]
    usage = site.node_usage()
    with pytest.raises(
        ResourceExhausted, match="network 'default' has no free address left"
    ) as info:
        site.create(name="w5", request_id="r-w5")
    # How many it holds of how many: the range's size was not said.
    assert "(1 needed, 0 free: 5 of the 5 of its range 10.0.0.2-10.0.0.6 held" in info.value.message
    assert sorted(w.name for w in site.workspaces()) == [f"w{i}" for i in range(5)]
    assert len(site.allocations()) == 5
    assert site.node_usage() == usage
    # After a release, the retry with the same request id goes through.
    site.destroy(made[2].id)
    retry = site.create(name="w5", request_id="r-w5")
    assert retry.nics[0].ip == made[2].nics[0].ip


# -- idempotency ----------------------------------------------------------------------


def test_same_request_id_returns_same_workspace(site: Site) -> None:
    a = site.create(name="web1", request_id="req-1", cpus=2)
    b = site.create(name="web1", request_id="req-1", cpus=2)
    assert a.id == b.id
    assert a.nics[0].ip == b.nics[0].ip
    assert len(site.workspaces()) == 1
    assert len(site.allocations()) == 1
    assert site.node_usage()[0] == 2


def test_same_request_id_other_params_refused(site: Site) -> None:
    site.create(name="web1", request_id="req-1", cpus=2)
    with pytest.raises(InvalidArgument, match="request id 'req-1' was already used"):
        site.create(name="web1", request_id="req-1", cpus=3)
    with pytest.raises(InvalidArgument, match="already used"):
        site.create(name="web2", request_id="req-1", cpus=2)
    assert len(site.workspaces()) == 1


def test_request_ids_are_per_owner(site: Site) -> None:
    a = site.create(name="web1", request_id="req-1")
    b = site.create(owner="bob", name="web1", request_id="req-1")
    assert a.id != b.id


# -- destroy --------------------------------------------------------------------------


def test_destroy_releases_only_once_the_node_reports_absent(site: Site) -> None:
    keep = site.create(name="keep")
    ws = site.create(name="gone", cpus=2)
    usage_both = site.node_usage()

    after = site.core.operate(OWNER, ws.id, Op.DESTROY)
    assert after.desired_state == DS.DESIRED_STATE_TERMINATED
    assert after.state == WS.WORKSPACE_STATE_STOPPING
    # Still on the node: its address and claim are held.
    assert len(site.allocations()) == 2
    assert site.node_usage() == usage_both

    site.report(ws.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_STOPPING
    assert len(site.allocations()) == 2

    site.nodes.report(
        nodes_pb2.ReportStatusRequest(
            node="n1",
            full=True,
            workspaces=[
                nodes_pb2.ObservedWorkspace(
                    workspace_id=ws.id, state=nodes_pb2.OBSERVED_STATE_ABSENT
                ),
                nodes_pb2.ObservedWorkspace(
                    workspace_id=keep.id, state=nodes_pb2.OBSERVED_STATE_RUNNING
                ),
            ],
        )
    )
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_TERMINATED
    assert [a.workspace_id for a in site.allocations()] == [keep.id]
    assert site.node_usage() == (1, 512 + 73)  # only keep's claim is left
    assert site.core.get(OWNER, keep.id).state == WS.WORKSPACE_STATE_RUNNING


def test_full_report_that_omits_a_destroyed_workspace_releases_it(site: Site) -> None:
    ws = site.create()
    site.core.operate(OWNER, ws.id, Op.DESTROY)
    site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=True))
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_TERMINATED
    assert site.allocations() == []
    assert site.node_usage() == (0, 0)


def test_partial_report_that_omits_it_does_not_release(site: Site) -> None:
    ws = site.create()
    site.core.operate(OWNER, ws.id, Op.DESTROY)
    site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=False))
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_STOPPING
    assert len(site.allocations()) == 1


def test_released_address_is_reused(site: Site) -> None:
    a = site.create(name="a")
    site.create(name="b")
    site.destroy(a.id)
    assert site.create(name="c").nics[0].ip == a.nics[0].ip


def test_destroy_twice(site: Site) -> None:
    """A second destroy (a retry whose first answer was lost) answers the workspace as
    it is, changes nothing and publishes nothing."""
    ws = site.create(name="web1")
    first = site.core.operate(OWNER, ws.id, Op.DESTROY)
    events = site.core.env.notifier.subscribe(lambda w: True)
    again = site.core.operate(OWNER, ws.id, Op.DESTROY)
    assert again == first and again.desired_state == DS.DESIRED_STATE_TERMINATED
    assert events.events.empty()
    with pytest.raises(FailedPrecondition, match="web1 is being destroyed"):
        site.core.operate(OWNER, ws.id, Op.START)
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_ABSENT)
    done = site.core.operate(OWNER, ws.id, Op.DESTROY)
    assert done.state == WS.WORKSPACE_STATE_TERMINATED
    assert site.allocations() == []


def test_a_pause_or_resume_again_while_under_way_changes_nothing(site: Site) -> None:
    """`ws pause` again before the node paused it (desired PAUSED, still RUNNING) was
    taken as a new change: a new updated_at, an event to every watcher, the node's
    orders sent again, "pause requested" logged; as a start again while it boots, it is
    now already asked for (and a resume again before the node resumed it likewise)."""
    ws = site.create(name="web1")
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    first = site.core.operate(OWNER, ws.id, Op.PAUSE)
    assert (first.state, first.desired_state) == (
        WS.WORKSPACE_STATE_RUNNING,
        DS.DESIRED_STATE_PAUSED,
    )
    site.clock.now += 5
    events = site.core.env.notifier.subscribe(lambda w: True)
    assert site.core.operate(OWNER, ws.id, Op.PAUSE) == first
    assert events.events.empty()
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_PAUSED)
    resumed = site.core.operate(OWNER, ws.id, Op.RESUME)
    assert (resumed.state, resumed.desired_state) == (
        WS.WORKSPACE_STATE_PAUSED,
        DS.DESIRED_STATE_RUNNING,
    )
    site.clock.now += 5
    events = site.core.env.notifier.subscribe(lambda w: True)
    assert site.core.operate(OWNER, ws.id, Op.RESUME) == resumed
    assert events.events.empty()


@pytest.mark.parametrize("op", [op for op in Op if op is not Op.DESTROY], ids=str)
def test_operations_on_destroyed_workspace(site: Site, op: Op) -> None:
    ws = site.create(name="web1")
    site.destroy(ws.id)
    for ref in (ws.id, "web1"):
        with pytest.raises(FailedPrecondition, match="was destroyed"):
            site.core.operate(OWNER, ref, op)
    assert site.allocations() == []


def test_destroy_on_a_down_node_terminates_at_once_but_holds_until_the_node_says(
    site: Site,
) -> None:
    ws = site.create(name="web1")
    site.clock.now += site.core.env.cfg.node_grace_s + 1
    site.nodes.check_liveness()
    assert site.core.get(OWNER, ws.id).state == WS.WORKSPACE_STATE_LOST
    assert site.core.operate(OWNER, ws.id, Op.DESTROY).state == WS.WORKSPACE_STATE_TERMINATED
    # the VM may still run behind a partition: its address and claim wait for the node
    assert len(site.allocations()) == 1
    assert site.node_usage() != (0, 0)
    site.nodes.report(nodes_pb2.ReportStatusRequest(node="n1", full=True))  # back, VM gone
    assert site.allocations() == []
    assert site.node_usage() == (0, 0)


# -- other owners / refs --------------------------------------------------------------


def test_other_owner_cannot_see_or_operate(site: Site) -> None:
    ws = site.create(name="web1")
    with pytest.raises(NotFound):
        site.core.get("bob", ws.id)
    with pytest.raises(NotFound):
        site.core.operate("bob", ws.id, Op.DESTROY)
    assert site.core.get(OWNER, ws.id).desired_state == DS.DESIRED_STATE_RUNNING


def test_stop_then_start(site: Site) -> None:
    ws = site.create(name="web1")
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    # Started already: answered as it is (a retried or a making-sure start).
    assert site.core.operate(OWNER, "web1", Op.START).state == WS.WORKSPACE_STATE_RUNNING
    stopped = site.core.operate(OWNER, "web1", Op.STOP, timeout_s=5)
    assert stopped.desired_state == DS.DESIRED_STATE_STOPPED
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_STOPPED)
    started = site.core.operate(OWNER, "web1", Op.START)
    assert started.state == WS.WORKSPACE_STATE_STARTING
    # A stopped workspace keeps its address and claim.
    assert len(site.allocations()) == 1
    assert site.node_usage() == (1, 512 + 73)


def test_a_stop_asked_again_while_it_stops_forces_it_or_changes_nothing(site: Site) -> None:
    from workspace.ops import reports

    ws = site.create(name="web1")
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_RUNNING)
    site.core.operate(OWNER, "web1", Op.STOP, timeout_s=600)
    (order,) = reports.orders(site.core.env, "n1").orders
    assert (order.stop_timeout_s, order.force_stop) == (600, False)
    # The guest ignores the shutdown: `ws stop --force` while it stops pulls the plug.
    again = site.core.operate(OWNER, "web1", Op.STOP, force=True)
    assert again.state == WS.WORKSPACE_STATE_STOPPING
    (order,) = reports.orders(site.core.env, "n1").orders
    assert order.force_stop
    site.report(ws.id, nodes_pb2.OBSERVED_STATE_STOPPED)
    events = site.core.env.notifier.subscribe(lambda w: True)
    assert site.core.operate(OWNER, "web1", Op.STOP).state == WS.WORKSPACE_STATE_STOPPED
    assert events.events.empty()  # stopped already: nothing changed


def test_a_cluster_create_retried_after_a_limit_changed_gets_the_same_cluster(
    site: Site,
) -> None:
    """As a workspace's create: the request id is looked up before the arguments are
    checked again, so a retry gets what the first request got."""
    from workspace.domain.model import ClusterRequest, MemberSpec
    from workspace.ops import clusters

    req = ClusterRequest(
        name="duo",
        members=(MemberSpec("w", "img", memory_mib=64, count=2),),
        request_id="r-duo",
        request_hash="h",
        wait_for_capacity_s=600,
    )
    env = site.core.env
    first = clusters.create(env, OWNER, req)
    lim = replace(env.cfg.limits, max_wait_for_capacity_s=60)
    stricter = replace(env, cfg=replace(env.cfg, limits=lim))
    assert clusters.create(stricter, OWNER, req).id == first.id
    with pytest.raises(InvalidArgument, match="max_wait_for_capacity_s"):
        clusters.create(stricter, OWNER, replace(req, request_id="r-new", name="trio"))
