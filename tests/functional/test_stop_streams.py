"""A stopping service's streams end with its own status on a live connection.

The service ends its watches UNAVAILABLE "the service is stopping; watch again"
(edge/calls.py ``stopping``). It used to stop its gRPC server at the same moment, which
closes a connection as soon as its last call has ended: a client that had not yet taken
the status (a loaded machine) lost it to the closed connection, "Stream removed
(sendmsg: Broken pipe (32))" (a CI run). The service now ends its streams first and keeps
serving a moment after their handlers have returned (Service.stop): here the client
reads nothing until then, and the service still answers after."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.functional.harness import Site, wait_for
from workspace import rpc
from workspace.client import Client
from workspace.service import main
from workspace.v1 import admin_pb2, admin_pb2_grpc, workspaces_pb2, workspaces_pb2_grpc

# Watches and follows held open.
PAIRS = 4


def test_a_client_slow_to_read_gets_the_stopping_status_on_a_live_connection(
    ready_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A moment long enough for this test's reads on a loaded machine.
    monkeypatch.setattr(main, "STREAMS_LINGER_S", 5.0, raising=False)
    site = ready_site
    site.stubs.create(name="w1", memory_mib=64)
    service = site.service
    assert service is not None
    channel = rpc.channel(site.address)
    streams: list[grpc.RpcError] = []
    opened = []
    for _ in range(PAIRS):
        watch = workspaces_pb2_grpc.WorkspacesStub(channel).WatchWorkspaces(
            workspaces_pb2.WatchWorkspacesRequest()
        )
        assert next(watch).initial
        events = admin_pb2_grpc.AdminStub(channel).WatchEvents(
            admin_pb2.WatchEventsRequest(follow=True)
        )
        assert next(events).kind
        opened += [watch, events]
    site.stubs.create(name="w2", memory_mib=64)  # news for every stream, not read yet
    stopper = threading.Thread(target=service.stop, args=(10.0,))
    stopper.start()
    site.service = None
    caller = f"user:{site.cfg.default_owner}"
    wait_for(
        lambda: service.stream_cap.counter.open_streams(caller) == 0,
        what="the service's stream handlers to have returned",
    )
    try:
        for stream in opened:  # now the client reads
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as exc:
                streams.append(exc)
        # The service still answers: its server stops only after that moment.
        with Client(site.address) as c:
            assert c.get_workspace("w2").name == "w2"
        # A watch opened meanwhile ends at once, before any message (which would tell a
        # client watching again that the service answers again).
        again = workspaces_pb2_grpc.WorkspacesStub(channel).WatchWorkspaces(
            workspaces_pb2.WatchWorkspacesRequest()
        )
        try:
            next(again)
        except grpc.RpcError as exc:
            streams.append(exc)
    finally:
        stopper.join(30)
        channel.close()
    assert not stopper.is_alive()
    assert len(streams) == 2 * PAIRS + 1
    for exc in streams:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
        assert (exc.details() or "").startswith("the service is stopping; watch again"), exc


def test_a_stop_with_no_stream_open_does_not_wait(site: Site) -> None:
    """The moment given to clients is only for streams that were open: none here."""
    service = site.service
    assert service is not None
    done = threading.Event()
    stopper = threading.Thread(target=lambda: (service.stop(60.0), done.set()))
    stopper.start()
    site.service = None
    assert done.wait(30), "the stop waited for streams that were not there"
