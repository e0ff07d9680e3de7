"""Site events through the real service: state changes, placements, refusals, nodes,
leases — each with who and why, kept in the journal and followed as they happen."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from images import digest as digests
from tests.functional.harness import WS, Site, SitePki, TlsSite, wait_for
from workspace.cli import admin as admin_cli
from workspace.cli import event_cmds
from workspace.cli.ws import main as ws_main
from workspace.client import Client
from workspace.codec import events as codec_events
from workspace.domain.events import EventFilter, SiteEvent
from workspace.v1 import (
    admin_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
)


def events(site: Site, since: float = 0.0) -> list[SiteEvent]:
    req = codec_events.watch_request_to_proto(since, False)
    return [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]


def kinds(evs: list[SiteEvent], name: str) -> list[str]:
    return [e.kind for e in evs if e.workspace_name == name]


def test_a_create_leaves_created_placed_and_state_events(ready_site: Site) -> None:
    ws = ready_site.stubs.create(name="alpha")
    ready_site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    evs = wait_for(
        lambda: (
            (e := events(ready_site))
            and any(x.kind == "workspace.state" and x.state == "RUNNING" for x in e)
            and e
        ),
        what="the RUNNING event",
    )
    mine = [e for e in evs if e.workspace_id == ws.id and e.kind.startswith("workspace.")]
    # one event for the create transaction: what it made, where it was placed
    assert mine[0].kind == "workspace.created" and mine[0].node == "node1"
    assert mine[0].who == "user:local" and mine[0].subject == "img"
    assert mine[0].state == "SCHEDULED"
    assert "workspace.placed" not in [e.kind for e in mine]
    states = [(e.previous, e.state) for e in mine if e.kind == "workspace.state"]
    assert states[-1][1] == "RUNNING", states
    assert [b for _a, b in states][-3:] == ["PROPAGATING", "STARTING", "RUNNING"], states
    running = next(e for e in mine if e.state == "RUNNING")
    assert running.who == "user:local"  # the node's report; insecure: every caller is `local`
    ids = [e.id for e in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # trust decisions, by the service at create and by the node at boot (warn mode)
    trust = [e for e in evs if e.kind == "trust.decision" and e.workspace_id == ws.id]
    assert {e.who for e in trust} >= {"user:local", "node:node1"}
    assert all(e.subject == "img" and "not signed" in e.reason for e in trust)
    assert {e.workspace_name for e in trust} == {ws.name}  # the create's too, named
    # the node registered
    assert any(e.kind == "node.registered" and e.node == "node1" for e in evs)


def test_a_refusal_is_an_event_though_nothing_else_is_kept(ready_site: Site) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ready_site.stubs.create(name="huge", cpus=64, memory_mib=1024)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    evs = events(ready_site)
    # Its trust decision (warn: the image is unsigned), named by the name asked for, then
    # the refusal.
    named = [e for e in evs if e.workspace_name == "huge"]
    assert [e.kind for e in named] == ["trust.decision", "workspace.refused"]
    refused = named[1:]
    assert refused[0].state == "capacity" and "cannot place" in refused[0].reason
    assert refused[0].who == "user:local" and refused[0].workspace_id == ""


def test_the_trust_decision_of_a_refused_create_names_the_request_not_a_workspace(
    ready_site: Site,
) -> None:
    """A create refused after its trust decision (no capacity; under ENFORCE the image
    itself) made no workspace: its decision is kept, named by the name asked for and
    saying the create was refused, with no workspace id (it named none that exists)."""
    from workspace.v1 import trust_pb2, trust_pb2_grpc

    with pytest.raises(grpc.RpcError):
        ready_site.stubs.create(name="huge", cpus=64, memory_mib=1024)
    trust = trust_pb2_grpc.TrustStub(ready_site.stubs.channel)
    trust.SetMode(trust_pb2.SetModeRequest(mode=trust_pb2.TRUST_MODE_ENFORCE))
    with pytest.raises(grpc.RpcError) as denied:
        ready_site.stubs.create(name="unsigned")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    decisions = [e for e in events(ready_site) if e.kind == "trust.decision"]
    assert [(e.workspace_name, e.workspace_id, e.state) for e in decisions] == [
        ("huge", "", "warn"),
        ("unsigned", "", "deny"),
    ]
    assert all(
        e.reason.endswith("; the request was refused: no workspace was made") for e in decisions
    )
    assert "image img is not signed" in decisions[1].reason
    # Nor does `ws-admin events --workspace` find anything by the id it had.
    listed = ready_site.stubs.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    assert not listed.workspaces


def test_queued_then_placed_from_the_queue(ready_site: Site) -> None:
    big = ready_site.stubs.create(name="big", cpus=1, memory_mib=12000)
    waiting = ready_site.stubs.create(name="later", cpus=1, memory_mib=8000, wait_for_capacity_s=60)
    assert waiting.state == WS.WORKSPACE_STATE_PENDING
    assert kinds(events(ready_site), "later") == [
        "trust.decision",
        "workspace.created",
        "workspace.queued",
    ]
    ready_site.stubs.ws.DestroyWorkspace(ready_site.stubs.ref(big.id))
    wait_for(
        lambda: "workspace.placed" in kinds(events(ready_site), "later"), what="placed from queue"
    )
    placed = [e for e in events(ready_site) if e.workspace_name == "later"]
    assert any(e.kind == "workspace.placed" and e.subject == "queue" for e in placed)


@contextlib.contextmanager
def following(
    site: Site, since: float, which: EventFilter | None = None
) -> Iterator[list[SiteEvent]]:
    """The events a followed WatchEvents stream sends, gathered by a thread of its own
    until the block ends."""
    got: list[SiteEvent] = []
    call = site.stubs.admin.WatchEvents(codec_events.watch_request_to_proto(since, True, which))

    def read() -> None:
        try:
            for p in call:
                got.append(codec_events.event_from_proto(p))
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield got
    finally:
        call.cancel()
        t.join(5)


def test_follow_streams_new_events_and_since_filters(ready_site: Site) -> None:
    with following(ready_site, time.time() + 0.5) as got:
        time.sleep(1.0)
        ready_site.stubs.create(name="followed")
        wait_for(lambda: "workspace.created" in kinds(got, "followed"), what="a followed event")
    assert not any(e.kind == "node.registered" for e in got)  # before --since


def test_events_are_filtered_by_kind_family_workspace_and_node(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site = ready_site
    for name in ("alpha", "beta"):
        ws = site.stubs.create(name=name)
        site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.import_image("tools:1", b"t" * 4096)
    every = events(site)

    def only(**kw: Any) -> list[SiteEvent]:
        req = codec_events.watch_request_to_proto(0.0, False, EventFilter(**kw))
        return [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]

    state = only(kinds=("workspace.state",), workspace="alpha")
    assert state == [
        e for e in every if e.kind == "workspace.state" and e.workspace_name == "alpha"
    ]
    assert [e.state for e in state][-1] == "RUNNING"
    alpha_id = state[0].workspace_id
    assert only(workspace=alpha_id) == [e for e in every if e.workspace_id == alpha_id]
    family = only(kinds=("workspace", "image"))  # any of them; a family is its kinds
    assert family == [e for e in every if e.kind.split(".")[0] in ("workspace", "image")]
    assert {e.kind for e in family} >= {"workspace.created", "workspace.state", "image.added"}
    on_node = only(node="node1", kinds=("trust",))
    assert on_node and all(e.kind == "trust.decision" and e.node == "node1" for e in on_node)
    # A workspace the site never had is NOT_FOUND, as an unknown cluster is (it was an
    # empty stream: a typo looked like a workspace with no events).
    with pytest.raises(grpc.RpcError) as unknown:
        only(workspace="nobody")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no workspace 'nobody'" in str(unknown.value.details())
    capsys.readouterr()
    assert admin_cli.main(["--service", site.address, "events", "--workspace", "nobody"]) != 0
    assert "no workspace 'nobody'" in capsys.readouterr().err
    # A destroyed one still streams its history, by name and by id.
    beta = next(e.workspace_id for e in every if e.workspace_name == "beta")
    site.stubs.ws.DestroyWorkspace(site.stubs.ref(beta))
    site.stubs.wait_state(beta, WS.WORKSPACE_STATE_TERMINATED)
    assert "workspace.created" in {e.kind for e in only(workspace="beta")}
    assert only(workspace=beta) == only(workspace="beta")
    # An unknown kind: a clear error from the service, and from the CLI before it asks.
    with pytest.raises(grpc.RpcError) as bad:
        only(kinds=("imag",))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown event kind(s) 'imag'; kinds and families:" in str(bad.value.details())
    capsys.readouterr()
    assert admin_cli.main(["--service", site.address, "events", "--kind", "imag"]) == 2
    assert "unknown event kind(s) 'imag'" in capsys.readouterr().err
    # None to show: said on stderr, stdout empty for a script; with -o json nothing at all.
    argv = ["--service", site.address, "events", "--workspace", "alpha", "--kind", "image"]
    assert admin_cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("ws-admin: no events (kept for")
    assert admin_cli.main([*argv, "--since", "1h"]) == 0
    assert "ws-admin: no events since then" in capsys.readouterr().err
    assert admin_cli.main([*argv, "-o", "json"]) == 0
    assert capsys.readouterr() == ("", "")
    argv = ["--service", site.address, "events", "--kind", "image", "-o", "json"]
    assert admin_cli.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["kind"], x["subject"]) for x in lines] == [
        ("image.added", "img"),  # the site's
        ("image.added", "tools:1"),
    ]


def test_a_kind_named_many_times_filters_as_named_once(ready_site: Site) -> None:
    """Each kind given made two terms of the query, and SQLite refuses an expression tree
    deeper than 1,000: a filter naming known kinds a few hundred times over, which any
    user may send to WatchWorkspaceEvents, was an INTERNAL error."""
    site = ready_site
    ws = site.stubs.create(name="many")
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)

    def of_many(kinds: list[str]) -> list[int]:
        req = workspaces_pb2.WatchWorkspaceEventsRequest(id="many", kinds=kinds)
        return [e.id for e in site.stubs.ws.WatchWorkspaceEvents(req)]

    once = of_many(["workspace.state", "trust"])
    assert once
    assert of_many(["workspace.state", "trust"] * 500) == once
    req = admin_pb2.WatchEventsRequest(kinds=["workspace.state", "trust"] * 500, workspace="many")
    assert [e.id for e in site.stubs.admin.WatchEvents(req)] == once


def test_a_followed_filter_streams_only_what_it_matches(ready_site: Site) -> None:
    site = ready_site
    with following(site, 0.0, EventFilter(kinds=("image",))) as got:
        site.stubs.create(name="unwanted")
        site.stubs.import_image("later:1", b"l" * 4096)
        wait_for(lambda: any(e.subject == "later:1" for e in got), what="the image's event")
    assert {e.kind for e in got} == {"image.added"}  # the create's events were not sent


def test_ws_events_shows_one_workspaces_events_and_follows_them(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws events NAME`: what happened to that workspace (and nothing of another), by
    whom; --follow then prints what happens next; an unknown one is not found."""
    site = ready_site
    alpha, beta = (site.stubs.create(name=n) for n in ("alpha", "beta"))
    for w in (alpha, beta):
        site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)

    def ws_cli(*argv: str) -> int:
        return ws_main(["--service", site.address, *argv])

    capsys.readouterr()
    assert ws_cli("events", "alpha", "-o", "json") == 0
    mine = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {e["workspace_id"] for e in mine} == {alpha.id}
    assert ("workspace.created", "user:local") in {(e["kind"], e["who"]) for e in mine}
    assert ("trust.decision", "node:node1") in {(e["kind"], e["who"]) for e in mine}
    assert [e["state"] for e in mine if e["kind"] == "workspace.state"][-1] == "RUNNING"
    assert ws_cli("events", alpha.id) == 0  # by id too; one line each
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(mine) and all(
        f"workspace {alpha.id}" in x or f"({alpha.id})" in x for x in lines
    )
    assert ws_cli("events", "nobody") != 0
    assert "nobody" in capsys.readouterr().err
    # --kind: only those kinds (or families) of its events.
    assert (
        ws_cli("events", "alpha", "--kind", "workspace.state", "--kind", "trust", "-o", "json") == 0
    )
    some = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert some == [e for e in mine if e["kind"] in ("workspace.state", "trust.decision")]
    assert {e["kind"] for e in some} == {"workspace.state", "trust.decision"}
    assert ws_cli("events", "alpha", "--kind", "state") == 2  # said before asking
    assert "unknown event kind(s) 'state'" in capsys.readouterr().err

    got: list[SiteEvent] = []
    with Client(site.address) as c:
        stream = c.watch_workspace_events("alpha", time.time() - 1, follow=True, timeout_s=30)

        def read() -> None:
            for e in stream:
                got.append(e)
                if e.state == "STOPPED":
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=beta.id))
        site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=alpha.id))
        t.join(30)
        stream.close()
    assert got and got[-1].state == "STOPPED"
    assert {e.workspace_id for e in got} == {alpha.id}


