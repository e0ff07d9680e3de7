"""`ws image save WORKSPACE NAME:VERSION`: a stopped workspace's disks become a new image
(real gRPC, fake-driver agents, real qemu-img on the node's real overlay files): what the
guest wrote is in the image, the image's other partitions are kept, a create's extra
disks are not, the workspace does not start while it is saved, and every refusal leaves
no image and a workspace that starts."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.functional.harness import WS, Site, wait_for
from workspace import client_images
from workspace.cli import render
from workspace.cli import ws as ws_cli
from workspace.client import Client
from workspace.codec import events as codec_events
from workspace.domain.events import SiteEvent
from workspace.node.v1 import nodes_pb2
from workspace.ops import save as ops_save
from workspace.store import Workspace
from workspace.v1 import common_pb2, images_pb2, projects_pb2, projects_pb2_grpc, workspaces_pb2

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-io") is None or shutil.which("qemu-img") is None,
    reason="needs qemu-img and qemu-io (qemu-utils)",
)

KIB = 1024
# The image's root: 64 KiB of "A", then zeros, 1 MiB in all.
ROOT = b"A" * 64 * KIB + b"\0" * (1024 - 64) * KIB
COW = common_pb2.PARTITION_MODE_COW
READONLY = common_pb2.PARTITION_MODE_READONLY
BLANK = common_pb2.PARTITION_MODE_BLANK


@pytest.fixture
def env_site(site: Site) -> Site:
    return with_env(site)


def with_env(site: Site) -> Site:
    """One node; image `env:1` with a cow root, a readonly reference disk and an ext4
    blank, taking a cloud-init seed; the node's task stream open."""
    site.stubs.network()
    root = site.stubs.upload(ROOT)
    ref = site.stubs.upload(b"R" * 128 * KIB)
    site.stubs.images.ImportImage(
        images_pb2.ImportImageRequest(
            name="env:1",
            context="nocloud",
            login_user="debian",
            partitions=[
                common_pb2.Partition(name="root", digest=root, format="raw", mode=COW),
                common_pb2.Partition(name="ref", digest=ref, format="raw", mode=READONLY),
                common_pb2.Partition(
                    name="scratch", mode=BLANK, virtual_size_bytes=8 * 1024 * KIB, ext4=True
                ),
            ],
        )
    )
    site.add_agent("node1")
    assert site.service is not None
    hub = site.service.hub
    wait_for(lambda: hub.connected("node1"), what="node1's task stream")
    return site


def stopped(site: Site, name: str, **kw: Any) -> common_pb2.Workspace:
    w = site.stubs.create(name=name, image=kw.pop("image", "env:1"), **kw)
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)
    site.stubs.ws.StopWorkspace(workspaces_pb2.StopWorkspaceRequest(id=w.id))
    return site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_STOPPED)


def overlay(site: Site, w: common_pb2.Workspace, disk: str = "root") -> Path:
    path = Path(site.agents[w.node].files.dir(w.id)) / f"{disk}.qcow2"
    assert path.is_file()
    return path


def guest_writes(path: Path, offset: int, pattern: int, length: int = 64 * KIB) -> None:
    """What a guest writing to its disk does to the overlay (qemu-io, as QEMU would)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def raw_content(path: Path, tmp: Path) -> bytes:
    out = tmp / "content.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(out)], check=True
    )
    return out.read_bytes()


def show_text(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `ws show ARGV` prints."""
    capsys.readouterr()
    assert ws_cli.main(["show", *argv], connect=lambda _s: Client(site.address)) == 0
    return capsys.readouterr().out


def show(site: Site, capsys: pytest.CaptureFixture[str], name: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(show_text(site, capsys, name, "-o", "json"))
    return shown


def save(site: Site, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = ws_cli.main(["image", "save", *argv], connect=lambda _s: Client(site.address))
    out, err = capsys.readouterr()
    return code, out, err


def images(site: Site) -> list[str]:
    return sorted(
        i.name for i in site.stubs.images.ListImages(images_pb2.ListImagesRequest()).images
    )


def save_events(site: Site, workspace_id: str) -> list[SiteEvent]:
    """The site events of the saves of ``workspace_id`` and of the images they made."""
    req = codec_events.watch_request_to_proto(0.0, False)
    found = [codec_events.event_from_proto(p) for p in site.stubs.admin.WatchEvents(req)]
    saves = [e for e in found if e.workspace_id == workspace_id and "sav" in e.kind]
    made = {e.subject for e in saves}
    return [e for e in found if e in saves or (e.kind == "image.added" and e.subject in made)]


def starts(site: Site, w: common_pb2.Workspace) -> None:
    site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=w.id))
    site.stubs.wait_state(w.id, WS.WORKSPACE_STATE_RUNNING)


