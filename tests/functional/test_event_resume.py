"""Following site events across a service restart: the follower goes on after the last
event it was given, by id (commit order), so an event committed late with an older time
(a node's trust records keep the node's clock) is given, and none is given twice, on
one service and on two replicas of one PostgreSQL; a follower "from now" is sent what
commits later whatever its time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.functional.harness import WS, Site, wait_for
from workspace import errors
from workspace.cli import admin as admin_cli
from workspace.cli.ws import main as ws_main
from workspace.client import Client
from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.node.v1 import nodes_pb2
from workspace.v1 import admin_pb2, clusters_pb2, trust_pb2, workspaces_pb2

LATE = "late-from-node1"


def all_events(site: Site) -> list[SiteEvent]:
    req = codec_events.watch_request_to_proto(0.0, False)
    return [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]


def answers(address: str) -> bool:
    try:
        with Client(address) as c:
            c.health()
        return True
    except Exception:
        return False


def report_late_audit(site: Site, hours_ago: float, workspace_id: str = "") -> None:
    """A trust decision node1 took ``hours_ago`` and reports only now (as a node cut off
    for a while does): its event keeps the node's time."""
    at = Timestamp()
    at.FromSeconds(int(time.time() - hours_ago * 3600))
    entry = trust_pb2.AuditEntry(
        at=at, action="boot", image="img", verdict="warn", reason=LATE, workspace_id=workspace_id
    )
    site.stubs.nodes.ReportStatus(nodes_pb2.ReportStatusRequest(node="node1", audit=[entry]))


Watch = Callable[[Client, Callable[[str], None]], Iterator[SiteEvent]]


def follow_across_a_restart(site: Site, watch: Watch, until: str) -> list[SiteEvent]:
    """What ``watch`` gives a follower while the service restarts, a late node record
    arrives and a workspace named ``until`` is then created (the last event it reads)."""
    seen: list[SiteEvent] = []
    outages: list[str] = []
    done = threading.Event()

    def follow() -> None:
        with Client(site.address) as c:
            for e in watch(c, outages.append):
                seen.append(e)
                if e.workspace_name == until and e.kind == "workspace.created":
                    break
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: any(e.workspace_name == "before" for e in seen), what="the history")
    assert site.service is not None
    site.service.stop(2.0)
    site.service = None
    wait_for(lambda: outages, what="the outage noticed")
    site.start_service()
    wait_for(lambda: answers(site.address), what="the service back")
    # Whether the follower is back before these commit or after, it is given them: it
    # resumes after the last id it read (it is told it is back only once an event comes).
    report_late_audit(site, hours_ago=1.0)
    with Client(site.address) as c:
        c.create_workspace("img", name=until, memory_mib=64)
    assert done.wait(30), f"the last event never came: {seen[-3:]}, {outages}"
    assert outages[-1] == "", outages
    return seen


def test_a_follower_sees_every_event_once_across_a_restart(ready_site: Site) -> None:
    site = ready_site
    site.stubs.create(name="before", memory_mib=64)
    seen = follow_across_a_restart(
        site,
        lambda c, told: c.watch_events(follow=True, reconnect=True, on_outage=told),
        "after",
    )
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids)), ids  # in order, none twice
    late = [e for e in seen if LATE in e.reason]
    assert len(late) == 1, [(e.id, e.kind, e.reason) for e in seen[-6:]]
    assert late[0].at < time.time() - 3000  # the node's time: older than those before it
    # Every event the journal has up to the last one read, exactly once.
    journal = [e.id for e in all_events(site) if e.id <= ids[-1]]
    assert ids == journal


def test_a_workspace_follower_resumes_after_its_last_event(ready_site: Site) -> None:
    site = ready_site
    ws = site.stubs.create(name="before", memory_mib=64)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    with Client(site.address) as c:
        first = list(c.watch_workspace_events("before"))
    # The stream resumed after an id gives what came after it, whatever its time.
    report_late_audit(site, hours_ago=2.0, workspace_id=ws.id)
    site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=ws.id))
    req = codec_events.subject_watch_to_proto(
        workspaces_pb2.WatchWorkspaceEventsRequest, "before", 0.0, False, (), first[-1].id
    )
    rest = [codec_events.event_from_proto(p) for p in site.stubs.ws.WatchWorkspaceEvents(req)]
    assert [e.kind for e in rest][:2] == ["trust.decision", "workspace.state"], rest
    assert LATE in rest[0].reason and rest[0].at < first[-1].at
    assert rest[1].who == "user:local" and rest[1].state == "STOPPING"


