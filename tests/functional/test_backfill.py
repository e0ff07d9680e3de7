"""Backfill over the real service and a fake-driver node (docs/design/backfill.md).

Most tests drive the leader's passes by hand (``Backfiller.run``; the loop's interval is
an hour there), so what each pass does is exact; one test leaves it to the loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site, SitePki, TlsSite, wait_for
from tests.functional.test_projects_cli import run
from workspace.cli import admin
from workspace.domain.backfill import BackfillSpec
from workspace.domain.tenancy import BACKFILL_OWNER
from workspace.errors import WorkspaceError
from workspace.ops.backfill import Backfiller, Stale
from workspace.store import Workspace
from workspace.v1 import (
    admin_pb2,
    common_pb2,
    projects_pb2,
    projects_pb2_grpc,
    usage_pb2,
    workspaces_pb2,
)


@pytest.fixture
def bsite(tmp_path: Path) -> Iterator[Site]:
    """One node of 8 vCPUs (32 with the default overcommit) and 16 GiB (not overcommitted),
    the default network, image `img`; no loop passes."""
    s = Site(tmp_path, backfill_interval_s=3600.0)
    try:
        s.stubs.network()
        s.stubs.import_image("img")
        s.add_agent("node1")
        yield s
    finally:
        s.close()


def fill(site: Site) -> int:
    """One backfill pass, as the leader's loop runs it."""
    assert site.service is not None
    return Backfiller(site.service.env).run()


def set_(site: Site, image: str = "img", **kw: Any) -> admin_pb2.BackfillEntry:
    return site.stubs.admin.SetBackfill(admin_pb2.BackfillEntry(image=image, **kw))


def entries(site: Site) -> list[admin_pb2.BackfillEntry]:
    return list(site.stubs.admin.ListBackfill(admin_pb2.ListBackfillRequest()).entries)


def everything(site: Site) -> list[common_pb2.Workspace]:
    req = workspaces_pb2.ListWorkspacesRequest(all_users=True)
    return list(site.stubs.ws.ListWorkspaces(req).workspaces)


def backfill_live(site: Site) -> list[common_pb2.Workspace]:
    return sorted(
        (
            w
            for w in everything(site)
            if w.owner == BACKFILL_OWNER
            and w.state != WS.WORKSPACE_STATE_TERMINATED
            and w.desired_state != common_pb2.DESIRED_STATE_TERMINATED
        ),
        key=lambda w: w.name,
    )