def test_what_the_guest_wrote_is_in_the_saved_image_and_a_new_workspace_boots_it(
    env_site: Site,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = env_site
    caplog.set_level(logging.INFO, logger="workspace.ops.save")
    w = stopped(
        site,
        "box",
        extra_partitions=[
            common_pb2.Partition(name="work", mode=BLANK, virtual_size_bytes=4 * 1024 * KIB)
        ],
        grow_bytes={"root": 2 * 1024 * KIB},
    )
    guest_writes(overlay(site, w), 64 * KIB, 0x5A)
    source = site.stubs.images.GetImage(images_pb2.GetImageRequest(name="env:1"))

    code, out, err = save(site, capsys, "box", "env:2", "-o", "json")
    assert code == 0, err
    # (said "saving box as env:2: its node copies its disks" only once the service is
    # seen to have accepted it: not for a save done before the first look)
    assert "saved box as env:2" in err
    shown = json.loads(out)
    assert shown["name"] == "env:2"

    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name="env:2"))
    parts = {p.name: p for p in img.partitions}
    assert list(parts) == ["root", "ref", "scratch"]  # not the create's "work"
    root = parts["root"]
    assert (root.mode, root.format) == (COW, "qcow2")
    assert root.digest != source.partitions[0].digest
    assert root.virtual_size_bytes == 2 * 1024 * KIB  # grown at create: kept
    assert parts["ref"] == source.partitions[1]
    assert parts["scratch"] == source.partitions[2]
    assert (img.context, img.login_user, img.owner) == ("nocloud", "debian", source.owner)
    # The save's begin and end, and the image it made, in the site events (by its caller).
    said = save_events(site, w.id)
    assert [(e.kind, e.subject) for e in said] == [
        ("workspace.saving", "env:2"),
        ("image.added", "env:2"),
        ("workspace.saved", "env:2"),
    ]
    assert said[0].reason == "1 partition(s) to copy" and said[0].node == "node1"
    # Private, though its owner (the local site's caller) is an admin: it holds their files.
    assert said[1].reason == "no project, private; partitions root (cow), ref (readonly), " + (
        "scratch (blank)"
    )
    assert img.public is False
    assert said[2].reason == f"{shown['total_bytes']} bytes"
    assert {e.who for e in said} == {"user:local"}
    # The service's log says where, as its other lines of a placed workspace do.
    done = f"workspace {w.id} (box) on node node1 saved as image env:2 ("
    assert any(m.startswith(done) for m in caplog.messages), caplog.messages

    # The blob: self-contained, with the base's bytes and the guest's.
    assert site.service is not None
    blob = site.service.catalog.blobs.path(root.digest)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "qcow2", str(blob)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert "backing-filename" not in info
    content = raw_content(blob, tmp_path)
    assert content[: 64 * KIB] == b"A" * 64 * KIB
    assert content[64 * KIB : 128 * KIB] == b"\x5a" * 64 * KIB
    assert content[128 * KIB :] == b"\0" * (len(content) - 128 * KIB)
    # No copy left on the node, and the workspace may start again.
    assert not list(overlay(site, w).parent.glob("*.saving.qcow2"))
    starts(site, w)

    # A workspace of the saved image: its node's overlay reads what the guest wrote.
    w2 = site.stubs.create(name="box2", image="env:2")
    site.stubs.wait_state(w2.id, WS.WORKSPACE_STATE_RUNNING)
    assert raw_content(overlay(site, w2), tmp_path)[64 * KIB : 128 * KIB] == b"\x5a" * 64 * KIB