def test_a_follower_from_now_is_sent_a_late_record_older_than_now(ready_site: Site) -> None:
    """`ws-admin events --follow --since now`: the time picks where the stream starts;
    what commits later is sent whatever its time (a node's record of an hour ago)."""
    site = ready_site
    seen: list[SiteEvent] = []
    done = threading.Event()

    def follow() -> None:
        with Client(site.address) as c:
            for e in c.watch_events(since=time.time(), follow=True):
                seen.append(e)
                if e.workspace_name == "after" and e.kind == "workspace.created":
                    break
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    site.stubs.create(name="first", memory_mib=64)
    wait_for(lambda: any(e.workspace_name == "first" for e in seen), what="the follower")
    report_late_audit(site, hours_ago=1.0)
    site.stubs.create(name="after", memory_mib=64)
    assert done.wait(30), f"the last event never came: {seen[-3:]}"
    assert len([e for e in seen if LATE in e.reason]) == 1, seen


def test_on_two_replicas_a_follower_that_fails_over_misses_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL, two replicas: ids are taken under the site's write lock, held until
    commit, so they are the order of commits whichever replica wrote. A follower of
    replica A, with writes going on through both, goes on through B when A dies, sent
    every event once, a node's late one (reported to B) too."""
    sites: list[Site] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            sites.append(Site(tmp_path / name, database_url=pg_url, data_dir=str(tmp_path / "d")))
        a, b = sites
        a.stubs.network()
        a.stubs.import_image("img")
        b.add_agent("node1")
        a.stubs.create(name="before", memory_mib=64)
        seen: list[SiteEvent] = []
        outages: list[str] = []
        done = threading.Event()

        def follow() -> None:
            with Client(f"{a.address},{b.address}") as c:
                for e in c.watch_events(follow=True, reconnect=True, on_outage=outages.append):
                    seen.append(e)
                    if e.workspace_name == "after" and e.kind == "workspace.created":
                        break
            done.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_for(lambda: any(e.workspace_name == "before" for e in seen), what="the history")

        def writes(site: Site, prefix: str) -> None:
            for i in range(4):
                site.stubs.create(name=f"{prefix}{i}", memory_mib=16)

        both = [threading.Thread(target=writes, args=(s, p)) for s, p in ((a, "x"), (b, "y"))]
        for t in both:
            t.start()
        for t in both:
            t.join()
        wait_for(lambda: any(e.workspace_name == "x3" for e in seen), what="the writes")
        a.stop_service()
        wait_for(lambda: outages, what="the outage noticed")
        report_late_audit(b, hours_ago=1.0)
        b.stubs.create(name="after", memory_mib=64)
        assert done.wait(30), f"the last event never came: {seen[-3:]}, {outages}"
        ids = [e.id for e in seen]
        assert ids == sorted(set(ids)), ids
        assert len([e for e in seen if LATE in e.reason]) == 1
        journal = [e.id for e in all_events(b) if e.id <= ids[-1]]
        assert ids == journal
    finally:
        for site in sites:
            site.close()


