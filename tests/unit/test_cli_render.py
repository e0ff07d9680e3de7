"""What ws and ws-admin print (workspace/cli/render.py): JSON with short enum names, in
field order; text tables; one image table and one image view for both CLIs."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from workspace.cli import (
    admin,
    admin_text,
    backfill_cmds,
    key_cmds,
    progress,
    project_cmds,
    render,
    replica_cmds,
    usage_text,
    ws,
)
from workspace.domain import sshkeys
from workspace.v1 import (
    access_pb2,
    admin_pb2,
    clusters_pb2,
    common_pb2,
    images_pb2,
    projects_pb2,
    trust_pb2,
    usage_pb2,
    workspaces_pb2,
)

WS = common_pb2.WorkspaceState


def _ws(state: int = WS.WORKSPACE_STATE_RUNNING, **kw: Any) -> common_pb2.Workspace:
    base: dict[str, Any] = {"id": "w1", "name": "alpha", "image": "img", "cpus": 1}
    base.update(kw)
    return common_pb2.Workspace(state=state, memory_mib=512, **base)


def test_json_shortens_enums_keeps_ints_and_field_order() -> None:
    event = workspaces_pb2.WorkspaceEvent(
        workspace=_ws(desired_state=common_pb2.DESIRED_STATE_STOPPED, nics=[common_pb2.Nic()]),
        initial=True,
    )
    data = render.to_dict(event)
    w = data["workspace"]
    assert (w["state"], w["desired_state"], w["memory_mib"]) == ("RUNNING", "STOPPED", 512)
    assert list(w)[:4] == ["id", "name", "owner", "image"]
    assert w["nics"][0]["prefix_len"] == 0 and data["initial"] is True
    node = render.to_dict(admin_pb2.Node(name="n", state=admin_pb2.NODE_STATE_DRAINING))
    assert node["state"] == "DRAINING"
    part = render.to_dict(common_pb2.Partition(mode=common_pb2.PARTITION_MODE_COW))
    assert part["mode"] == "COW"
    json.dumps(data)


def test_json_times_are_to_the_second_as_the_text_shows_them() -> None:
    """A Timestamp with nanoseconds came out as ``…T22:13:20.250000Z`` (0, 3, 6 or 9
    digits, as the nanoseconds fell), which jq's ``fromdate`` refuses; the text shows
    the same time to the second, and so does every other time in the JSON."""
    at = Timestamp(seconds=1_700_000_000, nanos=250_000_000)
    ws = _ws(created_at=at, updated_at=Timestamp(seconds=1_700_000_001, nanos=7))
    data = render.to_dict(clusters_pb2.Cluster(created_at=at, members=[ws]))
    (member,) = data["members"]
    assert data["created_at"] == member["created_at"] == "2023-11-14T22:13:20Z"
    assert member["updated_at"] == "2023-11-14T22:13:21Z"
    assert render.fmt_time(at) == "2023-11-14T22:13:20Z"  # what `ws show` prints
    assert "lease_expires_at" not in member  # unset: still absent


def test_text_tables_use_short_names() -> None:
    text = render.workspace_rows(
        [_ws(nics=[common_pb2.Nic(ip="10.0.0.2")]), _ws(WS.WORKSPACE_STATE_PAUSED, id="w2")]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "IMAGE", "CPUS", "MEMORY_MIB", "NODE", "IP"]
    assert lines[1].split() == ["w1", "alpha", "RUNNING", "img", "1", "512", "-", "10.0.0.2"]
    assert "PAUSED" in lines[2]
    # Two owners' workspaces (an admin's --all-users) say whose each is.
    mixed = render.workspace_rows([_ws(owner="ana"), _ws(id="w2", owner="bob", project="chem")])
    head, first, second = (line.split() for line in mixed.splitlines())
    assert head[:5] == ["ID", "NAME", "OWNER", "PROJECT", "STATE"]
    assert first[:5] == ["w1", "alpha", "ana", "-", "RUNNING"] and second[2:4] == ["bob", "chem"]
    show = render.workspace_text(_ws(WS.WORKSPACE_STATE_FAILED, reason="disk full"))
    assert "state       FAILED" in show and "reason      disk full" in show
    assert render.state_line(_ws()) == "alpha (w1): RUNNING"
    assert render.table(["A", "LONGER"], [["xyz", "1"]]) == "A    LONGER\nxyz  1"


def _image() -> images_pb2.Image:
    img = images_pb2.Image(
        name="sci:1.0",
        owner="ana",
        total_bytes=3 * 1024 * 1024,
        kernel_digest="sha256:" + "k" * 64,
        partitions=[
            common_pb2.Partition(
                name="root",
                mode=common_pb2.PARTITION_MODE_COW,
                format="qcow2",
                size_bytes=3 * 1024 * 1024,
                virtual_size_bytes=8 * 1024 * 1024,
                digest="sha256:" + "a" * 64,
            ),
            common_pb2.Partition(
                name="scratch",
                mode=common_pb2.PARTITION_MODE_BLANK,
                format="raw",
                size_bytes=1024 * 1024,
                ext4=True,
            ),
        ],
    )
    img.created_at.FromSeconds(1_700_000_000)
    return img


class ImagesClient:
    def list_images(self) -> list[images_pb2.Image]:
        return [_image()]

    def close(self) -> None:
        pass


def test_ws_and_ws_admin_list_images_alike(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for main in (ws.main, admin.main):
        for fmt in ("text", "json"):
            assert main(["image", "list", "-o", fmt], connect=lambda _s: ImagesClient()) == 0  # type: ignore[arg-type, return-value]
            outputs.append(capsys.readouterr().out)
    ws_text, ws_json, admin_text, admin_json = outputs
    assert ws_text == admin_text and ws_json == admin_json
    lines = ws_text.splitlines()
    assert lines[0].split() == ["NAME", "PARTITIONS", "SIZE", "BOOT", "OWNER", "CREATED"]
    assert lines[1].split() == [
        "sci:1.0",
        "2",
        "3.0",
        "MiB",
        "direct",
        "ana",
        "2023-11-14T22:13:20Z",
    ]
    assert json.loads(ws_json)[0]["partitions"][1]["mode"] == "BLANK"


def test_image_view() -> None:
    text = render.image_text(_image())
    assert "total       3.0 MiB" in text
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("PARTITION")))
    assert lines[head].split() == ["PARTITION", "MODE", "FORMAT", "SIZE", "VIRTUAL", "DIGEST"]
    assert lines[head + 1].split()[:8] == [
        "root",
        "COW",
        "qcow2",
        "3.0",
        "MiB",
        "8.0",
        "MiB",
        "sha256:" + "a" * 64,
    ]
    assert lines[head + 2].split() == ["scratch", "BLANK", "ext4", "raw", "-", "1.0", "MiB", "-"]


def test_reboots_asked_and_carried_out() -> None:
    asked = _ws(desired_state=common_pb2.DESIRED_STATE_RUNNING, reboot_count=3)
    # An agent that predates the count: nothing to show of it, as before.
    assert render.requested_line(asked) == "alpha (w1): RUNNING"
    assert "reboot_count  3 (its node does not report them carried out)" in render.workspace_text(
        asked
    )
    asked.applied_reboot_count = 2
    assert render.requested_line(asked) == "alpha (w1): RUNNING, reboot requested"
    assert "reboot_count  3 (2 carried out)" in render.workspace_text(asked)
    data = render.to_dict(asked)
    assert (data["reboot_count"], data["applied_reboot_count"]) == (3, 2)  # numbers, not text
    asked.applied_reboot_count = 3
    assert render.requested_line(asked) == "alpha (w1): RUNNING"
    assert "reboot_count" not in render.workspace_text(_ws(applied_reboot_count=0))
    assert "applied_reboot_count" not in render.to_dict(_ws())  # unset: the node never said


# -- what a table derives, JSON carries too ----------------------------------------------

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3ZgkLYYa1uoAyEeFQ+Tw1anWr4/fvVUcG3cvNcNxdp ana@lab"


class CatalogClient:
    """Two images (one booting its own kernel, one from its disk) and one SSH key."""

    def list_images(self) -> list[images_pb2.Image]:
        return [_image(), images_pb2.Image(name="plain:1", owner="ana")]

    def get_image(self, name: str) -> images_pb2.Image:
        return next(img for img in self.list_images() if img.name == name)

    def _key(self) -> access_pb2.SshKey:
        return access_pb2.SshKey(fingerprint="SHA256:x", public_key=ED25519, comment="ana@lab")

    def list_ssh_keys(self) -> list[access_pb2.SshKey]:
        return [self._key()]

    def add_ssh_key(self, public_key: str) -> access_pb2.SshKey:
        return self._key()

    def remove_ssh_key(self, key: str) -> access_pb2.SshKey:
        return self._key()

    def close(self) -> None:
        pass


def _out(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv, connect=lambda *_a: CatalogClient()) == 0
    return capsys.readouterr().out


def _column(text: str, header: str) -> list[str]:
    """A table's column ``header``: the first word at its offset in each row."""
    head, *rows = text.splitlines()
    at = head.index(f" {header} ") + 1
    return [row[at:].split()[0] for row in rows]


