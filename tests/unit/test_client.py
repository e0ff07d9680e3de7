"""The client without a service: where it finds the service, and its workspace, health
and blob RPCs against in-process fake servicers (errors, the retried create, chunked
uploads, waits that follow the watch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from workspace import chunking, client_images, errors, rpc, rpc_status
from workspace.cli import common
from workspace.cli import ws as ws_cli
from workspace.client import (
    Client,
    ServiceNotConfigured,
    ServiceUnreachable,
    WaitFailed,
    WaitTimeout,
    rebooted,
    resolve_address,
)
from workspace.codec import events as codec_events
from workspace.domain.events import EventFilter, SiteEvent
from workspace.site import record
from workspace.v1 import (
    admin_pb2_grpc,
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

WS = common_pb2.WorkspaceState


def _ws(state: int = WS.WORKSPACE_STATE_RUNNING, **kw: Any) -> common_pb2.Workspace:
    base: dict[str, Any] = {"id": "w1", "name": "alpha", "image": "img", "cpus": 1}
    base.update(kw)
    return common_pb2.Workspace(state=state, memory_mib=512, **base)


# -- address resolution ----------------------------------------------------------------


def test_address_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(record.SITE_ENV, str(tmp_path))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    with pytest.raises(ServiceNotConfigured, match="ws-admin site up"):
        resolve_address(None)
    record.write_record(tmp_path, record.SiteRecord(str(tmp_path), "unix:/site.sock", "fake"))
    assert resolve_address(None) == "unix:/site.sock"
    monkeypatch.setenv("WS_SERVICE", "env:1")
    assert resolve_address(None) == "env:1"
    assert resolve_address("flag:2") == "flag:2"


def test_a_local_site_that_is_down_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `ws-admin site down` the site's setup stays but its record goes: the error
    says the site is down, not that no service is configured."""
    monkeypatch.setenv(record.SITE_ENV, str(tmp_path))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    (tmp_path / record.SETUP_FILE).write_text("{}")
    with pytest.raises(ServiceNotConfigured, match=f"the local site in {tmp_path} is down"):
        resolve_address(None)