def test_node_down_and_drain_are_events(tmp_path: Path) -> None:
    site = Site(tmp_path, node_grace_s=2)
    try:
        site.stubs.network()
        site.add_agent("n1")
        site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="n1"))
        site.stop_agent("n1")
        evs = wait_for(
            lambda: (e := events(site)) and any(x.state == "DOWN" for x in e) and e,
            timeout_s=30,
            what="node DOWN",
        )
        nodes = [(e.kind, e.previous, e.state, e.who) for e in evs if e.node == "n1"]
        assert ("node.state", "READY", "DRAINING", "user:local") in nodes
        down = next(e for e in evs if e.state == "DOWN")
        assert down.who == "system"
        # A time a reader can read, not seconds since 1970.
        assert re.fullmatch(r"no heartbeat since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", down.reason)
    finally:
        site.close()


def test_retention_keeps_the_newest_events(tmp_path: Path) -> None:
    from dataclasses import replace

    from workspace.ops import site_events

    site = Site(tmp_path, event_retention="3")
    try:
        site.stubs.network()
        for i in range(3):
            site.add_agent(f"n{i}")
        site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="n0"))
        site.stubs.admin.EnableNode(admin_pb2.NodeRef(name="n0"))
        assert site.service is not None
        env = site.service.env
        before = events(site)
        assert [e.kind for e in before][:1] == ["network.created"] and len(before) == 6
        assert site_events.prune(env) == 3
        assert [e.id for e in events(site)] == [e.id for e in before[-3:]]
        # a duration: everything older goes, but the newest event (whatever its time):
        # SQLite would give its id to the next one, and a follower resuming after it
        # (after_id) would not be sent that one
        later = replace(env, cfg=replace(env.cfg, event_retention="1m"), clock=lambda: 1e12)
        assert site_events.prune(later) == 2
        assert [e.id for e in events(site)] == [before[-1].id]
        site.stubs.admin.DrainNode(admin_pb2.NodeRef(name="n1"))
        req = codec_events.watch_request_to_proto(0.0, False, after_id=before[-1].id)
        resumed = [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]
        assert [(e.kind, e.node) for e in resumed] == [("node.state", "n1")]
    finally:
        site.close()


