"""ws-admin without a service: parsing, nodes, networks, images, the capacity queue and
the scheduler (`schedule dump`, and `schedule explain` offline), against a fake client."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_formats import qcow2_header
from workspace import errors
from workspace.cli import admin, render
from workspace.client import Client
from workspace.site import local
from workspace.site import status as site_status
from workspace.site.record import AgentRecord, SiteRecord
from workspace.v1 import admin_pb2, images_pb2


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def _do(self, call: str, *args: Any, **kw: Any) -> None:
        self.calls.append((call, (args, kw)))
        if self.fail is not None:
            raise self.fail

    def drain_node(self, name: str) -> admin_pb2.Node:
        self._do("drain_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_DRAINING, cpus=4)

    def enable_node(self, name: str) -> admin_pb2.Node:
        self._do("enable_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_READY, cpus=4)

    def remove_node(self, name: str) -> admin_pb2.Node:
        self._do("remove_node", name)
        return admin_pb2.Node(name=name, state=admin_pb2.NODE_STATE_DOWN)

    def list_queue(self) -> list[admin_pb2.QueueEntry]:
        self._do("list_queue")
        e = admin_pb2.QueueEntry(
            kind="cluster",
            id="c9",
            name="big",
            owner="ana",
            position=1,
            cpus=34,
            memory_mib=16640,
            reason="member big-worker-3 does not fit: 2 node(s) have too few free CPUs",
        )
        e.queued_at.FromSeconds(1_700_000_000)
        e.deadline.FromSeconds(1_700_000_600)
        return [e]

    def get_scheduler_input(self, **kw: Any) -> str:
        self._do("get_scheduler_input", **kw)
        return '{"version": 1}'

    def get_image(self, name: str) -> Any:
        self._do("get_image", name)
        if name != "taken":
            raise errors.NotFound(f"no image {name!r}")
        return object()

    def check_import(self, name: str, project: str = "") -> None:
        """ImportImage(check_only): "others" is a NAME another project holds."""
        self._do("check_import", name, project)
        if name.startswith("others:"):
            raise errors.AlreadyExists(f"image {name!r} already exists: its NAME is another's")

    def repository_usage(self) -> Any:
        return images_pb2.RepositoryUsage(max_virtual_bytes=1024)

    def upload_blob(self, path: Any, progress: Any = None) -> Any:
        self._do("upload_blob", str(path))
        raise AssertionError("uploaded")

    def close(self) -> None:
        pass


def _admin(argv: list[str], client: FakeClient) -> int:
    return admin.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


# -- parsing, usage checks ------------------------------------------------------------


def test_admin_parsing() -> None:
    p = admin.build_parser(admin.Commands(lambda _s: None))  # type: ignore[arg-type, return-value]
    a = p.parse_args(
        shlex.split(
            "network create lab --subnet 10.9.0.0/24 --range 10.9.0.10-10.9.0.20 "
            "--dns 1.1.1.1 --dns 9.9.9.9 --mac-prefix 52:54:01 -o json"
        )
    )
    assert (a.name, a.subnet, a.range, a.dns, a.output) == (
        "lab",
        "10.9.0.0/24",
        "10.9.0.10-10.9.0.20",
        ["1.1.1.1", "9.9.9.9"],
        "json",
    )
    a = p.parse_args(["site", "up", "--dir", "/x", "--driver", "libvirt", "--virt-type", "kvm"])
    assert (a.dir, a.driver, a.virt_type) == ("/x", "libvirt", "kvm")
    a = p.parse_args(["image", "import", "img", "--appliance", "/d"])
    assert (a.file, a.appliance) == (None, "/d")
    with pytest.raises(SystemExit):
        p.parse_args(["site", "up", "--driver", "xen"])


def test_site_up_nodes_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`site up --nodes 0` was a usage error (exit 2) but `--nodes 17` a failed request
    (exit 1), told only after reading the site: both are now usage errors."""
    for n in ("0", str(local.MAX_NODES + 1)):
        with pytest.raises(SystemExit) as exited:
            admin.main(["site", "up", "--dir", "/nonexistent/x", "--nodes", n])
        assert exited.value.code == 2
        assert "ws-admin site up: error: argument --nodes: must be " in capsys.readouterr().err