def test_a_local_site_whose_service_stopped_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site whose service was killed, crashed or went with a restart of the machine
    keeps its record: `ws list` found the address and said only that the socket was not
    there, not that the local site is down nor what starts it again."""
    monkeypatch.setenv(record.SITE_ENV, str(tmp_path))
    monkeypatch.delenv("WS_SERVICE", raising=False)
    address = f"unix:{tmp_path / 'service.sock'}"  # nothing listens there
    record.write_record(tmp_path, record.SiteRecord(str(tmp_path), address, "fake"))
    assert ws_cli.main(["list"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"ws: error: cannot reach the workspace service at {address}")
    assert f"the local site in {tmp_path} does not answer" in err
    assert "`ws-admin site up` starts the others" in err
    # Another service's address that cannot be reached is not taken for the site.
    assert ws_cli.main(["--service", f"unix:{tmp_path / 'other.sock'}", "list"]) == 3
    assert "local site" not in capsys.readouterr().err


def test_a_list_of_addresses_none_answers_names_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When every replica of a list failed, only the last one's error was shown, under
    the whole list: which address failed how (a typo in one, another down) was lost. Each
    is named on a line of its own; the exception carries them; the exit code is 3."""
    monkeypatch.setenv(record.SITE_ENV, str(tmp_path))
    a, b = f"unix:{tmp_path / 'a.sock'}", f"unix:{tmp_path / 'b.sock'}"
    assert ws_cli.main(["--service", f"{a},{b}", "list"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "ws: error: cannot reach the workspace service at any of the 2 addresses tried:"
    )
    assert err[1].startswith(f"  {a}: ") and "No such file or directory" in err[1]
    assert err[2].startswith(f"  {b}: ") and "No such file or directory" in err[2]
    with Client(f"{a},{b}", timeout_s=5) as client, pytest.raises(ServiceUnreachable) as caught:
        client.list_workspaces()
    assert isinstance(caught.value, errors.Unavailable)
    assert [address for address, _why in caught.value.failures] == [a, b]
    assert all("No such file" in why for _address, why in caught.value.failures)
    # A wait that loses every replica says so on one line, each address in it.
    common.outage_notice("ws: wait")(caught.value.message)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ws: wait: lost the service (cannot reach the workspace service at")
    assert f"tried: {a}: " in line and f"; {b}: " in line and line.endswith("); retrying")
    # One address: one line, as before, and the one failure.
    with Client(a, timeout_s=5) as client, pytest.raises(ServiceUnreachable) as caught:
        client.get_workspace("x")
    assert caught.value.message.startswith(f"cannot reach the workspace service at {a}: ")
    assert "\n" not in caught.value.message
    assert [address for address, _why in caught.value.failures] == [a]


def test_an_address_that_refuses_says_why_in_plain_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replica down said "failed to connect to all addresses; last error: UNKNOWN:
    ipv4:127.0.0.1:P: Failed to connect to remote host: Connection refused", a missing
    socket "FAILED_PRECONDITION: unix:/x: connect failed: addr: unix:/x error: No such
    file or directory": grpc-core's status words (not the service's: nothing answered)
    and the address again. Each address is named once, with the reason only."""
    monkeypatch.setenv(record.SITE_ENV, str(tmp_path))
    with socket.socket() as held:  # a port nothing listens on
        held.bind(("127.0.0.1", 0))
        tcp = f"127.0.0.1:{held.getsockname()[1]}"
    sock = f"unix:{tmp_path / 'a.sock'}"
    assert ws_cli.main(["--service", f"{sock},{tcp}", "list"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[1] == f"  {sock}: connect failed: No such file or directory"
    assert err[2].startswith(f"  {tcp}: ") and err[2].endswith("Connection refused")
    assert ws_cli.main(["--service", tcp, "list"]) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ws: error: cannot reach the workspace service at {tcp}: ")
    for grpc_words in ("UNKNOWN", "ipv4:", "all addresses", "last error"):
        assert grpc_words not in line, line


def test_default_site_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(record.SITE_ENV, raising=False)
    assert record.default_site_dir() == Path.home() / ".local/share/workspace/site"
    monkeypatch.setenv(record.SITE_ENV, "/srv/site")
    assert record.default_site_dir() == Path("/srv/site")


# -- the client against in-process fake servicers ----------------------------------------


class FakeWorkspaces(workspaces_pb2_grpc.WorkspacesServicer):
    def __init__(self) -> None:
        self.creates: list[str] = []
        self.fail_creates = 0
        # What the failed creates say (gRPC's words for a connection lost mid-call).
        self.creates_fail_with = "failed to connect: connection reset"
        self.creates_fail_code = grpc.StatusCode.UNAVAILABLE
        self.states = [WS.WORKSPACE_STATE_PENDING]
        # What GetWorkspace and the watch show, when more than a state matters.
        self.views: list[common_pb2.Workspace] = []
        self.drop_first_watch = False
        # How the first watch ends after its first event: (status, details).
        self.end_first_watch: tuple[grpc.StatusCode, str] | None = None
        self.watches = 0
        # GetWorkspace calls answered before the service is "away" (UNAVAILABLE), and
        # how many it then refuses (None: for ever).
        self.gets = 0
        # The time each GetWorkspace had left when it arrived (its caller's deadline).
        self.get_deadlines: list[float] = []
        self.away_after: int | None = None
        self.away_for: int | None = None
        # What gRPC says of a service that is away, with which status.
        self.away_says = "connection refused"
        self.away_code = grpc.StatusCode.UNAVAILABLE

    def _away(self, context: Any) -> None:
        if self.away_after is None or self.gets <= self.away_after:
            return
        if self.away_for is None or self.gets <= self.away_after + self.away_for:
            context.abort(self.away_code, self.away_says)

    def _shown(self) -> list[common_pb2.Workspace]:
        return self.views or [_ws(state) for state in self.states]

    def CreateWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        self.creates.append(request.request_id)
        if self.fail_creates:
            self.fail_creates -= 1
            context.abort(self.creates_fail_code, self.creates_fail_with)
        return _ws(WS.WORKSPACE_STATE_PENDING, request_id=request.request_id)

    def GetWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        self.gets += 1
        self.get_deadlines.append(context.time_remaining())
        self._away(context)
        if request.id == "bug":
            context.abort(grpc.StatusCode.INTERNAL, "internal error (incident 1)")
        if request.id == "slow":
            time.sleep(1)
        if request.id not in ("w1", "alpha"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no workspace {request.id!r}")
        return self._shown()[0]

    def StartWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        return self._shown()[0]

    def UpdateWorkspace(self, request: Any, context: Any) -> common_pb2.Workspace:
        # As a service before resizing answers: the size fields are not read.
        return self._shown()[0]

    def WatchWorkspaces(self, request: Any, context: Any) -> Iterator[Any]:
        self.watches += 1
        if self.away_after is not None and self.gets >= self.away_after:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if self.drop_first_watch and self.watches == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "socket closed")
        first, *rest = self._shown()
        yield workspaces_pb2.WorkspaceEvent(workspace=first, initial=True)
        if self.end_first_watch is not None and self.watches == 1:
            context.abort(*self.end_first_watch)
        for ws in rest:
            time.sleep(0.01)
            yield workspaces_pb2.WorkspaceEvent(workspace=ws)
        while context.is_active():
            time.sleep(0.01)


class FakeImages(images_pb2_grpc.ImagesServicer):
    def __init__(self) -> None:
        self.chunks: list[int] = []  # the sizes of the last upload's chunks, as they came
        self.said = 0  # the size its first chunk said (0: none)
        self.stored: list[int] = []  # the sizes of the uploads answered (as the service,
        # which stores none that ends at another size than it said)
        # Take one chunk, then read no more (a hung service, a stuck blob directory).
        self.stall = False
        # Take every chunk, then answer UNAVAILABLE with these words (its store read-only).
        self.refuse_with = ""

    def UploadBlob(self, request_iterator: Any, context: Any) -> images_pb2.BlobRef:
        if self.stall:
            next(request_iterator)
            while context.is_active():
                time.sleep(0.05)
            return images_pb2.BlobRef()
        self.chunks, self.said = [], 0
        for c in request_iterator:  # a cancel may end it as a clean end would
            self.said = c.size_bytes if not self.chunks else self.said
            self.chunks.append(len(c.data))
        if self.said and sum(self.chunks) != self.said:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not the size it said")
        if self.refuse_with:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.refuse_with)
        self.stored.append(sum(self.chunks))
        return images_pb2.BlobRef(digest="sha256:ab", size_bytes=sum(self.chunks))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Client, FakeWorkspaces, FakeImages]]:
    server = rpc.server(8)
    wsvc, isvc = FakeWorkspaces(), FakeImages()
    workspaces_pb2_grpc.add_WorkspacesServicer_to_server(wsvc, server)
    images_pb2_grpc.add_ImagesServicer_to_server(isvc, server)
    hsvc = health.HealthServicer()
    hsvc.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hsvc, server)
    address = f"unix:{tmp_path}/s.sock"
    rpc.bind(server, address)
    server.start()
    client = Client(address, timeout_s=5)
    try:
        yield client, wsvc, isvc
    finally:
        client.close()
        server.stop(0).wait()


def test_client_health_and_errors(served: tuple[Client, FakeWorkspaces, FakeImages]) -> None:
    client, _, _ = served
    assert client.health() == "SERVING"
    with pytest.raises(errors.NotFound, match="no workspace 'nope'"):
        client.get_workspace("nope")
    with pytest.raises(errors.Unavailable, match="cannot reach the workspace service"):
        Client("unix:/nonexistent/ws.sock", timeout_s=2).list_workspaces()
    # A name that does not resolve (a typo in $WS_SERVICE) says the same, not grpc's words.
    with pytest.raises(errors.Unavailable, match="cannot reach the workspace service at no-") as e:
        Client("no-such-host.invalid:1", timeout_s=2).list_workspaces()
    # A name that does not resolve is not helped by an identity: no hint that it would be.
    assert "identity" not in e.value.message


def test_a_service_that_answered_and_went_away_is_not_said_to_want_an_identity(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """The service killed during a call (a `ws image save` that waits for the node's copy,
    a `ws cluster scale`): gRPC says "Stream removed (...)", and the client, given no
    identity, said "(no identity given: a service with mutual TLS needs --identity DIR
    ...)" of a plaintext service that had taken the call, or answered a moment before.
    Only a service that never let a call through may want one."""
    client, wsvc, _ = served
    # What gRPC says where a TLS service refused a plaintext connection: an identity may help.
    wsvc.away_says = "failed to connect to all addresses; last error: UNAVAILABLE: Socket closed"
    with Client(client.address, timeout_s=5) as fresh:
        wsvc.away_after = wsvc.gets
        with pytest.raises(errors.Unavailable) as never:
            fresh.get_workspace("w1")
    assert "(no identity given: a service with mutual TLS needs " in never.value.message
    # The first call of a client, its stream torn down under it: the service was there.
    wsvc.away_says = "Stream removed (recvmsg:Connection reset by peer (104))"
    with Client(client.address, timeout_s=5) as fresh, pytest.raises(errors.Unavailable) as cut:
        fresh.get_workspace("w1")
    assert "identity" not in cut.value.message
    assert "(it went away during the call: it stopped or restarted)" in cut.value.message
    wsvc.away_says = "connection refused"
    wsvc.away_after = None
    assert client.get_workspace("w1").id
    wsvc.away_after = wsvc.gets
    with pytest.raises(errors.Unavailable) as lost:
        client.get_workspace("w1")
    assert lost.value.message.startswith(f"cannot reach the workspace service at {client.address}")
    assert "identity" not in lost.value.message
    assert "(it answered this client before: it stopped or restarted since)" in lost.value.message


def test_an_error_says_the_status_it_came_with(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """INTERNAL, UNKNOWN-like and DEADLINE_EXCEEDED are told apart without the message."""
    client, _, _ = served
    with pytest.raises(errors.NotFound) as not_found:
        client.get_workspace("nope")
    assert not_found.value.code == "NOT_FOUND"
    with pytest.raises(errors.WorkspaceError) as internal:
        client.get_workspace("bug")
    assert type(internal.value) is errors.WorkspaceError
    assert internal.value.code == "INTERNAL"
    with (
        Client(client.address, timeout_s=0.2) as hasty,
        pytest.raises(errors.Unavailable, match="did not answer in time") as late,
    ):
        hasty.get_workspace("slow")
    assert late.value.code == "DEADLINE_EXCEEDED"
    with pytest.raises(errors.Unavailable) as away:
        Client("unix:/nonexistent/ws.sock", timeout_s=2).list_workspaces()
    assert away.value.code == "UNAVAILABLE"
    assert errors.InvalidArgument("raised here").code is None


def test_a_call_the_service_does_not_know_says_it_is_older_than_the_client(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """A user who upgraded `ws` before the site's service upgraded it (here: a service
    without the Clusters API) was told "ws: error: Method not found!"."""
    client, _, _ = served
    with pytest.raises(errors.FailedPrecondition) as info:
        client.list_clusters()
    assert info.value.message.startswith(
        f"the workspace service at {client.address} does not know this call (Method not "
        "found!): it runs an older release than this client; upgrade the service"
    )
    assert info.value.code == "UNIMPLEMENTED"
    assert common.exit_code(info.value) == common.EXIT_REQUEST


def test_a_resize_a_service_of_an_older_release_ignores_is_not_taken_for_done(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """`ws update alpha --cpus 2` against a service before resizing exited 0 and showed
    alpha as it was: the service had not read the fields, and said OK."""
    client, _, _ = served
    with pytest.raises(errors.FailedPrecondition) as info:
        client.update_workspace("alpha", cpus=2, memory_mib=1024)
    assert info.value.message.startswith(
        f"the workspace service at {client.address} did not resize alpha, still cpus 1 "
        "(asked 2), memory_mib 512 (asked 1024): it runs an older release than this client"
    )
    assert client.update_workspace("alpha", cpus=1).cpus == 1  # its size: nothing to do


class OlderAdmin(admin_pb2_grpc.AdminServicer):
    """WatchEvents as a service before its filters answers: every event, whatever asked."""

    EVENTS = (
        SiteEvent(1.0, "node.registered", "node:n1", node="n1", id=1),
        SiteEvent(2.0, "workspace.created", "user:ana", "w1", "alpha", "n1", id=2),
        SiteEvent(3.0, "workspace.state", "node:n2", "w2", "beta", "n2", "c1", id=3),
        SiteEvent(4.0, "image.added", "user:ana", subject="img", id=4),
    )

    def WatchEvents(self, request: Any, context: Any) -> Iterator[Any]:
        yield from map(codec_events.event_to_proto, self.EVENTS)


def test_site_events_a_service_of_an_older_release_does_not_filter_are_filtered(
    tmp_path: Path,
) -> None:
    """`ws-admin events --node n1` (or --kind, --workspace) against a service before
    those filters listed every event of the site, as if all were n1's. The client keeps
    to the filter; a cluster named it cannot tell, and says the service is older."""
    server = rpc.server(2)
    admin_pb2_grpc.add_AdminServicer_to_server(OlderAdmin(), server)
    address = f"unix:{tmp_path}/old.sock"
    rpc.bind(server, address)
    server.start()
    try:
        with Client(address, timeout_s=5) as client:

            def ids(**which: Any) -> list[int]:
                return [e.id for e in client.watch_events(which=EventFilter(**which))]

            assert ids() == [1, 2, 3, 4]
            assert ids(node="n1") == [1, 2]
            assert ids(kinds=("workspace",)) == [2, 3]
            assert ids(kinds=("image.added", "node.registered")) == [1, 4]
            assert ids(workspace="beta") == ids(workspace="w2") == [3]
            with pytest.raises(errors.FailedPrecondition) as info:
                ids(cluster="hpc")
            assert info.value.message.startswith(
                f"the workspace service at {address} did not keep to cluster hpc: it runs "
                "an older release than this client"
            )
    finally:
        server.stop(0).wait()


class OlderProjects(projects_pb2_grpc.ProjectsServicer):
    """A service before the preemptible disk quota: it does not read the field."""

    def CreateProject(self, request: Any, context: Any) -> projects_pb2.Project:
        request.quota.ClearField("preemptible_disk_gib")
        return request

    def SetProjectDefaults(self, request: Any, context: Any) -> projects_pb2.Project:
        quota = projects_pb2.Quota(instances=request.quota.instances)
        return projects_pb2.Project(name=request.project, quota=quota)


def test_a_quota_a_service_of_an_older_release_ignores_is_not_taken_for_set(
    tmp_path: Path,
) -> None:
    """`ws-admin project create p --quota-preemptible-disk-gib 50` (and `project set`)
    against a service before that quota exited 0, the project without it."""
    server = rpc.server(2)
    projects_pb2_grpc.add_ProjectsServicer_to_server(OlderProjects(), server)
    address = f"unix:{tmp_path}/old.sock"
    rpc.bind(server, address)
    server.start()
    try:
        with Client(address, timeout_s=5) as client:
            with pytest.raises(errors.FailedPrecondition) as info:
                client.create_project("p", {"instances": 3, "preemptible-disk-gib": 50})
            assert info.value.message.startswith(
                f"the workspace service at {address} did not set project p's quota "
                "preemptible_disk_gib 50 (it has 0): it runs an older release than this client"
            )
            with pytest.raises(errors.FailedPrecondition, match="preemptible_disk_gib 60"):
                client.set_project("p", quota={"preemptible-disk-gib": 60})
            assert client.set_project("p", quota={"instances": 4}).quota.instances == 4
    finally:
        server.stop(0).wait()


def test_a_request_too_large_to_send_says_so(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """gRPC's own words were "CLIENT: Sent message larger than max (20971584 vs. 16777216)"."""
    client, wsvc, _ = served
    with pytest.raises(errors.ResourceExhausted) as info:
        client.create_workspace("img", user_data=b"#!/bin/sh\n" + b"#" * (20 * 2**20))
    assert info.value.message.startswith(
        "the request is 20.0 MiB, more than the 16.0 MiB one message may carry"
    )
    assert wsvc.creates == []