def test_a_script_goes_on_after_the_last_id_it_printed(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws-admin events -o json` prints each event's id; `--after ID` (also `ws events`)
    goes on after it: a script that stopped misses none (a node's late record too) and
    is given none twice."""
    site = ready_site
    ws = site.stubs.create(name="s1", memory_mib=64)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    base = ["--service", site.address]

    def printed(main: Callable[[list[str]], int], argv: list[str]) -> list[dict[str, object]]:
        assert main([*base, *argv, "-o", "json"]) == 0
        return [json.loads(x) for x in capsys.readouterr().out.splitlines()]

    first = printed(admin_cli.main, ["events"])
    last = int(str(first[-1]["id"]))
    report_late_audit(site, hours_ago=1.0, workspace_id=ws.id)
    site.stubs.create(name="s2", memory_mib=64)
    rest = printed(admin_cli.main, ["events", "--after", str(last)])
    every = [x["id"] for x in printed(admin_cli.main, ["events"])]
    assert [x["id"] for x in first + rest] == every[: len(first) + len(rest)]
    late = [x["reason"] for x in rest if x["kind"] == "trust.decision"]
    assert late[:1] == [f"boot: {LATE}"]
    mine = printed(ws_main, ["events", "s1", "--after", str(last)])
    assert [x["kind"] for x in mine] == ["trust.decision"]
    with pytest.raises(SystemExit) as both:
        admin_cli.main([*base, "events", "--after", "3", "--since", "1h"])
    assert both.value.code == 2


def test_a_resume_point_the_site_no_longer_has_is_refused_saying_where_to_start(
    ready_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--after ID` past the newest event (an id of a site restored from a backup, or
    made anew) waited in silence; after events the retention deleted it went on past
    them without a word. Both are refused (exit 1), saying where to start instead; a
    filtered stream, whose last id lies behind while it missed nothing, is not."""
    from dataclasses import replace

    from workspace.ops import site_events

    site = ready_site
    ws = site.stubs.create(name="s1", memory_mib=64)
    site.stubs.wait_state(ws.id, WS.WORKSPACE_STATE_RUNNING)
    base = ["--service", site.address]
    ids = [e.id for e in all_events(site)]
    newest = ids[-1]
    for argv in (
        ["events", "--after", str(newest + 5)],
        ["events", "--after", str(newest + 5), "--follow"],
    ):
        assert admin_cli.main([*base, *argv]) == 1
        err = capsys.readouterr().err
        assert f"no event has id {newest + 5}: the site's newest is {newest}" in err
    assert ws_main([*base, "events", "s1", "--after", str(newest + 5)]) == 1
    assert f"no event has id {newest + 5}" in capsys.readouterr().err

    s1_ids = [e.id for e in all_events(site) if e.workspace_id == ws.id]
    assert site.service is not None
    env = site.service.env
    kept = 2
    site_events.prune(replace(env, cfg=replace(env.cfg, event_retention=str(kept))))
    oldest = ids[-kept]
    assert [e.id for e in all_events(site)] == ids[-kept:]
    assert admin_cli.main([*base, "events", "--after", str(ids[0])]) == 1
    assert (
        f"the events after id {ids[0]} are no longer kept up to id {oldest - 1} "
        f"(event_retention deletes the oldest): the oldest kept is {oldest}; --after "
        f"{oldest - 1} goes on from it"
    ) in capsys.readouterr().err
    assert admin_cli.main([*base, "events", "--after", str(oldest - 1), "-o", "json"]) == 0
    got = [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()]
    assert got == ids[-kept:]
    # One workspace's: its last id lies behind the others' events, nothing refused.
    assert ws_main([*base, "events", "s1", "--after", str(s1_ids[0]), "-o", "json"]) == 0


def test_a_negative_resume_point_is_an_invalid_argument(ready_site: Site) -> None:
    """after_id below 0 was taken for 0 (unset): the whole journal was sent, while the API
    refuses every other negative count (page_size, tail_bytes, limit). All three event
    watches now refuse it, saying so."""
    s = ready_site.stubs
    ws = s.create(name="n1", memory_mib=64)
    s.clusters.CreateCluster(
        clusters_pb2.CreateClusterRequest(
            name="c1", members=[clusters_pb2.ClusterMember(role="w", image="img", memory_mib=64)]
        )
    )
    for call, req in (
        (s.admin.WatchEvents, admin_pb2.WatchEventsRequest(after_id=-1)),
        (
            s.ws.WatchWorkspaceEvents,
            workspaces_pb2.WatchWorkspaceEventsRequest(id=ws.id, after_id=-1),
        ),
        (
            s.clusters.WatchClusterEvents,
            clusters_pb2.WatchClusterEventsRequest(id="c1", after_id=-1),
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            list(call(req, timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "after_id must not be negative (0: not set), got -1"
    # 0 is unset: from the oldest kept.
    assert list(s.admin.WatchEvents(admin_pb2.WatchEventsRequest(), timeout=10))


def test_the_python_client_passes_a_negative_resume_point_on_to_be_refused(
    ready_site: Site,
) -> None:
    """The service refuses after_id below 0; the Python client made it 0 before sending
    (``max(0, after_id)``), so ``watch_events(after_id=-1)`` still gave a script the whole
    journal, silently, where a gRPC caller is told INVALID_ARGUMENT."""
    s = ready_site.stubs
    ws = s.create(name="n2", memory_mib=64)
    client = Client(ready_site.address)
    try:
        for events in (
            client.watch_events(after_id=-1),
            client.watch_workspace_events(ws.id, after_id=-1),
        ):
            with pytest.raises(errors.InvalidArgument) as refused:
                list(events)
            assert refused.value.message == "after_id must not be negative (0: not set), got -1"
    finally:
        client.close()