def refused(fn: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def test_fills_up_to_max_and_no_more(bsite: Site) -> None:
    e = set_(bsite, max=3, cpus=2, memory_mib=1024, grace_s=7)
    assert (e.max, e.cpus, e.memory_mib, e.grace_s, e.owner, e.live) == (
        3,
        2,
        1024,
        7,
        BACKFILL_OWNER,
        0,
    )
    assert fill(bsite) == 3
    assert fill(bsite) == 0  # full: a pass changes nothing
    made = backfill_live(bsite)
    assert [w.name for w in made] == ["backfill-img-1", "backfill-img-2", "backfill-img-3"]
    for w in made:
        assert w.preemptible and (w.cpus, w.memory_mib) == (2, 1024)
        bsite.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    [listed] = entries(bsite)
    assert (listed.live, listed.running) == (3, 3)


def test_the_grace_of_the_entry_is_the_workspaces_and_no_lease(bsite: Site) -> None:
    projects = projects_pb2_grpc.ProjectsStub(bsite.stubs.channel)
    projects.CreateProject(projects_pb2.Project(name="grid", default_lease_s=3600))
    set_(bsite, max=1, grace_s=42, project="grid")
    assert fill(bsite) == 1
    assert bsite.service is not None
    with bsite.service.store.read() as s:  # preempt_grace_s is not in the API (yet)
        rows = [w for w in s.query(Workspace).all() if w.owner == BACKFILL_OWNER]
        assert [(w.preemptible, w.preempt_grace_s) for w in rows] == [(True, 42)]
        # The project's lease does not apply: the site keeps it while the entry wants it.
        assert [w.lease_expires_at for w in rows] == [0.0]


def test_only_idle_capacity_is_used(bsite: Site) -> None:
    bsite.stubs.create(name="real", memory_mib=8192)
    set_(bsite, max=10, memory_mib=2048)
    [node] = bsite.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
    room = (node.memory_mib - node.used_memory_mib) // 2048  # memory is not overcommitted
    assert 1 <= room < 10
    assert fill(bsite) == room
    assert fill(bsite) == 0  # nothing changed: not tried again
    assert len(backfill_live(bsite)) == room
    names = {w.name for w in everything(bsite)}
    assert "real" in names


def test_entries_share_the_idle_capacity(bsite: Site) -> None:
    """Two entries that each want more than fits share what is idle (one create each in
    turn), rather than the first in the store's order (on PostgreSQL, whichever row was
    updated least recently) taking all of it."""
    bsite.stubs.import_image("img2")
    for image in ("img", "img2"):
        set_(bsite, image=image, max=10, memory_mib=2048)
    made = fill(bsite)
    assert 2 <= made < 20
    by_image = [len([w for w in backfill_live(bsite) if w.image == i]) for i in ("img", "img2")]
    assert sum(by_image) == made
    assert abs(by_image[0] - by_image[1]) <= 1, by_image
    assert fill(bsite) == 0


def test_backfill_never_takes_the_node_the_head_of_the_queue_holds(bsite: Site) -> None:
    bsite.add_agent("node2")  # as node1: 8 vCPUs, 16 GiB
    bsite.stubs.create(name="small", memory_mib=4096)
    assert bsite.stubs.get("small").node == "node1"
    bsite.stubs.create(name="small2", memory_mib=5000)  # pack: node1 has 12 GiB free
    assert bsite.stubs.get("small2").node == "node1"
    other = bsite.stubs.create(name="other", memory_mib=8000)  # too big for node1 now
    assert other.node == "node2"
    # Needs most of a node: it waits for capacity, and holds node2, the closer to fitting
    # it (8.1 GiB free, against node1's 7).
    waiting = bsite.stubs.create(name="big", memory_mib=13000, wait_for_capacity_s=600)
    assert waiting.state == WS.WORKSPACE_STATE_PENDING
    [head] = bsite.stubs.admin.ListQueue(admin_pb2.ListQueueRequest()).entries
    assert list(head.holds) == ["node2"]
    set_(bsite, max=3, memory_mib=1024)
    assert fill(bsite) == 3  # idle capacity is used meanwhile, on node1 only
    assert {w.node for w in backfill_live(bsite)} == {"node1"}
    assert bsite.stubs.get("big").state == WS.WORKSPACE_STATE_PENDING
    # The create's own transaction checks it too: node2 is never taken.
    assert bsite.service is not None
    spec = BackfillSpec("img", 20, 1, 1024, ("default",), 0, "")
    set_(bsite, max=20, memory_mib=1024)
    for _ in range(20):
        try:
            Backfiller(bsite.service.env).create_one(spec)
        except WorkspaceError as exc:
            assert "1 node(s) are held for the request waiting at the head" in exc.message
            break
    assert {w.node for w in backfill_live(bsite)} == {"node1"}
    # Once `other` is gone, big fits on node2 (which nothing took meanwhile): placed there.
    bsite.stubs.ws.DestroyWorkspace(bsite.stubs.ref(other.id))
    bsite.stubs.wait_state(waiting.id, WS.WORKSPACE_STATE_RUNNING, timeout_s=30)
    assert bsite.stubs.get("big").node == "node2"


def test_lowering_max_destroys_the_newest_extras(bsite: Site) -> None:
    set_(bsite, max=3)
    assert fill(bsite) == 3
    first = {w.name: w.id for w in backfill_live(bsite)}
    set_(bsite, max=1)
    assert [e.live for e in entries(bsite)] == [3]  # the next pass acts
    assert fill(bsite) == 2
    assert [w.name for w in backfill_live(bsite)] == ["backfill-img-1"]
    assert fill(bsite) == 0
    for name in ("backfill-img-2", "backfill-img-3"):
        bsite.stubs.wait_state(first[name], WS.WORKSPACE_STATE_TERMINATED)
    # Raised again: the names freed are used again.
    set_(bsite, max=2)
    assert fill(bsite) == 1
    assert [w.name for w in backfill_live(bsite)] == ["backfill-img-1", "backfill-img-2"]


def test_a_create_for_an_entry_changed_or_full_meanwhile_makes_nothing(bsite: Site) -> None:
    set_(bsite, max=1, memory_mib=512)
    assert fill(bsite) == 1
    assert bsite.service is not None
    filler = Backfiller(bsite.service.env)
    full = BackfillSpec("img", 1, 1, 512, ("default",), 0, "")
    changed = BackfillSpec("img", 2, 1, 256, ("default",), 0, "")  # not the stored one
    for spec in (full, changed):
        with pytest.raises(Stale):
            filler.create_one(spec)
    assert len(backfill_live(bsite)) == 1


def test_clear_destroys_every_workspace_of_the_entry(bsite: Site) -> None:
    set_(bsite, max=2)
    assert fill(bsite) == 2
    ids = [w.id for w in backfill_live(bsite)]
    gone = bsite.stubs.admin.ClearBackfill(admin_pb2.ClearBackfillRequest(image="img"))
    assert (gone.image, gone.live) == ("img", 2)
    assert entries(bsite) == []
    for wid in ids:
        bsite.stubs.wait_state(wid, WS.WORKSPACE_STATE_TERMINATED)
    assert fill(bsite) == 0
    why = refused(
        lambda: bsite.stubs.admin.ClearBackfill(admin_pb2.ClearBackfillRequest(image="img")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "no backfill entry for image 'img'" in why


@pytest.mark.parametrize(
    ("entry", "code", "message"),
    [
        ({"image": "nope", "max": 1}, grpc.StatusCode.NOT_FOUND, "image 'nope' not found"),
        ({"image": "img", "max": -1}, grpc.StatusCode.INVALID_ARGUMENT, "--max must be 0 or more"),
        ({"image": "img", "max": 1, "cpus": 999}, grpc.StatusCode.INVALID_ARGUMENT, "cpus must"),
        (
            {"image": "img", "max": 1, "memory_mib": 10**9},
            grpc.StatusCode.INVALID_ARGUMENT,
            "memory_mib must",
        ),
        (
            {"image": "img", "max": 1, "networks": ["nonet"]},
            grpc.StatusCode.NOT_FOUND,
            "network 'nonet' does not exist",
        ),
        (
            {"image": "img", "max": 1, "project": "noproj"},
            grpc.StatusCode.NOT_FOUND,
            "project 'noproj' does not exist",
        ),
        ({"image": "img", "max": 1, "grace_s": -5}, grpc.StatusCode.INVALID_ARGUMENT, "--grace"),
        ({"image": "", "max": 1}, grpc.StatusCode.INVALID_ARGUMENT, "an image is required"),
    ],
)
def test_bad_entries_are_refused_and_nothing_is_stored(
    bsite: Site, entry: dict[str, Any], code: grpc.StatusCode, message: str
) -> None:
    set_(bsite, max=1, cpus=1)  # an entry that stays as it was
    why = refused(lambda: bsite.stubs.admin.SetBackfill(admin_pb2.BackfillEntry(**entry)), code)
    assert message in why
    [kept] = entries(bsite)
    assert (kept.image, kept.max, kept.cpus) == ("img", 1, 1)


def test_entries_survive_a_restart(bsite: Site) -> None:
    set_(bsite, max=2, cpus=2, grace_s=3)
    assert fill(bsite) == 2
    bsite.stop_service()
    bsite.start_service()
    [e] = wait_for(lambda: entries(bsite), what="the entry after the restart")
    assert (e.image, e.max, e.cpus, e.grace_s, e.live) == ("img", 2, 2, 3, 2)
    assert fill(bsite) == 0


def test_the_preemptible_quota_of_the_entrys_project_bounds_it(bsite: Site) -> None:
    projects = projects_pb2_grpc.ProjectsStub(bsite.stubs.channel)
    projects.CreateProject(
        projects_pb2.Project(
            name="grid", quota=projects_pb2.Quota(preemptible_instances=2, instances=1)
        )
    )
    set_(bsite, max=5, project="grid")
    assert fill(bsite) == 2
    assert {w.project for w in backfill_live(bsite)} == {"grid"}
    # They do not count against the normal quota: a normal workspace still fits it.
    assert bsite.stubs.create(name="normal", project="grid").project == "grid"


def test_the_loop_fills_on_its_own(tmp_path: Path) -> None:
    site = Site(tmp_path, backfill_interval_s=0.1)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        set_(site, max=2)
        wait_for(lambda: [e.running for e in entries(site)] == [2], what="2 backfill running")
    finally:
        site.close()


def test_only_admins_see_or_touch_backfill_workspaces(tmp_path: Path) -> None:
    site = TlsSite(tmp_path / "site", SitePki(tmp_path / "pki"), backfill_interval_s=3600.0)
    try:
        site.stubs.network()
        site.stubs.import_image("img")
        site.add_agent("node1")
        projects = projects_pb2_grpc.ProjectsStub(site.stubs.channel)
        projects.CreateProject(projects_pb2.Project(name="grid"))
        set_(site, max=1, project="grid")
        assert fill(site) == 1
        [made] = backfill_live(site)  # the admin sees it
        member = site.identity("alice", projects=("grid",))
        listed = member.ws.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
        assert list(listed) == []
        for ref in (made.id, made.name):
            why = refused(lambda r=ref: member.get(r), grpc.StatusCode.NOT_FOUND)
            assert "no workspace" in why
            refused(
                lambda r=ref: member.ws.DestroyWorkspace(member.ref(r)), grpc.StatusCode.NOT_FOUND
            )
        refused(
            lambda: member.admin.ListBackfill(admin_pb2.ListBackfillRequest()),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert [w.id for w in backfill_live(site)] == [made.id]  # untouched
        # Their usage too: the member's report has their own workspace, not the site's
        # backfill charged to their project, by workspace, user or project alike.
        member.create(name="mine", project="grid")
        for by in (usage_pb2.USAGE_GROUPING_WORKSPACE, usage_pb2.USAGE_GROUPING_USER):
            rows = member.ws.GetUsage(usage_pb2.GetUsageRequest(by=by)).rows
            assert made.id not in {r.key for r in rows} and made.name not in {r.name for r in rows}
            assert BACKFILL_OWNER not in {r.owner for r in rows} | {r.key for r in rows}
        [mine] = member.ws.GetUsage(usage_pb2.GetUsageRequest()).rows
        assert (mine.name, mine.owner) == ("mine", "alice")
        by_project = usage_pb2.GetUsageRequest(by=usage_pb2.USAGE_GROUPING_PROJECT)
        [grid] = member.ws.GetUsage(by_project).rows
        assert grid.preemptible_memory_gib_hours == 0  # alice's normal workspace only
        # An admin's report has everything.
        every = site.stubs.admin.GetUsage(usage_pb2.GetUsageRequest()).rows
        assert {r.key for r in every} >= {made.id, mine.key}
    finally:
        site.close()


def test_backfill_on_the_command_line(bsite: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        admin, bsite, capsys,
        "backfill", "set", "img", "--max", "2", "--cpus", "2", "--memory-mib", "1024",
        "--network", "default", "--grace", "5",
    )  # fmt: skip
    assert code == 0, err
    assert "backfill img: at most 2 preemptible workspace(s)" in out
    assert fill(bsite) == 2
    code, out, _ = run(admin, bsite, capsys, "backfill", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["IMAGE", "MAX", "LIVE", "RUNNING"]
    assert row.split()[:3] == ["img", "2", "2"] and "default" in row and "5s" in row
    code, out, _ = run(admin, bsite, capsys, "-o", "json", "backfill", "list")
    [e] = json.loads(out)
    assert (e["image"], e["max"], e["live"], e["grace_s"]) == ("img", 2, 2, 5)
    assert e["owner"] == BACKFILL_OWNER and e["networks"] == ["default"]
    # A change of --max alone keeps the rest of the entry (it once reset them silently).
    assert run(admin, bsite, capsys, "backfill", "set", "img", "--max", "1")[0] == 0
    [e] = [x for x in entries(bsite) if x.image == "img"]
    assert (e.max, e.cpus, e.memory_mib, e.grace_s, list(e.networks)) == (
        1,
        2,
        1024,
        5,
        ["default"],
    )
    # Bad input: argparse (exit 2) or the service (exit 1), each saying why.
    code, _, err = run(admin, bsite, capsys, "backfill", "set", "img", "--max", "-1")
    assert code == 2 and "must be 0 or more" in err
    code, _, err = run(admin, bsite, capsys, "backfill", "set", "nope", "--max", "1")
    assert code == 1 and "image 'nope' not found" in err
    code, _, err = run(admin, bsite, capsys, "backfill", "clear", "nope")
    assert code == 1 and "no backfill entry for image 'nope'; `ws-admin backfill list` shows" in err
    assert [x.max for x in entries(bsite)] == [1]  # unchanged
    code, out, _ = run(admin, bsite, capsys, "-o", "json", "backfill", "clear", "img")
    assert code == 0 and json.loads(out)["live"] == 2
    code, out, err = run(admin, bsite, capsys, "backfill", "list")
    assert code == 0 and out == "" and "no backfill entries" in err


def test_a_real_request_takes_the_place_of_backfill_at_once(bsite: Site) -> None:
    """Backfill fills the node; a normal create that does not fit preempts the fewest
    backfill VMs (grace 0: forced off at once), runs, and is never double-booked."""
    set_(bsite, max=8, cpus=1, memory_mib=3072, grace_s=0)
    while fill(bsite):
        pass
    filled = backfill_live(bsite)
    assert len(filled) >= 4  # 16 GiB: as many 3 GiB VMs as fit with their overhead
    wait_for(
        lambda: all(w.state == WS.WORKSPACE_STATE_RUNNING for w in backfill_live(bsite)),
        what="backfill RUNNING",
    )
    ws = bsite.stubs.ws.CreateWorkspace(
        workspaces_pb2.CreateWorkspaceRequest(name="real", image="img", memory_mib=4096)
    )
    assert ws.node == "node1"
    wait_for(
        lambda: (
            bsite.stubs.ws.GetWorkspace(workspaces_pb2.WorkspaceRef(id=ws.id)).state
            == WS.WORKSPACE_STATE_RUNNING
        ),
        what="the real request RUNNING",
    )
    listed = bsite.stubs.ws.ListWorkspaces(
        workspaces_pb2.ListWorkspacesRequest(all_users=True, include_terminated=True)
    ).workspaces
    gone = [
        w for w in listed if w.owner == BACKFILL_OWNER and w.state == WS.WORKSPACE_STATE_TERMINATED
    ]
    assert len(gone) == 2  # 4 GiB + overhead needs two 3 GiB VMs' place, no more
    assert all(w.reason.startswith("PREEMPTED") for w in gone)
    node = bsite.stubs.admin.ListNodes(admin_pb2.ListNodesRequest()).nodes[0]
    assert node.used_memory_mib <= node.memory_mib


def test_an_image_a_backfill_entry_names_is_not_deleted(bsite: Site) -> None:
    """With no backfill workspace live (max 0, or all preempted), the image's delete
    went through: the entry stayed, its creates failed every pass unseen, and a new image
    pushed under the name later was run in its place. Refused, saying how to end it."""
    from workspace.v1 import images_pb2

    set_(bsite, max=0)
    delete = images_pb2.GetImageRequest(name="img")
    why = refused(
        lambda: bsite.stubs.images.DeleteImage(delete), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert why == (
        "image img is run by the site's backfill (an admin's `ws-admin backfill clear img` "
        "ends it); delete it after"
    )
    assert [e.image for e in entries(bsite)] == ["img"]
    bsite.stubs.admin.ClearBackfill(admin_pb2.ClearBackfillRequest(image="img"))
    assert bsite.stubs.images.DeleteImage(delete).name == "img"