def test_a_wrong_argument_is_the_clients_invalid_argument(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """``create_workspace(cpus=2**40)`` or ``(name=123)`` raised protobuf's bare
    ValueError/TypeError, which a program catching ``WorkspaceError`` (README, "The Python
    client") let through: it is InvalidArgument naming the method, and nothing is sent."""
    client, wsvc, _ = served
    wrong: list[dict[str, Any]] = [
        {"cpus": 2**40},
        {"memory_mib": 2**64},
        {"name": 123},
        {"user_data": "#!/bin/sh"},
        {"requirements": {"gpu": 1}},
        {"limits": {"no_such_limit": 1}},  # the client's own check
    ]
    for kwargs in wrong:
        with pytest.raises(errors.InvalidArgument, match=r"^create_workspace: ") as bad:
            client.create_workspace("img", **kwargs)
        assert bad.value.code is None, kwargs
        # Still what it was for a caller that caught protobuf's errors.
        assert isinstance(bad.value, ValueError | TypeError)
    assert wsvc.creates == []
    # The README lists BadArgument with the workspace.errors classes a program catches:
    # it was only in workspace.client (`errors.BadArgument` was an AttributeError).
    with pytest.raises(errors.BadArgument, match=r"^create_workspace: "):
        client.create_workspace("img", cpus="2")
    with pytest.raises(errors.InvalidArgument, match=r"^stop_workspace: "):
        client.stop_workspace("alpha", timeout_s=2**33)
    with pytest.raises(errors.InvalidArgument, match=r"^watch: "):
        next(client.watch(id=5))  # type: ignore[arg-type]
    # A caller's own mistake in a callback stays the caller's.

    def broken(ws: common_pb2.Workspace) -> bool:
        raise TypeError("the caller's")

    with pytest.raises(TypeError, match="the caller's") as theirs:
        client.wait_until("w1", broken, "a condition", timeout_s=5)
    assert not isinstance(theirs.value, errors.WorkspaceError)


def test_one_string_where_a_list_of_strings_belongs_is_a_wrong_argument(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """Protobuf and ``list()`` take a string for a list of strings a character at a
    time: ``exec(id, "uname -a")`` ran the command ``u`` with the arguments ``n``, ``a``,
    ..., ``networks="default"`` asked for the network ``d``. It is refused, and nothing
    is sent."""
    client, wsvc, _ = served
    for kwargs in ({"networks": "default"}, {"allow": "tcp/22"}):
        with pytest.raises(errors.InvalidArgument, match=r"^create_workspace: ") as bad:
            client.create_workspace("img", **kwargs)  # type: ignore[arg-type]
        assert bad.value.code is None
        assert "not the string" in bad.value.message
    assert wsvc.creates == []
    with pytest.raises(errors.InvalidArgument, match=r"^exec: .*argv.*'uname -a'"):
        client.exec("alpha", "uname -a")
    with pytest.raises(errors.InvalidArgument, match=r"^watch_workspace_events: .*kinds"):
        client.watch_workspace_events("alpha", kinds="workspace.state")  # type: ignore[arg-type]
    # The admins' watch takes its kinds in an EventFilter: the same (it was sent as
    # fifteen one-letter kinds, and refused naming them).
    with pytest.raises(errors.InvalidArgument, match=r"^watch_events: .*which.kinds"):
        client.watch_events(which=EventFilter(kinds="workspace.state"))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match=r"^create_cluster: .*networks"):
        client.create_cluster(name="c", members=[{"role": "r", "networks": "default"}])
    # A tuple or any other iterable of strings is as good as a list.
    assert client.create_workspace("img", networks=("default",)).request_id


def test_a_wrong_argument_is_found_where_packages_lie_inside_the_standard_library(
    served: tuple[Client, FakeWorkspaces, FakeImages], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python without a venv (Docker's python images, pyenv) installs packages inside
    the standard library's directory: the client's and protobuf's frames are still
    theirs, and a caller's callback installed there is still the caller's."""
    from workspace import client_args

    client, _, _ = served
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setattr(client_args, "_STDLIB_DIR", str(repo.parent))
    monkeypatch.setattr(client_args, "_SITE_DIRS", (str(repo) + os.sep,))
    with pytest.raises(errors.InvalidArgument, match=r"^create_workspace: "):
        client.create_workspace("img", cpus=2**40)

    def broken(ws: common_pb2.Workspace) -> bool:
        raise TypeError("the caller's")

    with pytest.raises(TypeError, match="the caller's") as theirs:
        client.wait_until("w1", broken, "a condition", timeout_s=5)
    assert not isinstance(theirs.value, errors.WorkspaceError)


def test_create_retries_with_the_same_request_id(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.fail_creates = 1
    w = client.create_workspace("img")
    assert len(wsvc.creates) == 2 and wsvc.creates[0] == wsvc.creates[1] == w.request_id
    # Nothing left this process (no service there): sent again once, then the error.
    wsvc.creates.clear()
    wsvc.creates_fail_with = "failed to connect to all addresses; last error: refused"
    wsvc.fail_creates = 2
    with pytest.raises(errors.Unavailable):
        client.create_workspace("img", request_id="mine")
    assert wsvc.creates == ["mine", "mine"]
    # The service went away during the call (it may have made the workspace): sent again
    # until it answers, so a restart ends in the workspace made once, not in an error.
    wsvc.creates.clear()
    wsvc.creates_fail_with = "Stream removed (recvmsg:Connection reset by peer (104))"
    wsvc.fail_creates = 4
    assert client.create_workspace("img", request_id="cut").request_id == "cut"
    assert wsvc.creates == ["cut"] * 5
    # ... within the client's timeout.
    wsvc.creates.clear()
    wsvc.fail_creates = 1000
    with Client(client.address, timeout_s=2) as hasty, pytest.raises(errors.Unavailable):
        hasty.create_workspace("img", request_id="gone")
    assert len(wsvc.creates) >= 2 and set(wsvc.creates) == {"gone"}
    # The service's own UNAVAILABLE (its store away, its data directory read-only) came
    # with nothing made: sent again once, as before.
    wsvc.creates.clear()
    wsvc.creates_fail_with = "the service's data directory is read-only (Read-only file system)"
    with pytest.raises(errors.Unavailable, match="read-only"):
        client.create_workspace("img", request_id="ro")
    assert wsvc.creates == ["ro", "ro"]
    # A server that stopped under the create ended it CANCELLED (it may have made the
    # workspace): sent again, as a connection it cut. `ws create` said "stopped during
    # the call; a change asked may or may not have been made" (exit 3), and a user who
    # ran it again got a second workspace.
    wsvc.creates.clear()
    wsvc.creates_fail_code, wsvc.creates_fail_with = grpc.StatusCode.CANCELLED, ""
    wsvc.fail_creates = 1
    assert client.create_workspace("img", request_id="stopped").request_id == "stopped"
    assert wsvc.creates == ["stopped", "stopped"]


def test_a_create_one_replica_went_away_under_is_sent_until_answered(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    """Two replicas: the first went away under the create (it may have made the
    workspace), the second is down too (nothing listens). The client judged the create
    by the last replica's error alone, "never sent", and sent it once more: it failed
    "cannot reach" while the first restarted, and a user who ran the create again got a
    second workspace. It is sent again, the same id, until a replica answers."""
    client, wsvc, _ = served
    down = f"unix:{tmp_path}/down.sock"  # nothing listens there
    wsvc.creates_fail_with = "Stream removed (recvmsg:Connection reset by peer (104))"
    wsvc.fail_creates = 3
    with Client(f"{client.address},{down}", timeout_s=10) as replicas:
        made = replicas.create_workspace("img", request_id="twice")
    assert made.request_id == "twice"
    assert wsvc.creates == ["twice"] * 4  # each one reached the first replica


def test_upload_blob_streams_chunks_of_at_most_the_chunking_maximum(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    """Chunks of 16 to 256 KiB (workspace/chunking.py), far under gRPC's message limit,
    with a progress report after each; the file's bytes all sent, once."""
    client, _, isvc = served
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    seen: list[tuple[int, int]] = []
    ref = client.upload_blob(path, lambda sent, total: seen.append((sent, total)))
    total = path.stat().st_size
    assert sum(isvc.chunks) == total == ref.size_bytes == isvc.said  # said in the first
    assert all(0 < n <= chunking.MAX_BYTES for n in isvc.chunks), isvc.chunks
    assert chunking.MAX_BYTES < rpc.MAX_MESSAGE_BYTES
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert len(seen) == len(isvc.chunks) + 1


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_an_upload_of_a_file_that_changes_size_meanwhile_is_cancelled_saying_so(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path, change: str
) -> None:
    """`ws-admin image import disk.img` while disk.img is still being written (a copy, a
    download): the client read it to wherever its end was and the service stored that,
    a cut or spliced disk made into an image with nothing said (an upload that says no
    digest is checked against none). Now the upload stops at the size the file had when
    it began and is cancelled, nothing stored, when the file is longer or shorter."""
    client, _, isvc = served
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1024 * 1024))
    done = {"changed": False}

    def meanwhile(sent: int, total: int) -> None:
        if sent and not done["changed"]:
            done["changed"] = True
            if change == "grows":
                with path.open("ab") as f:
                    f.write(os.urandom(1024 * 1024))
            else:
                os.truncate(path, sent + 10)

    with pytest.raises(errors.InvalidArgument) as got:
        client.upload_blob(path, meanwhile)
    now = path.stat().st_size
    assert got.value.message == (
        f"{path} changed while it was sent (1048576 bytes when the upload began, now {now}); "
        "nothing was stored; try again once nothing writes to it"
    ), got.value.message
    # The call was cancelled short of the size it said (a cancel may reach the service as
    # a clean end of the stream, when it saw fewer bytes than the size said): nothing
    # stored, whichever it saw.
    assert sum(isvc.chunks) < 1024 * 1024
    assert isvc.stored == []


def test_an_upload_of_a_file_that_grows_as_its_last_chunk_is_read_is_cut_short(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    """The file grew just as the chunk that completes its size was read: the client
    sent that chunk, found more to read and cancelled the call with the whole size
    sent, which gRPC's server may see as the stream's clean end, the blob stored. It now
    checks the file before it sends the chunk that completes the size, and gives up
    before it: the service sees a stream short of the size it said, and stores nothing."""
    client, _, isvc = served
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(chunking.START_BYTES))  # one chunk, the first read's size

    def meanwhile(sent: int, total: int) -> None:
        if not sent:  # before the first (and last) chunk is read
            with path.open("ab") as f:
                f.write(os.urandom(1024 * 1024))

    with pytest.raises(errors.InvalidArgument, match=r"changed while it was sent"):
        client.upload_blob(path, meanwhile)
    assert sum(isvc.chunks) < chunking.START_BYTES  # none of it came
    assert isvc.stored in ([], [0])  # at most an empty stream, whose end it may see


def test_an_upload_the_service_refuses_itself_is_not_said_to_be_cut_short(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    """A service whose data directory is read-only takes the whole file, then answers
    UNAVAILABLE in its own words. `ws image push` said "the workspace service ... went
    away during the upload of ... after N of M bytes; nothing was stored, try again": it
    had not gone away, and trying again does the same. Its own words, as for any call."""
    client, _, isvc = served
    isvc.refuse_with = "the service's data directory is read-only (the database is read-only)"
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    with pytest.raises(errors.Unavailable) as got:
        client.upload_blob(path)
    assert got.value.message == isvc.refuse_with
    assert got.value.code == "UNAVAILABLE"
    assert sum(isvc.chunks) == path.stat().st_size  # the service did take it all


def test_a_small_upload_cut_short_is_said_to_have_gone_away(
    served: tuple[Client, FakeWorkspaces, FakeImages], tmp_path: Path
) -> None:
    """A file smaller than one chunk, its stream torn down after gRPC took it all: the
    bytes counted taken lagged one chunk behind, so none were counted, and `ws image
    push` said "cannot reach the workspace service" of a service that had taken the
    file; and gRPC's bare "Stream removed" was read as the service's own words."""
    client, _, isvc = served
    isvc.refuse_with = "Stream removed"
    path = tmp_path / "small"
    path.write_bytes(b"x" * 100)
    with pytest.raises(errors.Unavailable) as got:
        client.upload_blob(path)
    assert got.value.message == (
        f"the workspace service at {client.address} went away during the upload of "
        f"{path} (Stream removed) after 100 of 100 bytes; nothing was stored, try again"
    )


def test_a_bare_stream_removed_is_a_lost_connection(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """gRPC says only "Stream removed" (no socket error after it) where the stream was
    reset under the call: the client gave that as the service's answer, not as a
    service that went away."""
    client, wsvc, _ = served
    assert client.get_workspace("w1").id
    wsvc.away_says = "Stream removed"
    wsvc.away_after = wsvc.gets
    with pytest.raises(ServiceUnreachable) as cut:
        client.get_workspace("w1")
    assert cut.value.message.startswith(f"cannot reach the workspace service at {client.address}")
    assert "Stream removed" in cut.value.message


def test_an_upload_the_service_stops_taking_is_given_up(
    served: tuple[Client, FakeWorkspaces, FakeImages],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload had no deadline: one to a service that stopped reading it (hung, its
    blob directory stuck) waited for ever, also where keepalive pings wait behind the
    held-back chunks (a unix socket, as here)."""
    client, _, isvc = served
    isvc.stall = True
    monkeypatch.setattr(client_images, "UPLOAD_STALL_S", 2.0, raising=False)
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    got: list[BaseException] = []

    def upload() -> None:
        try:
            client.upload_blob(path)
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the upload still waits for the service"
    assert isinstance(got[0], errors.Unavailable), got
    assert got[0].code == "DEADLINE_EXCEEDED"
    assert "took no data of the upload" in got[0].message and str(path) in got[0].message


def test_wait_for_state_follows_the_watch(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.states = [
        WS.WORKSPACE_STATE_PENDING,
        WS.WORKSPACE_STATE_STARTING,
        WS.WORKSPACE_STATE_RUNNING,
    ]
    wsvc.drop_first_watch = True  # the first stream drops: the wait re-opens it
    seen: list[str] = []
    w = client.wait_for_state(
        "alpha", [WS.WORKSPACE_STATE_RUNNING], 10, lambda x: seen.append(WS.Name(x.state))
    )
    assert w.state == WS.WORKSPACE_STATE_RUNNING and wsvc.watches == 2
    assert seen == [
        "WORKSPACE_STATE_PENDING",
        "WORKSPACE_STATE_STARTING",
        "WORKSPACE_STATE_RUNNING",
    ]


def test_a_call_its_service_cancelled_as_it_stopped_is_an_outage_and_a_wait_goes_on(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """A service that stops ends the calls it has not answered CANCELLED (no words): `ws
    list` said "ws: error: CANCELLED" with exit 1, and a `--wait` whose watch or read
    was one of them ended so, where docs/design/cli.md says a wait that loses the service
    keeps waiting. It is an outage: Unavailable (exit 3), and the wait watches again."""
    client, wsvc, _ = served
    wsvc.away_code, wsvc.away_says = grpc.StatusCode.CANCELLED, ""
    wsvc.away_after, wsvc.away_for = wsvc.gets, 1
    with pytest.raises(errors.Unavailable) as cut:
        client.get_workspace("w1")
    assert cut.value.code == "CANCELLED"
    assert f"the workspace service at {client.address} stopped during the call" in (
        cut.value.message
    )
    assert common.exit_code(cut.value) == common.EXIT_UNREACHABLE
    assert client.get_workspace("w1").id  # back

    wsvc.away_after = None
    wsvc.states = [
        WS.WORKSPACE_STATE_PENDING,
        WS.WORKSPACE_STATE_STARTING,
        WS.WORKSPACE_STATE_RUNNING,
    ]
    wsvc.watches, wsvc.end_first_watch = 0, (grpc.StatusCode.CANCELLED, "")
    w = client.wait_for_state("alpha", [WS.WORKSPACE_STATE_RUNNING], 10)
    assert w.state == WS.WORKSPACE_STATE_RUNNING and wsvc.watches == 2
    # A watch that reconnects (`ws watch`) opens it again too.
    wsvc.watches = 0
    told: list[str] = []
    events = client.watch(reconnect=True, timeout_s=10, on_outage=told.append)
    try:
        assert next(events).initial
        assert next(events).initial  # the re-list of a new watch
    finally:
        events.close()
    assert wsvc.watches == 2 and told[0] == "it stopped during the call"


@pytest.mark.parametrize("how", ["watch", "wait"])
def test_closing_the_client_under_a_watch_or_a_wait_ends_it_and_is_no_outage(
    served: tuple[Client, FakeWorkspaces, FakeImages], how: str
) -> None:
    """A program that closes its Client from another thread (shutting down) ends the
    watch or wait under way CANCELLED ("Channel closed!"), a cancel of its own. Taken for
    a service that stopped, the reconnecting watch and the wait went on on the closed
    channel and ended in "ValueError: Cannot invoke RPC on closed channel!"; and a call
    said "the workspace service ... stopped during the call" though it had not."""
    address = served[0].address
    wsvc = served[1]
    wsvc.states = [WS.WORKSPACE_STATE_PENDING]  # never RUNNING: the wait goes on
    client = Client(address, timeout_s=5)
    told: list[str] = []
    ended: list[BaseException] = []

    def run() -> None:
        try:
            if how == "watch":
                for _ in client.watch(reconnect=True, timeout_s=30, on_outage=told.append):
                    pass
            else:
                client.wait_for_state("alpha", [WS.WORKSPACE_STATE_RUNNING], 30)
        except BaseException as exc:  # what the program sees
            ended.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    for _ in range(600):  # its watch is open
        if wsvc.watches:
            break
        time.sleep(0.05)
    assert wsvc.watches
    client.close()
    t.join(60)
    assert not t.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], errors.WorkspaceError), ended
    assert not isinstance(ended[0], errors.Unavailable), ended[0]
    assert ended[0].code == "CANCELLED" and "Channel closed" in ended[0].message
    assert isinstance(ended[0], errors.ClientClosed), ended[0]
    assert told == [] and wsvc.watches == 1


def test_a_call_on_a_closed_client_is_a_workspace_error(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """A program sharing one Client between threads, one of which closes it (shutting
    down), met gRPC's bare ``ValueError: Cannot invoke RPC on closed channel!`` in a
    thread whose call began just after the close, where one that began just before got a
    ``WorkspaceError``: ``except WorkspaceError`` let it through. Each call of a closed
    client is ``ClientClosed``, a WorkspaceError (code None: nothing was sent) and still
    the ValueError it was."""
    address = served[0].address
    client = Client(address, timeout_s=5)
    assert client.get_workspace("alpha").id == "w1" and not client.closed
    with client:
        pass  # the end of a with block closes it
    assert client.closed
    calls = {
        "get_workspace": lambda: client.get_workspace("alpha"),
        "list_workspaces": lambda: client.list_workspaces(),
        "create_workspace": lambda: client.create_workspace("img", request_id="r1"),
        "wait_for_state": lambda: client.wait_for_state("alpha", [WS.WORKSPACE_STATE_RUNNING]),
        "watch": lambda: next(client.watch(reconnect=True)),
        "health": lambda: client.health(),
    }
    for name, call in calls.items():
        with pytest.raises(errors.WorkspaceError, match=r"^\w+: the client is closed") as e:
            call()
        assert isinstance(e.value, errors.ClientClosed) and isinstance(e.value, ValueError)
        assert e.value.code is None, name
    assert served[1].creates == []
    # A ValueError of the caller's own callback stays the caller's, closed or not.

    def broken(ws: common_pb2.Workspace) -> bool:
        raise ValueError("the caller's")

    with pytest.raises(ValueError, match="the caller's") as theirs:
        served[0].wait_until("w1", broken, "a condition", timeout_s=5)
    assert not isinstance(theirs.value, errors.WorkspaceError)


def test_only_a_cancel_the_service_sent_is_an_outage() -> None:
    """gRPC's own words for a call this process ended (cancelled, channel closed or
    collected) are no outage; a bare CANCELLED from the other side is."""

    class Ended(grpc.RpcError):
        def __init__(self, details: str, mine: bool = False) -> None:
            self._details, self._mine = details, mine

        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.CANCELLED

        def details(self) -> str:
            return self._details

        def cancelled(self) -> bool:
            return self._mine

    assert rpc_status.cancelled_by_service(Ended(""))
    assert rpc_status.cancelled_by_service(Ended("Cancelled"))
    for said in (
        "Locally cancelled by application!",
        "Channel closed!",
        "Stream removed (Channel closed!)",
        "Channel deallocated!",
        "Cancelled upon garbage collection!",
        "Call cancelled in fork child",
    ):
        assert not rpc_status.cancelled_by_service(Ended(said)), said
    assert not rpc_status.cancelled_by_service(Ended("", mine=True))


def test_wait_for_state_fails_and_times_out(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.states = [WS.WORKSPACE_STATE_STARTING, WS.WORKSPACE_STATE_FAILED]
    with pytest.raises(WaitFailed, match="is FAILED"):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 10)
    wsvc.states = [WS.WORKSPACE_STATE_STARTING]
    with pytest.raises(WaitTimeout, match="it is STARTING"):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 0.5)
    # A caller's remainder of a deadline is named as the time it stands for. The
    # workspace by the name the user knows and its id (`ws create --wait` waits by the
    # id of the one it made: "waiting for workspace 3960c9daa910" named it by id only).
    with pytest.raises(
        WaitTimeout, match=r"^timed out after 0\.5 s waiting for workspace alpha \(w1\) to be"
    ):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 0.4999987)
    gone = client.wait_for_state("gone", [WS.WORKSPACE_STATE_TERMINATED], 1)
    assert gone.state == WS.WORKSPACE_STATE_TERMINATED
    # Never seen (a wrong id or name): the service's NOT_FOUND as it is; it was "workspace
    # gone no longer exists" with no code, as if one had been there.
    with pytest.raises(errors.NotFound, match=r"^no workspace 'gone'$") as missing:
        client.wait_for_state("gone", [WS.WORKSPACE_STATE_RUNNING], 1)
    assert missing.value.code == "NOT_FOUND"


def test_wait_for_reboot_waits_for_the_node_to_carry_it_out(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    running = WS.WORKSPACE_STATE_RUNNING
    wsvc.views = [
        _ws(running, reboot_count=2, applied_reboot_count=1),  # RUNNING all along
        _ws(running, reboot_count=2, applied_reboot_count=1),
        _ws(running, reboot_count=2, applied_reboot_count=2),
    ]
    seen: list[tuple[int, int]] = []
    w = client.wait_for_reboot(
        "alpha", 2, 10, lambda x: seen.append((x.state, x.applied_reboot_count))
    )
    assert w.applied_reboot_count == 2 and rebooted(w, 2) is True
    assert seen == [(running, 1), (running, 2)]  # each change of the count, once
    # Not carried out in time: the timeout says how far it got.
    wsvc.views = [_ws(running, reboot_count=2, applied_reboot_count=1)]
    with pytest.raises(
        WaitTimeout, match="RUNNING with reboot 2 carried out; it is RUNNING, 1 of 2"
    ):
        client.wait_for_reboot("alpha", 2, 0.5)
    # Stopped before the reboot came: it will not come while it is stopped.
    wsvc.views = [
        _ws(running, reboot_count=2, applied_reboot_count=1),
        _ws(
            WS.WORKSPACE_STATE_STOPPING,
            reboot_count=2,
            applied_reboot_count=1,
            desired_state=common_pb2.DESIRED_STATE_STOPPED,
        ),
    ]
    with pytest.raises(WaitFailed, match="is to be STOPPED now, no longer RUNNING"):
        client.wait_for_reboot("alpha", 2, 10)


def test_wait_for_reboot_cannot_confirm_on_a_node_that_does_not_report_reboots(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """An agent older than ObservedWorkspace.applied_reboot_count: RUNNING is all a
    waiter can have, as before; ``rebooted`` says None (unknown) rather than False."""
    client, wsvc, _ = served
    wsvc.views = [_ws(WS.WORKSPACE_STATE_RUNNING, reboot_count=2)]
    w = client.wait_for_reboot("alpha", 2, 10)
    assert not w.HasField("applied_reboot_count") and rebooted(w, 2) is None


def test_wait_until_takes_any_condition(served: tuple[Client, FakeWorkspaces, FakeImages]) -> None:
    client, wsvc, _ = served
    wsvc.views = [_ws(reason=""), _ws(reason="lease ends soon")]
    w = client.wait_until("alpha", lambda x: bool(x.reason), "warned", 10)
    assert w.reason == "lease ends soon"
    with pytest.raises(WaitTimeout, match="to be warned; it is RUNNING"):
        client.wait_until("alpha", lambda x: x.cpus > 1, "warned", 0.3)


def test_a_wait_says_when_it_loses_the_service_and_a_timeout_says_since_when(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """`ws create --wait` once sat silent for its whole timeout while the service was
    down, then said "it is STARTING" as if it had just looked."""
    client, wsvc, _ = served
    wsvc.states = [WS.WORKSPACE_STATE_STARTING]
    wsvc.away_after = 1  # the first read answers, then the service is gone
    told: list[str] = []
    with pytest.raises(WaitTimeout) as err:
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 1.5, on_outage=told.append)
    assert len(told) == 1 and "connection refused" in told[0]
    assert "it was STARTING when last seen; the service has not answered since " in str(err.value)
    # It comes back: told once more, and the wait goes on to its end.
    wsvc.gets, wsvc.away_for = 0, 2
    told.clear()
    got = client.wait_until("w1", lambda ws: wsvc.gets > 4, "read again", 20, on_outage=told.append)
    assert got.state == WS.WORKSPACE_STATE_STARTING
    assert len(told) == 2 and "connection refused" in told[0] and told[1] == ""


def test_a_wait_begun_while_the_service_is_away_waits_for_it(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """The first read of a wait raised Unavailable at once (a batch system's
    wait_for_state right after a create, while the service restarted), though a read
    failing later in the same wait is retried until its deadline."""
    client, wsvc, _ = served
    wsvc.states = [WS.WORKSPACE_STATE_RUNNING]
    wsvc.away_after, wsvc.away_for = 0, 2  # the first two reads are refused
    told: list[str] = []
    got = client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 20, on_outage=told.append)
    assert got.state == WS.WORKSPACE_STATE_RUNNING and wsvc.gets == 3
    assert len(told) == 2 and "connection refused" in told[0] and told[1] == ""
    wsvc.gets, wsvc.away_for = 0, None  # away for good: the wait's own timeout
    with pytest.raises(WaitTimeout, match="the service has not answered since "):
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 1.5)


def test_a_wait_reads_within_its_own_timeout(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """Each read of a wait had the client's whole timeout (30 s by default): a service
    that did not answer kept `ws create --wait --timeout 5` waiting 30 s more. A read is
    given what is left of the wait when that is less."""
    client, wsvc, _ = served
    wsvc.states = [WS.WORKSPACE_STATE_STARTING]
    with Client(client.address, timeout_s=60) as patient:
        with pytest.raises(WaitTimeout):
            patient.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 3)
        assert len(wsvc.get_deadlines) >= 2
        assert all(t < 3.5 for t in wsvc.get_deadlines), wsvc.get_deadlines  # not 60


def test_a_failed_workspace_its_node_tries_again_says_so(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    client, wsvc, _ = served
    wsvc.views = [
        _ws(
            WS.WORKSPACE_STATE_FAILED,
            node="node1",
            desired_state=common_pb2.DESIRED_STATE_RUNNING,
            reason="create failed: cached blob does not match its digest",
        )
    ]
    with pytest.raises(WaitFailed) as err:
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 5)
    assert str(err.value).endswith(
        "(waited for RUNNING); its node node1 tries again (`ws watch alpha` follows it)"
    )
    wsvc.views = [_ws(WS.WORKSPACE_STATE_FAILED, reason="no capacity in time")]
    with pytest.raises(WaitFailed) as err:
        client.wait_for_state("w1", [WS.WORKSPACE_STATE_RUNNING], 5)
    assert "tries again" not in str(err.value)  # on no node: nothing will


def test_a_failed_wait_names_the_workspace_as_the_user_did(
    served: tuple[Client, FakeWorkspaces, FakeImages], capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin's `ws start alice/alpha --wait` (or by its id) whose workspace failed
    was told `ws watch alpha`, which watches the admin's own alpha if there is one: the
    hint names it as the command did."""
    client, wsvc, _ = served
    wsvc.views = [
        _ws(
            WS.WORKSPACE_STATE_FAILED,
            owner="alice",
            node="node1",
            desired_state=common_pb2.DESIRED_STATE_RUNNING,
            reason="create failed",
        )
    ]
    for ref in ("alice/alpha", "w1"):
        assert ws_cli.main(["--service", client.address, "start", ref, "--wait"]) == 1
        err = capsys.readouterr().err
        assert f"its node node1 tries again (`ws watch {ref}` follows it)" in err, err


def test_a_watch_tells_of_an_outage_once_and_of_its_end(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """`ws watch` once went silent while the service was away."""
    client, wsvc, _ = served
    wsvc.drop_first_watch = True
    told: list[str] = []
    events = client.watch(reconnect=True, on_outage=told.append)
    first = next(events)
    events.close()
    assert first.initial and wsvc.watches == 2
    assert told == ["socket closed", ""]


def test_a_reconnecting_watch_reopens_one_that_fell_behind_but_not_a_revoked_one(
    served: tuple[Client, FakeWorkspaces, FakeImages],
) -> None:
    """docs/api.md: open a new watch on any end but a revocation."""
    client, wsvc, _ = served
    wsvc.end_first_watch = (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "watch fell too far behind; re-open it",
    )
    events = client.watch(reconnect=True, timeout_s=10)
    try:
        assert next(events).initial
        again = next(events)  # the re-list of a new watch
    finally:
        events.close()
    assert again.initial and wsvc.watches == 2

    wsvc.watches = 0
    wsvc.end_first_watch = (
        grpc.StatusCode.UNAUTHENTICATED,
        "the certificate of user:dave has been revoked",
    )
    events = client.watch(reconnect=True, timeout_s=10)
    assert next(events).initial
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        next(events)
    assert wsvc.watches == 1


def test_a_closed_client_refuses_a_call_and_does_not_crash_the_process(tmp_path: Path) -> None:
    """grpc crashes the process (SIGSEGV) when a stub is made on a closed channel: the
    Guests stub was made at the first exec or console, so a client closed before that
    (another thread shutting down, say) took the whole program down at its first exec."""
    code = (
        "from workspace.client import Client\n"
        "for address in ('unix:/nonexistent/a.sock', 'unix:/nonexistent/a.sock,unix:/b.sock'):\n"
        "    c = Client(address)\n"
        "    c.close()\n"
        "    calls = (lambda: c.exec('w1', ['true']), lambda: list(c.attach_console('w1', [])))\n"
        "    for call in calls:\n"
        "        try:\n"
        "            call()\n"
        "        except ValueError as exc:\n"
        "            print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    refusals = out.stdout.splitlines()
    assert len(refusals) == 4 and all("closed" in r.lower() for r in refusals), refusals