def test_an_image_over_the_repository_quota_is_a_quota_refusal(tmp_path: Path) -> None:
    site = Site(tmp_path, limits={"repo_quota_bytes_per_user": 3 * 1024 * 1024})
    try:
        site.stubs.import_image("a", b"a" * 2 * 1024 * 1024)
        with pytest.raises(grpc.RpcError) as err:
            site.stubs.import_image("b", b"b" * 2 * 1024 * 1024)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Refused as its blob was sent (sent blobs count): the event names the blob.
        (refused,) = [e for e in events(site) if e.kind == "quota.refused"]
        assert refused.subject == digests.of_bytes(b"b" * 2 * 1024 * 1024)
        assert refused.state == "quota"
        assert "repository quota of local exceeded" in refused.reason
    finally:
        site.close()


def test_an_images_life_is_in_the_site_events(ready_site: Site) -> None:
    """Added (where, who sees it, what it is made of), made private and public again (a
    change to what it was already is none), deleted: each by its caller, one line each
    in `ws-admin events`."""
    site = ready_site
    site.stubs.import_image("tools:1", b"t" * 4096)  # an admin's, outside any project
    for public in (True, False, True):
        site.stubs.images.SetImagePublic(
            images_pb2.SetImagePublicRequest(name="tools:1", public=public)
        )
    site.stubs.images.DeleteImage(images_pb2.GetImageRequest(name="tools:1"))
    mine = [e for e in events(site) if e.subject == "tools:1"]
    about = "no project, public; partitions root (cow)"
    assert [(e.kind, e.reason) for e in mine] == [
        ("image.added", about),
        ("image.updated", "public -> private"),
        ("image.updated", "private -> public"),
        ("image.deleted", about),
    ]
    assert {e.who for e in mine} == {"user:local"}
    assert not any(e.workspace_id or e.node for e in mine)
    line = event_cmds.line(mine[-1])
    assert line.split("  ")[1:4] == ["image.deleted", "image tools:1", f"by user:local: {about}"]