def test_a_clusters_lease_end_is_shown() -> None:
    """`ws cluster create --lease 8h` gives every member the lease, but `ws cluster show`
    printed no end: a cluster stopped by its lease showed STOPPED with no reason, and
    its end was in each member's `ws show` only."""
    ends = [Timestamp(seconds=2_000_000_000), Timestamp(seconds=2_000_000_000)]
    members = [_ws(name=f"c-w-{i}", lease_expires_at=t) for i, t in enumerate(ends)]
    shown = render.cluster_text(clusters_pb2.Cluster(name="c", members=members))
    assert "lease_ends  2033-05-18T03:33:20Z\n" in shown
    # One member extended apart: the first end, and whose it is.
    members[0].lease_expires_at.seconds += 3600
    shown = render.cluster_text(clusters_pb2.Cluster(name="c", members=members))
    assert "lease_ends  2033-05-18T03:33:20Z (the first: c-w-1's)" in shown
    data = render.cluster_dict(clusters_pb2.Cluster(name="c", members=members))
    assert data["lease_expires_at"] == "2033-05-18T03:33:20Z"  # -o json: the same end
    # Ended: said so, as `ws show` says it of a workspace.
    members[1].lease_expires_at.seconds = 1_000_000
    shown = render.cluster_text(clusters_pb2.Cluster(name="c", members=members))
    assert "(ended) (the first: c-w-1's)" in shown
    assert "lease_ends" not in render.cluster_text(clusters_pb2.Cluster(members=[_ws()]))
    assert "lease_expires_at" not in render.cluster_dict(clusters_pb2.Cluster(members=[_ws()]))


