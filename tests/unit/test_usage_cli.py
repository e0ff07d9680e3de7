"""`ws create --lease`, `ws lease extend`, `ws show`, `ws usage` and `ws-admin usage`
through the real client, gRPC and servicers, over a store with an injected clock."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.unit.test_request_validation import Site, build_site
from workspace import errors, rpc
from workspace.cli import admin, common, usage_text, ws
from workspace.client import Client
from workspace.domain.leases import iso_time
from workspace.edge.admin import AdminServicer
from workspace.edge.clusters import ClustersServicer
from workspace.node.v1 import nodes_pb2
from workspace.store import Project
from workspace.v1 import (
    admin_pb2_grpc,
    clusters_pb2_grpc,
    common_pb2,
    usage_pb2,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

HOUR = 3600.0
WS = common_pb2.WorkspaceState
OWNER = "local"  # without TLS every caller is the configured default owner


class Served:
    """The site served over gRPC; each CLI invocation gets (and closes) its own client."""

    def __init__(self, site: Site, server: grpc.Server, address: str) -> None:
        self.site = site
        self.server = server
        self.address = address
        self.client = Client(address)

    def ws(self, *argv: str) -> int:
        return ws.main(list(argv), connect=lambda _s: Client(self.address))

    def admin(self, *argv: str) -> int:
        return admin.main(list(argv), connect=lambda _s: Client(self.address))

    def running(self, name: str) -> str:
        wid = self.client.get_workspace(name).id
        self.site.report(wid, nodes_pb2.OBSERVED_STATE_RUNNING)
        return wid


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    site = build_site(tmp_path, cpus=16, memory_mib=32768)
    with site.store.write() as s:
        s.add(Project(name="physics", default_lease_s=8 * 3600, max_lease_s=72 * 3600))
    server = rpc.server(8)
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(site.core, server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(site.core.env), server)
    clusters_pb2_grpc.add_ClustersServicer_to_server(ClustersServicer(site.core.env), server)
    address = f"unix:{tmp_path / 'svc.sock'}"
    rpc.bind(server, address)
    server.start()
    served = Served(site, server, address)
    try:
        yield served
    finally:
        served.client.close()
        server.stop(0).wait()


def out(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_create_with_a_lease_and_show_it(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    now = served.site.clock.now
    assert served.ws("create", "--image", "img", "--name", "a", "--lease", "1h30m") == 0
    assert f"lease_ends  {iso_time(now + 1.5 * HOUR)}" in out(capsys)
    assert served.ws("lease", "extend", "a", "4h") == 0
    assert out(capsys).strip().endswith(f"lease ends at {iso_time(now + 5.5 * HOUR)}")
    assert served.ws("show", "a", "-o", "json") == 0
    shown = json.loads(out(capsys))
    assert shown["lease_expires_at"] == iso_time(now + 5.5 * HOUR)


def test_cluster_create_with_a_lease(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    end = iso_time(served.site.clock.now + 2 * HOUR)
    argv = ["cluster", "create", "c1", "--member", "head=img", "--member", "w=img,count=2"]
    assert served.ws(*argv, "--lease", "2h", "-o", "json") == 0
    members = json.loads(out(capsys))["members"]
    assert [m["lease_expires_at"] for m in members] == [end] * 3


def test_lease_extend_of_a_cluster_extends_every_member(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws lease extend c1 4h` was refused ("c1 is a cluster, not a workspace ... `ws lease
    extend MEMBER DURATION` on each"): a 16-member cluster took 16 commands."""
    now = served.site.clock.now
    argv = ["cluster", "create", "c1", "--member", "head=img", "--member", "w=img,count=2"]
    assert served.ws(*argv, "--lease", "2h") == 0
    out(capsys)
    assert served.ws("lease", "extend", "c1", "4h") == 0
    end = iso_time(now + 6 * HOUR)
    assert out(capsys) == f"cluster c1: lease of 3 member(s) ends at {end}\n"
    assert served.ws("lease", "extend", "c1", "1h", "-o", "json") == 0
    shown = json.loads(out(capsys))
    end = iso_time(now + 7 * HOUR)
    assert shown["name"] == "c1" and shown["lease_expires_at"] == end
    assert [m["lease_expires_at"] for m in shown["members"]] == [end] * 3
    # The client does the same.
    c = served.client.extend_cluster_lease("c1", 3600)
    assert {m.lease_expires_at.seconds for m in c.members} == {int(now + 8 * HOUR)}
    # A member that cannot be extended so far refuses the whole, naming it.
    assert served.ws("lease", "extend", "c1", "20000d") == common.EXIT_REQUEST
    err = capsys.readouterr().err
    assert "cannot extend the lease of cluster c1, nor of any of its members" in err
    assert "workspace c1-head-0" in err and "limits.max_lease_s" in err
    assert served.ws("cluster", "show", "c1", "-o", "json") == 0
    assert json.loads(out(capsys))["lease_expires_at"] == iso_time(now + 8 * HOUR)
    # Neither a workspace nor a cluster: as the service says.
    assert served.ws("lease", "extend", "c9", "1h") == common.EXIT_REQUEST
    assert "no workspace 'c9'" in capsys.readouterr().err