def test_lease_warning_and_expiry_are_events(tmp_path: Path) -> None:
    site = Site(tmp_path, lease_check_interval_s=0.2, lease_warning_s=2)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        ws = site.stubs.create(name="short", lease_s=3)
        site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_STOPPED, timeout_s=30)
        evs = [e for e in events(site) if e.workspace_id == ws.id]
        kinds_ = [e.kind for e in evs]
        assert kinds_.index("lease.warning") < kinds_.index("lease.expired")
        expired = next(e for e in evs if e.kind == "lease.expired")
        assert expired.who == "system" and expired.state == "stop"
        assert expired.reason.startswith("lease expired at ")
        stopping = next(e for e in evs if e.kind == "workspace.state" and e.state == "STOPPING")
        assert stopping.who == "system" and stopping.reason.startswith("lease expired at ")
    finally:
        site.close()


def test_a_reboot_leaves_an_event_with_who_asked(ready_site: Site) -> None:
    """A reboot keeps the workspace RUNNING, so no workspace.state event tells it: it has
    an event of its own, with who asked it (`ws events NAME --kind workspace.reboot`)."""
    site = ready_site
    ws = site.stubs.create(name="r1", memory_mib=64)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    for _ in range(2):
        site.stubs.ws.RebootWorkspace(workspaces_pb2.WorkspaceRef(id=ws.id))
    req = workspaces_pb2.WatchWorkspaceEventsRequest(id="r1", kinds=["workspace.reboot"])
    evs = [codec_events.event_from_proto(p) for p in site.stubs.ws.WatchWorkspaceEvents(req)]
    assert [(e.workspace_name, e.who) for e in evs] == [("r1", "user:local")] * 2
    assert ["reboot 1" in evs[0].reason, "reboot 2" in evs[1].reason] == [True, True]