@pytest.mark.parametrize("main", [ws.main, admin.main])
def test_image_json_carries_the_boot_the_table_shows(
    main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws image list` showed BOOT (direct or disk) while its JSON had only the raw
    kernel_digest to derive it from."""
    listed = json.loads(_out(main, ["image", "list", "-o", "json"], capsys))
    table = _out(main, ["image", "list"], capsys)
    assert [img["boot"] for img in listed] == ["direct", "disk"]
    assert _column(table, "BOOT") == ["direct", "disk"]
    assert listed[0]["kernel_digest"] == "sha256:" + "k" * 64  # the raw field stays
    if main is ws.main:  # one image is the same object as in the list
        shown = json.loads(_out(main, ["image", "show", "plain:1", "-o", "json"], capsys))
        assert shown == listed[1]


def test_ssh_key_json_carries_the_type_the_table_shows(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """`ws key list` showed TYPE while its JSON had only the raw public_key line."""
    listed = json.loads(_out(ws.main, ["key", "list", "-o", "json"], capsys))
    assert _column(_out(ws.main, ["key", "list"], capsys), "TYPE") == ["ssh-ed25519"]
    assert listed[0]["type"] == "ssh-ed25519" and listed[0]["public_key"] == ED25519
    pub = tmp_path / "id.pub"
    pub.write_text(ED25519)
    added = json.loads(_out(ws.main, ["key", "add", str(pub), "-o", "json"], capsys))
    removed = json.loads(_out(ws.main, ["key", "remove", "SHA256:x", "-o", "json"], capsys))
    assert added == removed == listed[0]


def test_ws_key_remove_takes_the_pub_file_the_key_was_added_from(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """`ws key remove ~/.ssh/id_ed25519.pub` sent the path as a comment to match, and the
    service answered "you have no SSH key" for a key it had."""
    asked: list[str] = []

    class Recording(CatalogClient):
        def remove_ssh_key(self, key: str) -> access_pb2.SshKey:
            asked.append(key)
            return self._key()

    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(ED25519 + "\n")
    for ref in (str(pub), "ana@lab"):
        assert ws.main(["key", "remove", ref], connect=lambda *_a: Recording()) == 0
    assert asked == [sshkeys.fingerprint(ED25519), "ana@lab"]
    assert asked[0].startswith("SHA256:")
    capsys.readouterr()


# -- table headers -----------------------------------------------------------------------

# A header is one upper-case word, or words joined by "_" (MEMORY_MIB, LAST_USED): a
# script splits the header line on whitespace, and one spelling greps for every table.
HEADER = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def test_every_table_header_is_one_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ws-admin backfill list` said MEMORY-MIB where every other table says MEMORY_MIB;
    `ws-admin project list` DEFAULT-LEASE, `ws-admin pki list` NOT AFTER (two words)."""
    seen: list[str] = []
    real = render.table

    def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
        seen.extend(headers)
        return real(headers, rows)

    for module in (render, admin_text, usage_text):  # (the last two import it by name)
        monkeypatch.setattr(module, "table", table)
    render.workspace_rows([_ws()])
    cluster = clusters_pb2.Cluster(
        name="c", spec=[clusters_pb2.ClusterMember(role="w")], members=[_ws()]
    )
    render.cluster_rows([cluster])
    render.cluster_text(cluster)
    render.image_rows([_image()])
    render.image_text(_image())
    render.policy_text(trust_pb2.TrustPolicy(keys=[trust_pb2.TrustedKey(key_id="k")]))
    render.audit_text([trust_pb2.AuditEntry()])
    admin_text.node_rows([admin_pb2.Node()])
    admin_text.network_rows([admin_pb2.Network()])
    admin_text.queue_rows([admin_pb2.QueueEntry()])
    admin_text.cache_text(admin_pb2.ListCacheResponse(entries=[admin_pb2.CacheEntry()]))
    key_cmds.key_rows([access_pb2.SshKey(public_key=ED25519)])
    backfill_cmds.entry_rows([admin_pb2.BackfillEntry()])
    replica_cmds.replica_rows([admin_pb2.Replica()])
    project_cmds.project_rows([projects_pb2.Project(name="p")])
    project_cmds.quota_rows([projects_pb2.ProjectQuota(project="p")])
    for by in (usage_pb2.USAGE_GROUPING_WORKSPACE, usage_pb2.USAGE_GROUPING_USER):
        usage_text.usage_report_text(usage_pb2.UsageReport(by=by, rows=[usage_pb2.UsageRow()]))
    ca = str(tmp_path / "ca")
    for argv in (
        ["pki", "init", "--dir", ca],
        ["pki", "issue", "user", "ana", "--out", str(tmp_path / "ana"), "--dir", ca],
        ["pki", "list", "--dir", ca],
    ):
        assert admin.main(argv) == 0
    capsys.readouterr()
    assert {"MEMORY_MIB", "MAC_PREFIX", "LAST_USED", "CORE_HOURS", "SERIAL"} <= set(seen)
    assert [h for h in seen if not HEADER.fullmatch(h)] == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _saving(
    disk: str = "", sent: int = 0, size: int = 0, copied: float = 100.0
) -> common_pb2.Workspace:
    return common_pb2.Workspace(
        name="box",
        saving_as="env:2",
        saving_disk=disk,
        saving_sent_bytes=sent,
        saving_size_bytes=size,
        saving_copied_percent=copied,
    )


def test_a_saves_progress_in_ws_show_and_in_ws_image_save() -> None:
    assert render.saving_text(common_pb2.Workspace(name="box")) == ""
    assert render.saving_text(_saving()) == "as image env:2: its node copies its disks"
    assert render.saving_text(_saving("root", 1 << 20, 2 << 20)) == (
        "as image env:2: disk root, 1.0 MiB of 2.0 MiB sent"
    )
    assert render.saving_text(_saving("root", 1 << 20)) == "as image env:2: disk root, 1.0 MiB sent"
    assert render.saving_text(_saving("root", copied=42.4)) == (
        "as image env:2: disk root, its node's copy 42 % made"
    )
    assert render.saving_text(_saving("root", copied=100.0)) == (  # made, not yet sent
        "as image env:2: disk root, its node's copy 100 % made"
    )
    # Not a terminal: one line per disk when its node starts copying it, and when it
    # starts to be sent (an older agent says nothing of its copies).
    log = io.StringIO()
    said = progress.SaveProgress("ws", log)
    for w in (
        _saving(),
        _saving("root", copied=0.0),
        _saving("root", copied=60.0),
        _saving("root", copied=100.0),
        _saving("root", 0, 4096),
        _saving("root", 2048, 4096),
        _saving("data", 1024),  # its size not told
    ):
        said(w)
    said.end(saved=True)
    assert log.getvalue().splitlines() == [
        "ws: box: copying disk root on its node",
        "ws: box: sending disk root (4.0 KiB)",
        "ws: box: sending disk data",
    ]
    # A terminal: the copy's bar (its share only), full once it is made, then the disk's.
    tty = _Terminal()
    bar = progress.SaveProgress("ws", tty, width=4)
    bar(_saving("root", copied=50.0))
    bar(_saving("root", 0, 4096))
    drawn = tty.getvalue().split("\r")
    assert drawn[1] == "copying  root [##  ]  50.0%"
    assert drawn[2] == "copying  root [####] 100.0%\n"
    # A terminal: a bar per disk, full once the save succeeded.
    tty = _Terminal()
    bar = progress.SaveProgress("ws", tty, width=4)
    bar(_saving("root", 1024, 4096))
    bar.end(saved=True)
    drawn = tty.getvalue().split("\r")
    assert drawn[1].startswith("sending  root [#   ]  25.0% 1.0 KiB/4.0 KiB")
    assert drawn[2] == "sending  root [####] 100.0% 4.0 KiB/4.0 KiB\n"


def test_the_json_docs_say_what_the_output_holds() -> None:
    """docs/design/cli.md said "every field present" and "a list is a JSON array", but an
    unset message or optional field is absent and event commands print JSON lines."""
    doc = " ".join((Path(__file__).parents[2] / "docs/design/cli.md").read_text().split())
    data = render.to_dict(common_pb2.Workspace(id="w1"))
    assert "lease_expires_at" not in data and "applied_reboot_count" not in data
    assert data["reason"] == "" and data["nics"] == []
    assert "every field present" not in doc
    assert "a field with presence is absent when unset" in doc
    assert "`lease_expires_at`" in doc and "`applied_reboot_count`" in doc
    for command in ("`ws watch`", "`ws events`", "`ws cluster events`", "`ws-admin events`"):
        assert command in doc.split("print JSON lines")[0].rsplit("A list is a JSON array", 1)[1]


def test_the_lease_lines_say_nothing_of_a_policy_the_service_did_not_send() -> None:
    """`ws quota` names each project's lease policy (ProjectQuota.leases); a service older
    than that field sends none, and the project was said to have "no lease (its
    workspaces live until destroyed)" though it may destroy them after 8h."""
    old = projects_pb2.ProjectQuota(project="phys")
    assert "phys" not in project_cmds.lease_lines([old])
    assert project_cmds.user_quota_text([old]) == project_cmds.quota_rows([old])
    none = projects_pb2.ProjectQuota(project="open", leases=projects_pb2.LeasePolicy())
    assert project_cmds.lease_lines([none]) == (
        "project open: no lease (its workspaces live until destroyed)"
    )