def test_admin_usage_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    connect = lambda _s: client  # noqa: E731
    argv = ["network", "create", "n", "--subnet", "10.0.0.0/24", "--range", "10.0.0.5"]
    assert admin.main(argv, connect=connect) == 2  # type: ignore[arg-type]
    assert "--range must be START-END" in capsys.readouterr().err
    disk = tmp_path / "d.img"
    disk.write_bytes(b"x")
    argv = ["image", "import", "i", str(disk), "--appliance", str(tmp_path)]
    assert admin.main(argv, connect=connect) == 2  # type: ignore[arg-type]
    assert admin.main(["image", "import", "i"], connect=connect) == 2  # type: ignore[arg-type]
    argv = ["image", "import", "i", str(tmp_path / "missing.img")]
    assert admin.main(argv, connect=connect) == 1  # type: ignore[arg-type]
    assert "no such file" in capsys.readouterr().err
    assert client.calls == []


def test_admin_unknown_argument_is_named_with_its_command_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient()
    with pytest.raises(SystemExit) as exc:
        admin.main(["node", "list", "--x"], connect=lambda _s: client)  # type: ignore[arg-type, return-value]
    err = capsys.readouterr().err
    assert exc.value.code == 2 and client.calls == []
    assert err == (
        "ws-admin node list: error: unrecognized arguments: --x "
        "(ws-admin node list --help for usage)\n"
    )


def test_admin_image_import_detects_the_format_as_push_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient()
    vmdk = tmp_path / "d.vmdk"
    vmdk.write_bytes(b"KDMV" + bytes(600))
    assert admin.main(["image", "import", "i", str(vmdk)], connect=lambda _s: client) == 1  # type: ignore[arg-type, return-value]
    err = capsys.readouterr().err
    assert err.startswith("ws-admin: error: ") and "vmdk, not raw or qcow2; convert" in err
    assert client.calls == []


def test_admin_image_import_says_what_is_wrong_before_uploading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A taken or invalid name was said only after the whole disk was uploaded; an
    empty file was imported; a directory was "no such file"."""
    client = FakeClient()
    disk, empty = tmp_path / "d.raw", tmp_path / "e.raw"
    disk.write_bytes(bytes(4096))
    empty.write_bytes(b"")
    cases = [
        (["taken", str(disk)], "image 'taken' already exists"),
        (["others:1", str(disk)], "image 'others:1' already exists: its NAME is another's"),
        (["Bad:Name:x", str(disk)], "is not NAME:VERSION"),
        (["i", str(empty)], f"{empty}: is empty"),
        (["i", str(tmp_path)], f"{tmp_path}: is a directory, not a file"),
    ]
    for args, said in cases:
        assert _admin(["image", "import", *args, "--format", "raw"], client) == 1
        assert said in capsys.readouterr().err
    # The import's checks of the file itself: it was sent whole, then refused.
    qcow2 = tmp_path / "d.qcow2"
    qcow2.write_bytes(qcow2_header(backing_offset=512, backing_len=9))
    for args, said in (
        ([str(qcow2)], "qcow2 names a backing file"),
        ([str(qcow2), "--format", "raw"], "declared raw but the content is qcow2"),
        ([str(disk), "--format", "raw"], "virtual size 4096 bytes exceeds the limit of 1024"),
    ):
        assert _admin(["image", "import", "i", *args], client) == 1
        err = capsys.readouterr().err
        assert said in err and err.rstrip().endswith("; nothing sent"), err
    assert all(call != "upload_blob" for call, _ in client.calls)


def test_admin_image_import_of_an_appliance_directory_without_its_json_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No DIR/appliance.json exited 2 (usage) while an invalid one exits 1: both are a
    local file that says no (exit 1), named; nothing is asked of the service."""
    client = FakeClient()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "appliance.json").write_text("{")
    for where in (tmp_path, tmp_path / "nowhere", bad):
        assert _admin(["image", "import", "i", "--appliance", str(where)], client) == 1
        out = capsys.readouterr()
        said = f"ws-admin: error: {where / 'appliance.json'}"
        if where is bad:
            assert out.err.startswith(f"{said}: not valid JSON") and out.err.count("\n") == 1
        else:
            assert out.err == f"{said} not found: is {where} an appliance directory?\n"
        assert out.out == ""
    assert client.calls == []