def test_a_pause_and_the_resume_withdrawing_it_each_say_who_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pause or resume leaves the state as it is until the node reports it carried
    out (and that workspace.state event is the node's), so neither request left any trace
    of who asked: a pause withdrawn by a resume before its node paused left none at all.
    Each now has an event with who asked, which the owner's `ws events` shows; the
    resume's says it withdrew the pause."""
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"))
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.stubs.images.SetImagePublic(images_pb2.SetImagePublicRequest(name="img", public=True))
        site.add_agent("node1")
        projects = projects_pb2_grpc.ProjectsStub(site.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="physics"))
        projects.AddProjectUser(projects_pb2.ProjectUserRequest(project="physics", user="bob"))
        alice = site.identity("alice", projects=("physics",))
        w = alice.create(name="shared", memory_mib=64, project="physics")
        alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        ref = workspaces_pb2.WorkspaceRef(id=w.id)
        bob = site.identity("bob")
        bob.ws.PauseWorkspace(ref)  # carried out: the PAUSED state is the node's event
        alice.wait_state(w.id, WS.WORKSPACE_STATE_PAUSED)
        alice.ws.ResumeWorkspace(ref)
        alice.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
        site.stop_agent("node1")  # the next pause is not carried out meanwhile
        bob.ws.PauseWorkspace(ref)
        site.identity("root", admin=True).ws.ResumeWorkspace(ref)
        # The node may have paused it: PAUSED, being resumed, until it reports.
        now = alice.get(w.id)
        assert (now.state, now.desired_state) == (
            WS.WORKSPACE_STATE_PAUSED,
            common_pb2.DESIRED_STATE_RUNNING,
        )

        owner = ["--service", site.address, "--identity", str(site.pki.user("alice"))]
        capsys.readouterr()
        assert ws_main([*owner, "events", "shared", "--kind", "workspace", "-o", "json"]) == 0
        mine = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        paused = [
            e["who"] for e in mine if e["kind"] == "workspace.state" and e["state"] == "PAUSED"
        ]
        assert paused == ["node:node1", "user:root"]
        asked = [
            (e["kind"], e["who"], e["reason"])
            for e in mine
            if e["kind"] in ("workspace.pause", "workspace.resume")
        ]
        assert asked[:3] == [
            ("workspace.pause", "user:bob", "pause of the workspace asked"),
            ("workspace.resume", "user:alice", "resume of the workspace asked"),
            ("workspace.pause", "user:bob", "pause of the workspace asked"),
        ]
        assert asked[3][:2] == ("workspace.resume", "user:root") and len(asked) == 4
        assert asked[3][2].startswith("resume asked: it withdrew the pause asked before")
        assert ws_main([*owner, "events", "shared", "--kind", "workspace.resume"]) == 0
        text = capsys.readouterr().out
        assert "workspace.resume  workspace shared" in text and "by user:root: resume asked" in text
    finally:
        site.close()