def test_no_lease_shows_none(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert served.ws("create", "--image", "img", "--name", "a") == 0
    assert "lease_ends" not in out(capsys)


def test_bad_leases_are_refused_by_the_cli(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        served.ws("create", "--image", "img", "--lease", "8 hours")
    assert exc.value.code == common.EXIT_USAGE
    assert "not a duration" in capsys.readouterr().err
    served.ws("create", "--image", "img", "--name", "a")
    assert served.ws("lease", "extend", "a", "1h") == common.EXIT_REQUEST
    err = capsys.readouterr().err
    assert "has no lease" in err and "ws create --lease DURATION" in err
    # the workspace's state refuses it, not the request's form
    with pytest.raises(errors.FailedPrecondition):
        served.client.extend_lease("a", 3600)
    assert served.ws("lease", "extend", "nope", "1h") == common.EXIT_REQUEST
    assert "no workspace 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # argparse read "-5h" as an option and said "the following arguments are
        # required: duration"
        (["box", "-5h"], "'-5h': a lease cannot be shortened: DURATION must be more than 0"),
        (["-5h", "box"], "'-5h': a lease cannot be shortened: DURATION must be more than 0"),
        (["box", "--", "-5h"], "argument duration: a duration must be more than 0, got '-5h'"),
        (["box", "-5"], "argument duration: a duration must be more than 0, got '-5'"),
        (["box", "0"], "argument duration: a duration must be more than 0, got '0'"),
    ],
)
def test_a_lease_cannot_be_shortened(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main(["lease", "extend", *argv], connect=lambda _s: None)  # type: ignore[arg-type, return-value]
    assert exc.value.code == common.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"ws lease extend: error: {said} (ws lease extend --help for usage)\n"
    )


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (ws.main, ["create", "--image", "i", "--lease", "8"]),
        (ws.main, ["cluster", "create", "c", "--member", "w=i", "--lease", "8"]),
        (ws.main, ["lease", "extend", "box", "8"]),
        (admin.main, ["project", "create", "p", "--default-lease", "8"]),
        (admin.main, ["project", "set", "p", "--max-lease", "8"]),
    ],
)
def test_a_lease_of_a_bare_number_is_refused(
    main: object, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--lease 8` was read as 8 seconds: a workspace meant to run 8 hours was stopped
    (or destroyed, with its disks) seconds after it booted. Nothing is sent."""

    def no_service(_s: object) -> None:
        raise AssertionError("nothing may be sent")

    with pytest.raises(SystemExit) as exc:
        main(argv, connect=no_service)  # type: ignore[operator]
    assert exc.value.code == common.EXIT_USAGE
    assert "'8' has no unit: 8h, 8m or 8s?" in capsys.readouterr().err


def test_a_negative_lease_is_named_wherever_it_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        ws.main(["create", "--image", "i", "--lease", "-5h"], connect=lambda _s: None)  # type: ignore[arg-type, return-value]
    assert capsys.readouterr().err.startswith("ws create: error: '-5h': a negative value")


def test_the_service_refuses_to_shorten_a_lease(served: Served) -> None:
    """What the CLI cannot send, the service refuses too (any client may send it)."""
    served.ws("create", "--image", "img", "--name", "a", "--lease", "2h")
    for add_s in (-5 * 3600, 0):
        with pytest.raises(errors.InvalidArgument, match="more than 0 s"):
            served.client.extend_lease("a", add_s)


def test_usage_csv_json_and_text(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = served.site.clock.now
    served.ws("create", "--image", "img", "--name", "a", "--cpus", "2", "--memory-mib", "1024")
    wid = served.running("a")
    served.site.clock.now += 2 * HOUR
    served.ws("destroy", "a")
    served.site.report(wid, nodes_pb2.OBSERVED_STATE_ABSENT)
    out(capsys)
    assert served.ws("usage", "-o", "csv") == 0
    rows = list(csv.reader(io.StringIO(out(capsys))))
    assert rows[0] == [
        "workspace",
        "name",
        "owner",
        "project",
        "core_hours",
        "memory_gib_hours",
        "disk_gib_hours",
        "preemptible_core_hours",
        "preemptible_memory_gib_hours",
        "preemptible_disk_gib_hours",
        "project_deleted",
    ]
    assert rows[1][:4] == [wid, "a", OWNER, ""]
    assert rows[1][-1] == ""
    assert [float(x) for x in rows[1][4:6]] == [4.0, 2.0]
    # clipped: the second hour only, from an ISO time to a relative one
    since = iso_time(t0 + HOUR)
    assert served.ws("usage", "--since", since, "--until", iso_time(t0 + 2 * HOUR)) == 0
    text = out(capsys)
    assert text.splitlines()[0] == f"usage from {since} to {iso_time(t0 + 2 * HOUR)}"
    assert "2.00" in text and "1.00" in text
    # Grouped by workspace, each row gives its id as `id` too (as `ws list` does).
    assert served.ws("usage", "-o", "json") == 0
    (row,) = json.loads(out(capsys))["rows"]
    assert (row["id"], row["key"], row["name"]) == (wid, wid, "a")
    assert served.admin("usage", "--by", "user", "-o", "json") == 0
    report = json.loads(out(capsys))
    assert report["by"] == "USER"
    assert [(r["key"], r["core_hours"]) for r in report["rows"]] == [(OWNER, 4.0)]
    assert "id" not in report["rows"][0]  # a user's row: no workspace id to give


def test_csv_is_only_for_usage(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        served.ws("list", "-o", "csv")
    assert exc.value.code == common.EXIT_USAGE
    assert "only for usage reports" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "not a time"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "later than --since"),
        # no --until is now: a --since after it printed "usage from 2999-... to <now>: none"
        (["--since", "2999-01-01"], "--since is in the future"),
    ],
)
def test_bad_usage_windows_are_refused(
    served: Served, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    try:
        code = served.ws("usage", *argv)
    except SystemExit as exc:
        code = int(str(exc.code))
    assert code == common.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_times_and_durations() -> None:
    now = 1_800_000_000.0
    assert common.point_in_time("7d", now) == now - 7 * 86400
    assert common.point_in_time("24h", now) == now - 86400
    assert common.point_in_time("now", now) == now
    assert common.point_in_time("2026-11-01", now) == 1_793_491_200.0
    assert common.point_in_time("2026-11-01T01:00+01:00", now) == 1_793_491_200.0
    assert common.duration_s("1h30m") == 5400
    assert common.duration_s("90") == 90
    # No year: seconds ago, as before.
    assert common.point_in_time("1800", now) == now - 1800
    assert common.point_in_time("3600", now) == now - 3600


@pytest.mark.parametrize(
    "text",
    ["20261101", "2026-11-01", "2026-11-01T00:00Z", "2026-11-01T00:00:00+00:00", "20261101T0000Z"],
)
def test_a_date_is_a_date_in_every_iso_form(text: str) -> None:
    """`--since 20261101` was read as plain seconds: 20261101 s (234 days) ago."""
    assert common.point_in_time(text, 1_800_000_000.0) == 1_793_491_200.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20261301", "not a date"),
        ("1793491200", "seconds ago or a time"),
        ("2026", "a year or seconds ago: 2026-01-01 or 2026s"),
    ],
)
def test_an_ambiguous_number_is_refused(text: str, message: str) -> None:
    """An 8-digit number that is no date, a number of 9 digits or more (an epoch time
    read as seconds ago gave a window from 1970), and a year alone (`--since 2026` was
    2026 s ago: the last 34 minutes) say what to write instead."""
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        common.point_in_time(text, 1_800_000_000.0)
    # As seconds ago, with their unit, they are durations still.
    assert common.point_in_time(text + "s", 2_000_000_000.0) == 2_000_000_000.0 - int(text)


class _Events:
    def __init__(self, events: list[workspaces_pb2.WorkspaceEvent]) -> None:
        self.it = iter(events)

    def __iter__(self) -> _Events:
        return self

    def __next__(self) -> workspaces_pb2.WorkspaceEvent:
        return next(self.it)

    def close(self) -> None:
        pass


class _WatchClient:
    """What `ws watch` calls, answering a lease's life as the service reports it."""

    def __init__(self, steps: list[tuple[int, str]]) -> None:
        self.steps = steps

    def get_workspace(self, ref: str) -> common_pb2.Workspace:
        return common_pb2.Workspace(id="w1", name=ref)

    def watch(self, ws_id: str, **kw: object) -> _Events:
        return _Events(
            [
                workspaces_pb2.WorkspaceEvent(
                    workspace=common_pb2.Workspace(id="w1", name="a", state=st, reason=why)
                )
                for st, why in self.steps
            ]
        )

    def close(self) -> None:
        pass


def test_watch_shows_the_lease_warning_but_not_its_clearing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps = [
        (WS.WORKSPACE_STATE_RUNNING, ""),
        (WS.WORKSPACE_STATE_RUNNING, "lease ends at 2026-11-30T08:00:00Z"),
        (WS.WORKSPACE_STATE_RUNNING, ""),  # the node's next report clears the reason
        (WS.WORKSPACE_STATE_STOPPING, "lease expired at 2026-11-30T08:00:00Z"),
        (WS.WORKSPACE_STATE_STOPPED, ""),
    ]
    client = _WatchClient(steps)
    assert ws.main(["-o", "json", "watch", "a"], connect=lambda _s: client) == 0  # type: ignore[arg-type,return-value]
    shown = [json.loads(line)["workspace"] for line in out(capsys).splitlines()]
    assert [(w["state"], w["reason"]) for w in shown] == [
        ("RUNNING", ""),
        ("RUNNING", "lease ends at 2026-11-30T08:00:00Z"),
        ("STOPPING", "lease expired at 2026-11-30T08:00:00Z"),
        ("STOPPED", ""),
    ]


def test_a_deleted_projects_row_says_when_it_was_deleted() -> None:
    """A project deleted and made again is two rows (ops/usage.py): the text names the old
    one's deletion time beside its name, CSV in a last column; grouped by user, none."""
    deleted = iso_time(1_764_000_000)
    report = usage_pb2.UsageReport(
        by=usage_pb2.USAGE_GROUPING_PROJECT,
        until=Timestamp(seconds=1_764_100_000),
        rows=[
            usage_pb2.UsageRow(
                key="physics",
                project="physics",
                core_hours=6.0,
                project_deleted=Timestamp(seconds=1_764_000_000),
            ),
            usage_pb2.UsageRow(key="physics", project="physics", core_hours=2.0),
        ],
    )
    lines = usage_text.usage_report_text(report).splitlines()
    assert lines[2].split() == ["physics", "(deleted", f"{deleted})", "6.00", "0.00", "0.00"]
    assert lines[3].split() == ["physics", "2.00", "0.00", "0.00"]
    rows = list(csv.reader(io.StringIO(usage_text.usage_csv(report))))
    assert rows[0][0] == "project" and rows[0][-1] == "project_deleted"
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [
        ("physics", "6.0", deleted),
        ("physics", "2.0", ""),
    ]
    by_user = usage_pb2.UsageReport(
        by=usage_pb2.USAGE_GROUPING_USER, rows=[usage_pb2.UsageRow(key="bob", core_hours=1.0)]
    )
    header = usage_text.usage_csv(by_user).splitlines()[0]
    assert header.endswith(",preemptible_disk_gib_hours")