def hold_copies(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The node's copy of a disk, once begun (the first event set), waits for the second
    (the save stays under way until the test sets it)."""
    from agent import save as agent_save

    real = agent_save.qemu_img.flatten
    copying, go_on = threading.Event(), threading.Event()

    def slow(overlay: Path, path: Path, timeout_s: float, told: Any = None) -> None:
        copying.set()
        assert go_on.wait(30)
        real(overlay, path, timeout_s, told)

    monkeypatch.setattr(agent_save.qemu_img, "flatten", slow)
    return copying, go_on


def test_a_workspace_being_saved_does_not_start_and_is_not_saved_twice(
    env_site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = env_site
    w = stopped(site, "box")
    copying, go_on = hold_copies(monkeypatch)
    result: dict[str, Any] = {}

    def run() -> None:
        with Client(site.address) as c:
            result["image"] = c.save_image("box", "env:2")

    t = threading.Thread(target=run)
    t.start()
    try:
        assert copying.wait(20)
        with pytest.raises(grpc.RpcError) as start:
            site.stubs.ws.StartWorkspace(workspaces_pb2.WorkspaceRef(id=w.id))
        assert start.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "being saved as image env:2" in str(start.value.details())
        with pytest.raises(grpc.RpcError) as again:
            site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace="box", image="env:3"))
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # `ws show` says so, in text and JSON.
        assert show(site, capsys, "box")["saving_as"] == "env:2"
        saving = "saving      as image env:2: its node copies its disks"
        assert saving in show_text(site, capsys, "box").splitlines()
    finally:
        go_on.set()
        t.join(30)
    assert result["image"].name == "env:2"
    assert site.stubs.get(w.id).state == WS.WORKSPACE_STATE_STOPPED
    assert show(site, capsys, "box").get("saving_as", "") == ""
    assert not [x for x in show_text(site, capsys, "box").splitlines() if "saving" in x]
    assert images(site) == ["env:1", "env:2"]
    starts(site, w)


def cli_save(site: Site, result: dict[str, int]) -> threading.Thread:
    """`ws image save box env:2` begun in a thread of its own; its exit code goes into
    ``result["code"]``."""

    def run() -> None:
        argv = ["image", "save", "box", "env:2"]
        result["code"] = ws_cli.main(argv, connect=lambda _s: Client(site.address))

    cli = threading.Thread(target=run)
    cli.start()
    return cli


def test_a_saves_progress_is_shown_while_its_disk_is_sent(
    env_site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the node sends a disk, the workspace says which and how much of it the
    service has; `ws image save` says so as it goes; none of it stays once saved."""
    site = env_site
    w = stopped(site, "box")
    guest_writes(overlay(site, w), 64 * KIB, 0x5A, 256 * KIB)
    from agent import save as agent_save

    real_chunks = agent_save._chunks
    sending, go_on = threading.Event(), threading.Event()

    def held(path: Path, *rest: Any) -> Iterator[bytes]:
        for i, chunk in enumerate(real_chunks(path, *rest)):
            if i == 1:  # the first is with the service: hold the rest
                sending.set()
                assert go_on.wait(20)
            yield chunk

    monkeypatch.setattr(agent_save, "CHUNK_BYTES", 64 * KIB)
    monkeypatch.setattr(agent_save, "_chunks", held)
    monkeypatch.setattr(ops_save, "PROGRESS_S", 0.0)
    monkeypatch.setattr(client_images, "SAVE_POLL_S", 0.05)
    result: dict[str, int] = {}
    cli = cli_save(site, result)
    said: list[str] = []
    try:
        assert sending.wait(20)
        copy = overlay(site, w).with_name("root" + agent_save.COPY_SUFFIX)
        size = copy.stat().st_size
        assert size > 2 * 64 * KIB
        shown = wait_for(
            lambda: (ws := site.stubs.get(w.id)).saving_sent_bytes == 64 * KIB and ws,
            what="the first 64 KiB received",
        )
        assert (shown.saving_as, shown.saving_disk, shown.saving_size_bytes) == (
            "env:2",
            "root",
            size,
        )
        # The node's last word on the copy travels beside the upload, not in line with it:
        # when it comes late it does not undo what the upload has shown.
        assert site.service is not None
        ops_save.copying(site.service.env, w.id, "root", 100.0)
        late = site.stubs.get(w.id)
        assert (late.saving_disk, late.saving_sent_bytes, late.saving_size_bytes) == (
            "root",
            64 * KIB,
            size,
        )
        # ws image save says which disk it sends (said once, when the disk starts) ...
        wait_for(
            lambda: said.append(capsys.readouterr().err) or "sending disk root" in "".join(said),
            what="ws image save's progress line",
        )
        # ... and ws show how much of it has come.
        line = f"saving      as image env:2: disk root, 64.0 KiB of {render.fmt_bytes(size)} sent"
        assert line in show_text(site, capsys, "box").splitlines()
    finally:
        go_on.set()
        cli.join(30)
    said.append(capsys.readouterr().err)
    assert result["code"] == 0
    assert f"ws: box: sending disk root ({render.fmt_bytes(size)})" in "".join(said).splitlines()
    after = site.stubs.get(w.id)
    assert (after.saving_as, after.saving_disk, after.saving_sent_bytes) == ("", "", 0)
    assert after.saving_size_bytes == 0


def test_a_saves_progress_is_shown_while_its_node_copies_the_disk(
    env_site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the node copies a disk (qemu-img convert), the workspace says which and how
    far the copy is (the agent's figures, through its task stream); `ws show` and `ws
    image save` say so; once the copy is made the disk is sent, and none of it stays."""
    site = env_site
    w = stopped(site, "box")
    from agent import save as agent_save

    real_flatten = agent_save.qemu_img.flatten
    copying, go_on = threading.Event(), threading.Event()

    def held(src: Path, dst: Path, timeout_s: float, told: Any = None) -> None:
        assert told is not None  # the agent asks to be told
        told(0.0)
        told(37.0)
        copying.set()
        assert go_on.wait(20)
        real_flatten(src, dst, timeout_s, told)

    monkeypatch.setattr(agent_save, "COPYING_EVERY_S", 0.0)
    monkeypatch.setattr(agent_save.qemu_img, "flatten", held)
    monkeypatch.setattr(client_images, "SAVE_POLL_S", 0.05)
    result: dict[str, int] = {}
    cli = cli_save(site, result)
    said: list[str] = []
    try:
        assert copying.wait(20)
        shown = wait_for(
            lambda: (ws := site.stubs.get(w.id)).saving_copied_percent == 37.0 and ws,
            what="the copy's 37 % on the workspace",
        )
        assert (shown.saving_as, shown.saving_disk, shown.saving_sent_bytes) == ("env:2", "root", 0)
        wait_for(
            lambda: said.append(capsys.readouterr().err) or "copying disk root" in "".join(said),
            what="ws image save's line for the copy",
        )
        line = "saving      as image env:2: disk root, its node's copy 37 % made"
        assert line in show_text(site, capsys, "box").splitlines()
    finally:
        go_on.set()
        cli.join(30)
    said.append(capsys.readouterr().err)
    assert result["code"] == 0
    lines = "".join(said).splitlines()
    assert "ws: box: copying disk root on its node" in lines
    # Said once the service had taken the save, and before any of its progress.
    assert lines[0] == (
        "ws: saving box as env:2: its node copies its disks (it cannot start until this ends) ..."
    )
    after = site.stubs.get(w.id)
    assert (after.saving_as, after.saving_disk, after.saving_copied_percent) == ("", "", 0.0)


@pytest.mark.parametrize(
    ("workspace", "image", "code", "words"),
    [
        ("box", "env:1", grpc.StatusCode.ALREADY_EXISTS, "already exists"),
        ("box", "bad name!", grpc.StatusCode.INVALID_ARGUMENT, "is not NAME:VERSION"),
        ("nobody", "env:2", grpc.StatusCode.NOT_FOUND, "nobody"),
        ("run", "env:2", grpc.StatusCode.FAILED_PRECONDITION, "only a stopped workspace"),
    ],
)
def test_a_refused_save_makes_no_image_and_leaves_the_workspace_as_it_was(
    env_site: Site, workspace: str, image: str, code: grpc.StatusCode, words: str
) -> None:
    site = env_site
    w = stopped(site, "box")
    run = site.stubs.create(name="run", image="env:1")
    site.stubs.wait_state(run.id, WS.WORKSPACE_STATE_RUNNING)
    before = images(site)
    with pytest.raises(grpc.RpcError) as refused:
        site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace=workspace, image=image))
    assert refused.value.code() == code
    assert words in str(refused.value.details())
    assert images(site) == before
    assert site.stubs.get(run.id).state == WS.WORKSPACE_STATE_RUNNING
    starts(site, w)


def test_a_node_that_went_away_fails_the_save_and_the_workspace_starts_later(
    env_site: Site,
) -> None:
    site = env_site
    w = stopped(site, "box")
    site.stop_agent("node1")
    with pytest.raises(grpc.RpcError) as gone:
        site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace="box", image="env:2"))
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "node1's agent" in str(gone.value.details())
    assert "env:2" not in images(site)
    said = save_events(site, w.id)
    assert [e.kind for e in said] == ["workspace.saving", "workspace.save_failed"]
    assert said[1].reason == gone.value.details()
    site.add_agent("node1")
    starts(site, w)


@pytest.mark.parametrize(
    ("limits", "code", "words"),
    [
        # What env:1 holds (its root and ref blobs) fits, one byte more; the copy does not.
        (
            {"repo_quota_bytes_per_user": 1024 * KIB + 128 * KIB + 1},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "repository quota of",
        ),
        # The node's copy is larger than one upload may be.
        (
            {"max_blob_bytes": 1024 * KIB + 256 * KIB},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sending the disk failed: blob exceeds the limit",
        ),
    ],
)
def test_a_copy_over_the_sites_limits_is_refused(
    tmp_path: Path, limits: dict[str, int], code: grpc.StatusCode, words: str
) -> None:
    site = Site(tmp_path, limits=limits)
    try:
        with_env(site)
        w = stopped(site, "box")
        guest_writes(overlay(site, w), 0, 0x11, 1024 * KIB)  # every byte of the root
        with pytest.raises(grpc.RpcError) as over:
            site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace="box", image="env:2"))
        assert over.value.code() == code
        assert words in str(over.value.details())
        assert "env:2" not in images(site)
        starts(site, w)
    finally:
        site.close()


@pytest.mark.parametrize(
    ("limits", "project_bytes", "words"),
    [
        # What env:1 holds (its root and ref blobs) is all the owner may hold: any copy
        # goes over.
        ({"repo_quota_bytes_per_user": 1024 * KIB + 128 * KIB}, 0, "repository quota of"),
        # The project's images would be over with the readonly disk the new image reuses.
        ({}, 1000, "image-bytes quota of project small"),
    ],
)
def test_a_save_a_quota_has_no_room_for_is_refused_before_its_node_copies(
    tmp_path: Path, limits: dict[str, int], project_bytes: int, words: str
) -> None:
    """The image-bytes quotas were checked only at the import, after the node had
    copied every disk (minutes, GBs) into the repository: a quota already used up now
    refuses the save at once, with the quota's error, and nothing is copied."""
    site = Site(tmp_path, limits=limits)
    try:
        with_env(site)
        project = ""
        if project_bytes:
            project = "small"
            projects_pb2_grpc.ProjectsStub(site.stubs.channel).CreateProject(
                projects_pb2.Project(
                    name=project, quota=projects_pb2.Quota(image_bytes=project_bytes)
                )
            )
        w = stopped(site, "box")
        req = images_pb2.SaveImageRequest(workspace="box", image="mine:1", project=project)
        with pytest.raises(grpc.RpcError) as over:
            site.stubs.images.SaveImage(req)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert words in str(over.value.details())
        assert "before its disks are copied" in str(over.value.details())
        assert save_events(site, w.id) == []  # no save began: the node copied nothing
        assert "mine:1" not in images(site)
        starts(site, w)
    finally:
        site.close()


@pytest.mark.parametrize(
    ("node", "workspace", "code", "words"),
    [
        ("node1", "box", grpc.StatusCode.FAILED_PRECONDITION, "no save of workspace"),
        ("node2", "box", grpc.StatusCode.PERMISSION_DENIED, "is not on node node2"),
        ("node1", "", grpc.StatusCode.NOT_FOUND, "no workspace (none)"),
    ],
)
def test_a_node_may_send_only_the_disks_of_its_own_save_under_way(
    env_site: Site, node: str, workspace: str, code: grpc.StatusCode, words: str
) -> None:
    site = env_site
    site.add_agent("node2")
    w = stopped(site, "box")
    assert site.service is not None
    blobs = site.service.catalog.blobs
    before = set(blobs.digests())
    chunks = iter(
        [
            nodes_pb2.PutBlobChunk(node=node, workspace_id=w.id if workspace else "", data=b"x"),
            nodes_pb2.PutBlobChunk(data=b"y" * 100),
        ]
    )
    with pytest.raises(grpc.RpcError) as refused:
        site.stubs.nodes.PutBlob(chunks)
    assert refused.value.code() == code
    assert words in str(refused.value.details())
    assert set(blobs.digests()) == before  # nothing stored


def test_a_node_naming_a_blob_it_did_not_send_as_the_disk_makes_no_image(
    env_site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compromised node sends the disk as asked but says it saved it as another blob
    of the repository (another user's private disk: a digest is no secret). The save
    vouched for whatever it named, and the saver got an image of that blob to boot."""
    from agent import save as agent_save
    from workspace.domain.tasks import SaveOutcome

    site = env_site
    w = stopped(site, "box")
    theirs = tmp_path / "theirs.qcow2"  # a disk the node never had, in the repository
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(theirs), "1M"], check=True)
    foreign = site.stubs.upload(theirs.read_bytes())
    honest = agent_save.Saver.save

    def lying(self: agent_save.Saver, *args: Any, **kw: Any) -> SaveOutcome:
        out = honest(self, *args, **kw)
        return SaveOutcome(tuple(replace(p, digest=foreign) for p in out.partitions))

    monkeypatch.setattr(agent_save.Saver, "save", lying)
    with pytest.raises(grpc.RpcError) as refused:
        site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace="box", image="env:2"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"(root as {foreign}) as blobs it never sent" in str(refused.value.details())
    assert "env:2" not in images(site)
    assert [e.kind for e in save_events(site, w.id)][-1] == "workspace.save_failed"
    monkeypatch.undo()  # the node behaves again: the save works
    site.stubs.images.SaveImage(images_pb2.SaveImageRequest(workspace="box", image="env:2"))
    saved = site.stubs.images.GetImage(images_pb2.GetImageRequest(name="env:2"))
    assert saved.partitions[0].digest not in ("", foreign)


def test_a_save_whose_service_died_lapses_and_is_cleared(env_site: Site) -> None:
    """A mark left by a service that died mid-save stops counting after
    `limits.save_timeout_s` (the workspace starts); the leader's housekeeping clears it,
    so `ws show` no longer says it is being saved, with a `workspace.save_failed` event."""
    site = env_site
    w = stopped(site, "box")
    assert site.service is not None
    env = site.service.env
    with env.store.write() as s:
        ws = s.get(Workspace, w.id)
        assert ws is not None
        ws.saving_as = "env:2"
        ws.saving_since = env.clock() - env.cfg.limits.save_timeout_s + 60  # not yet lapsed
    assert ops_save.clear_lapsed(env) == 0
    assert site.stubs.get(w.id).saving_as == "env:2"
    with env.store.write() as s:
        ws = s.get(Workspace, w.id)
        assert ws is not None
        ws.saving_since = env.clock() - env.cfg.limits.save_timeout_s - 60
    assert ops_save.clear_lapsed(env) == 1
    assert site.stubs.get(w.id).saving_as == ""
    said = save_events(site, w.id)
    assert [(e.kind, e.subject, e.reason) for e in said] == [
        ("workspace.save_failed", "env:2", "never ended (lapsed)")
    ]
    assert said[0].who == "system"
    starts(site, w)


def test_a_save_its_service_restarted_in_the_middle_of_is_cleared_at_once(
    env_site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service (alone on its SQLite store) restarts while the node copies a disk:
    the save died with it, and the node cancelled it when its task stream broke. The
    restarted service clears the mark at once, with a `workspace.save_failed` event
    saying why, rather than refuse `ws start` and `ws image save` for
    `limits.save_timeout_s`; the save asked for again makes the image."""
    site = env_site
    w = stopped(site, "box")
    from agent import save as agent_save

    real = agent_save.qemu_img.flatten
    copying, go = threading.Event(), threading.Event()

    def held(src: Path, dst: Path, timeout_s: float, told: Any = None) -> None:
        real(src, dst, timeout_s, told)
        if not go.is_set():
            copying.set()
            assert go.wait(20)

    monkeypatch.setattr(agent_save.qemu_img, "flatten", held)
    first: dict[str, int] = {}
    cli = cli_save(site, first)
    try:
        assert copying.wait(20)
        assert site.stubs.get(w.id).saving_as == "env:2"
        # The process dies: nothing of it clears its mark (here, in one process, its
        # save call would when its stream ends; it does nothing).
        died = threading.Event()
        monkeypatch.setattr(ops_save, "_unmark", lambda *_a, **_k: died.set())
        site.stop_service()
        go.set()
        cli.join(30)
        assert died.wait(20)
        site.start_service()
    finally:
        go.set()
        cli.join(30)
    assert first["code"] != 0
    capsys.readouterr()
    assert site.stubs.get(w.id).saving_as == ""
    said = [(e.kind, e.subject, e.reason) for e in save_events(site, w.id)]
    assert said == [
        ("workspace.saving", "env:2", "1 partition(s) to copy"),
        ("workspace.save_failed", "env:2", ops_save.LOST_TO_RESTART),
    ]
    monkeypatch.undo()
    assert site.service is not None
    hub = site.service.hub
    wait_for(lambda: hub.connected("node1"), what="node1's task stream again")
    again: dict[str, int] = {}
    cli_save(site, again).join(60)
    assert again["code"] == 0, capsys.readouterr().err
    starts(site, w)


def test_a_save_its_service_gave_up_on_stops_on_the_node_and_the_retry_saves(
    env_site: Site,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """The node's task stream breaks while it copies a disk (a network blip, a replica
    gone): the service fails the save (UNAVAILABLE, try again) and clears its mark. The
    node's copy of that save must stop there, not send its disk later nor touch the copy
    of the save the user runs again, which waits for it and makes the image."""
    caplog.set_level(logging.INFO, logger="agent")
    site = env_site
    w = stopped(site, "box")
    guest_writes(overlay(site, w), 64 * KIB, 0x5A)
    from agent import save as agent_save

    real = agent_save.qemu_img.flatten
    calls: list[Path] = []
    first_copied, first_go = threading.Event(), threading.Event()
    second_copied, second_go = threading.Event(), threading.Event()

    def held(src: Path, dst: Path, timeout_s: float, told: Any = None) -> None:
        n = len(calls)
        calls.append(dst)
        real(src, dst, timeout_s, told)
        copied, go = (first_copied, first_go) if n == 0 else (second_copied, second_go)
        copied.set()
        assert go.wait(20)

    monkeypatch.setattr(agent_save.qemu_img, "flatten", held)
    assert site.service is not None
    hub = site.service.hub
    blobs = site.service.catalog.blobs
    before = set(blobs.digests())
    first: dict[str, int] = {}
    cli = cli_save(site, first)
    try:
        assert first_copied.wait(20)
        # The stream breaks: a new one of the same node replaces it, then goes too.
        hub.disconnect(hub.connect("node1"), "gone")
        cli.join(30)
        assert first["code"] != 0
        assert "node1's agent went away" in capsys.readouterr().err
        assert site.stubs.get(w.id).saving_as == ""
        wait_for(lambda: hub.connected("node1"), what="node1's task stream again")
        second: dict[str, int] = {}
        again = cli_save(site, second)
        # The retry has copied its disk, or it waits for the first copy to end.
        wait_for(
            lambda: second_copied.is_set() or "an earlier save of it" in caplog.text,
            what="the retry under way on the node",
        )
        first_go.set()
        wait_for(lambda: ended(caplog) == 1, what="the first save's end on the node")
        second_go.set()
        again.join(30)
    finally:
        first_go.set()
        second_go.set()
        cli.join(30)
    assert second["code"] == 0, capsys.readouterr().err
    img = site.stubs.images.GetImage(images_pb2.GetImageRequest(name="env:2"))
    root = next(p for p in img.partitions if p.name == "root")
    content = raw_content(blobs.path(root.digest), tmp_path)
    assert content[64 * KIB : 128 * KIB] == b"\x5a" * 64 * KIB
    # Only the retry's copy reached the repository, and none is left on the node.
    assert set(blobs.digests()) - before == {root.digest}
    assert not list(overlay(site, w).parent.glob("*" + agent_save.COPY_SUFFIX))
    starts(site, w)


def ended(caplog: pytest.LogCaptureFixture) -> int:
    """How many saves the agent has ended (made, or given up), as its log says."""
    said = [r.getMessage() for r in caplog.records if r.name == "agent.tasks"]
    return sum(m.startswith("saved ") or (m.startswith("saving ") and "failed" in m) for m in said)