# -- ws-admin: nodes, queue, schedule --------------------------------------------------


def test_admin_node_commands(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _admin(["node", "drain", "n1"], client) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["n1", "DRAINING"]
    assert _admin(["-o", "json", "node", "enable", "n1"], client) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "READY"
    assert _admin(["node", "remove", "n1"], client) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed node n1 (its agent, if it runs again, registers it again")
    assert "`ws-admin pki revoke node:n1`" in out
    assert [c[0] for c in client.calls] == ["drain_node", "enable_node", "remove_node"]
    refused = FakeClient(fail=errors.FailedPrecondition("node n1 still holds 2 workspace(s)"))
    assert _admin(["node", "remove", "n1"], refused) == 1
    assert capsys.readouterr().err == "ws-admin: error: node n1 still holds 2 workspace(s)\n"


def test_admin_queue(capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(["queue"], FakeClient()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "POSITION",
        "KIND",
        "NAME",
        "OWNER",
        "CPUS",
        "MEMORY_MIB",
        "QUEUED",
        "DEADLINE",
        "HOLDS",
        "REASON",
    ]
    assert lines[1].split()[:8] == [
        "1",
        "cluster",
        "big",
        "ana",
        "34",
        "16640",
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:23:20Z",
    ]
    assert lines[1].endswith("2 node(s) have too few free CPUs")
    assert _admin(["queue", "-o", "json"], FakeClient()) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    assert (entry["kind"], entry["position"], entry["memory_mib"]) == ("cluster", 1, 16640)


def test_admin_schedule_dump(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    argv = shlex.split(
        "schedule dump --cpus 2 --memory-mib 512 --network a --network b --image img "
        "--require gpu=1"
    )
    assert _admin(argv, client) == 0
    assert capsys.readouterr().out == '{"version": 1}\n'
    assert client.calls[0][1][1] == {
        "cpus": 2,
        "memory_mib": 512,
        "networks": ["a", "b"],
        "image": "img",
        "requirements": {"gpu": "1"},
        "preemptible": False,
    }
    assert _admin(["schedule", "dump"], client) == 0
    assert client.calls[1][1][1]["cpus"] == 0
    assert _admin(["schedule", "dump", "--preemptible"], client) == 0
    assert client.calls[2][1][1]["preemptible"] is True


SCHEDULER_INPUT: dict[str, Any] = {
    "version": 1,
    "config": {"policy": "pack"},
    "affinity": "NONE",
    "nodes": [
        {
            "name": "n1",
            "state": "READY",
            "cpus": 4,
            "memory_mib": 4096,
            "used_cpus": 0,
            "used_memory_mib": 0,
            "hypervisor": "kvm",
            "labels": {},
            "networks": ["default"],
            "cached_digests": [],
        }
    ],
    "requests": [
        {
            "member": "request",
            "cpus": 1,
            "memory_mib": 256,
            "networks": ["default"],
            "digests": [],
            "requirements": {},
        }
    ],
}


def _no_client(_s: str | None) -> Client:
    raise AssertionError("schedule explain must not contact the service")


def test_admin_schedule_explain_is_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(SCHEDULER_INPUT))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 0
    out = capsys.readouterr().out
    assert out.startswith("Placement: placed all 1 request(s)") and "n1" in out
    assert admin.main(["schedule", "explain", str(path), "-o", "json"], connect=_no_client) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["placed"] is True and data["placements"][0]["node"] == "n1"

    gpu = copy.deepcopy(SCHEDULER_INPUT)
    gpu["requests"][0]["requirements"] = {"gpu": "1"}
    path.write_text(json.dumps(gpu))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out and "gpu=1" in captured.out
    assert captured.err.startswith("ws-admin: error: does not fit")
    assert captured.err.count("\n") == 1

    # The node held against preemptible requests only: a normal request may use it, a
    # preemptible one (the file's "preemptible", or --preemptible) may not.
    held = SCHEDULER_INPUT | {"held_preemptible": {"n1": "held for p"}}
    path.write_text(json.dumps(held))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 0
    capsys.readouterr()
    argv = ["schedule", "explain", str(path), "--preemptible"]
    assert admin.main(argv, connect=_no_client) == 1
    assert "n1  rejected  capacity-queue: held for p" in capsys.readouterr().out
    path.write_text(json.dumps(held | {"preemptible": True}))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    assert ", preemptible)" in capsys.readouterr().out
    path.write_text(json.dumps(held | {"preemptible": "yes"}))
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    assert "input.preemptible: expected bool" in capsys.readouterr().err

    path.write_text("{}")
    assert admin.main(["schedule", "explain", str(path)], connect=_no_client) == 1
    assert capsys.readouterr().err.startswith(f"ws-admin: error: {path}: ")
    assert admin.main(["schedule", "explain", str(tmp_path / "no")], connect=_no_client) == 1
    assert "No such file or directory" in capsys.readouterr().err


def test_admin_parsing_new_commands() -> None:
    p = admin.build_parser(admin.Commands(lambda _s: None))  # type: ignore[arg-type, return-value]
    a = p.parse_args(["node", "drain", "n1", "-o", "json"])
    assert (a.node_command, a.name, a.output) == ("drain", "n1", "json")
    a = p.parse_args(["schedule", "dump", "--require", "gpu=1", "--require", "os=linux"])
    assert a.require == [("gpu", "1"), ("os", "linux")] and a.cpus is None
    for bad in (
        ["node", "drain"],
        ["schedule"],
        ["schedule", "explain"],
        ["schedule", "dump", "--cpus", "0"],
        ["schedule", "dump", "--require", "gpu"],
    ):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_events_since_help_names_what_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """`ws-admin events --since` takes what `ws usage --since` does (a date, now, a
    duration ago); its help once named only RFC 3339 times and durations."""
    with pytest.raises(SystemExit):
        admin.main(["events", "--help"], connect=lambda _s: pytest.fail("no client for --help"))
    text = " ".join(capsys.readouterr().out.split())
    assert "an ISO 8601 date or time (2026-11-01 or 20261101," in text and "now" in text
    parser = admin.build_parser(admin.Commands(lambda _s: None))  # type: ignore[arg-type, return-value]
    assert parser.parse_args(["events", "--since", "2026-11-01"]).since == 1793491200.0
    assert parser.parse_args(["events", "--since", "20261101"]).since == 1793491200.0


def test_site_up_json_gives_its_start_time_as_every_other_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`site up -o json` gave `started_at` as epoch seconds (site.json's), where every
    other time in the CLIs' JSON is ISO 8601 (`ws show`'s `created_at`, events' `time`)."""
    rec = SiteRecord(
        dir=str(tmp_path),
        address=f"unix:{tmp_path}/service.sock",
        driver="fake",
        started_at=1_700_000_000.25,
        agents=[AgentRecord(node="node1", pid=42)],
    )

    class Site:
        def __init__(self, *args: Any, **kw: Any) -> None:
            pass

        def up(self, timeout_s: float) -> local.UpResult:
            return local.UpResult(rec, already_running=True)

        def processes(self, rec: SiteRecord) -> dict[str, Any]:
            return site_status.processes(rec, tmp_path / "service.log")

    monkeypatch.setattr(local, "LocalSite", Site)
    assert _admin(["-o", "json", "site", "up", "--dir", str(tmp_path)], FakeClient()) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["started_at"] == "2023-11-14T22:13:20Z"
    assert (shown["already"], shown["service_pid"], shown["agents"][0]["pid"]) == (True, 0, 42)
    # and under the keys `site status` gives them
    assert (shown["service"]["pid"], shown["agent"]["pid"], shown["agents"][0]["name"]) == (
        0,
        42,
        "node1",
    )
    assert render.fmt_epoch(0.0) == ""  # never started: unset, as an unset Timestamp is
